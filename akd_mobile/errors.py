"""User-facing errors: the CLI prints their message on one line and exits 2."""

from __future__ import annotations


class AkdError(Exception):
    """An error the user can cause and fix; its message says what to do."""


class ArchStringError(AkdError):
    """A malformed or non-canonical architecture string."""


class SpaceError(AkdError):
    """An unknown search space or bad space parameters."""


class DataError(AkdError):
    """A missing, unreadable or malformed dataset."""


class TeacherError(AkdError):
    """A missing or corrupt teacher, or an unknown teacher recipe."""


class ExportError(AkdError):
    """A model that fails to convert or disagrees with PyTorch after conversion."""


class DeviceError(AkdError):
    """An unknown, unreachable or failing device, or a bad device profile."""


class ParseError(DeviceError):
    """Benchmark tool output with no timing in it."""


class DatabaseError(AkdError):
    """A latency database that cannot be opened, migrated or queried."""


class SearchError(AkdError):
    """A bad search configuration or an unknown run."""


class DistillError(AkdError):
    """A bad training budget or schedule, or a student that does not fit the data set."""


class StudyError(AkdError):
    """A bad proxy fidelity study configuration or an unknown study."""
