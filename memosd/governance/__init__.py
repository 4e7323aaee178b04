"""MemGovernance: who an agent is, what it may do, and a tamper-evident record of both."""

from memosd.governance.core import MemGovernance, Principal

__all__ = ["MemGovernance", "Principal"]
