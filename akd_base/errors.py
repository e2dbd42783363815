"""User-facing errors: the CLI prints their message on one line and exits 2."""

from __future__ import annotations

import errno


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


class DeviceUnavailable(DeviceError):
    """A device that cannot be reached, stopped answering, or is not ready (storage full, its
    benchmark tool missing): the device's failure, not the model's, so a search stops
    resumably instead of failing the candidate."""


class ParseError(DeviceError):
    """Benchmark tool output with no timing in it."""


class PredictorError(AkdError):
    """Too few measurements to fit a latency predictor, or no predictor for a device."""


class DriftError(AkdError):
    """A device that no longer runs at the speed the latency database measured it at."""


class DatabaseError(AkdError):
    """A latency database that cannot be opened, migrated or queried."""


class SearchError(AkdError):
    """A bad search configuration or an unknown run."""


class DistillError(AkdError):
    """A bad training budget or schedule, or a student that does not fit the data set."""


class StudyError(AkdError):
    """A bad proxy fidelity study configuration or an unknown study."""


class FinalizeError(AkdError):
    """Bad finalize settings, a run with nothing to finalize, or an output folder in use."""


class ReportError(AkdError):
    """A report asked of no runs or of runs the database does not hold, or an output folder that cannot be written."""


class ClusterError(AkdError):
    """No Ray cluster answers at the address given, or none of its nodes has a phone the search needs."""


class HostError(AkdError):
    """This machine failed the work, not the input: disk full, out of memory, a helper process gone."""


class Interrupted(AkdError):
    """Work stopped by a signal (Ctrl-C, SIGTERM, SIGHUP) with its state stored; the command
    exits with 128 + the signal's number, as a shell does."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


# errno values that say the machine, not the work, is at fault
_HOST_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.ENOMEM})


def stops_the_run(exc: BaseException) -> bool:
    """Whether `exc` (or an error it was raised from) is the device's or the host's failure,
    which stops a search resumably, rather than the candidate's own, which is recorded."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (DeviceUnavailable, HostError, DatabaseError, MemoryError)):
            return True
        if isinstance(current, OSError) and current.errno in _HOST_ERRNOS:
            return True
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return False


def error_line(exc: BaseException) -> str:
    """`Type: message` on one line, at most 500 characters (as a failure is stored)."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]
