"""The SQLite latency database."""
