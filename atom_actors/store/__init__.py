"""Persistence: ``base.Store`` is the interface, ``memory.MemoryStore`` the default and test fake."""

from .base import AgentRow, AuditEntry, ChainState, EventRecord, SessionRecord, Store
from .memory import MemoryStore

__all__ = ["AgentRow", "AuditEntry", "ChainState", "EventRecord", "SessionRecord", "Store",
           "MemoryStore"]
