"""memosd: a memory daemon for LLM agents (MemOS MemCubes over gRPC)."""

__version__ = "0.1.0"
