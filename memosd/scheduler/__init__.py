"""MemScheduler: background jobs and the promotion of memory between kinds (plaintext -> activation)."""
