"""The gRPC layer: the only package that imports grpc."""

from memosd.server.app import MemosServer, build_server

__all__ = ["MemosServer", "build_server"]
