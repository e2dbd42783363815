"""The SQLite latency database."""

from __future__ import annotations

from latency_db.store import LatencyDB, open_db

__all__ = ["LatencyDB", "open_db"]
