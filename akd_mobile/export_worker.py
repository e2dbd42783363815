"""A background process that exports a search's candidates while the foreground trains.

A new candidate costs an export (seconds of converter work) and a KD proxy run; with the
batch known up front, the exports of a step run one after another in a child process, so
candidate i+1 converts while candidate i trains. The child writes into the export cache,
where the foreground's `export_model` then finds the file.

The child never outlives the search: it is killed when the search closes it (at once, so
Ctrl-C does not wait for a conversion to finish); the kernel kills it when its parent dies
even by SIGKILL (Linux `PR_SET_PDEATHSIG`; elsewhere it exits when it finds itself
orphaned between exports); and it ignores the terminal's Ctrl-C, which its parent handles.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import signal
import sys
from typing import Any

from akd_base.errors import HostError, error_line, stops_the_run
from akd_mobile.space import ArchSpec

log = logging.getLogger(__name__)

_POLL_S = 0.5  # how often a wait checks that the child is still alive


class ExportWorker:
    """Exports queued architectures to one format in a child process."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self._process: Any = None
        self._tasks: Any = None
        self._results: Any = None
        self._queued: set[str] = set()
        self._finished: dict[str, BaseException | None] = {}

    def submit(self, archs: list[ArchSpec]) -> None:
        """Queue the exports of `archs` (those not queued already); starts the child at first use."""
        if self._process is None:
            self._start()
        for arch in archs:
            if arch.key not in self._queued:
                self._queued.add(arch.key)
                self._tasks.put(arch)

    def wait(self, arch: ArchSpec) -> None:
        """Block until the export of `arch` (if queued) is done; raise its error.

        Raises:
            HostError: the child died (killed for memory, for instance) before finishing it.
        """
        if arch.key not in self._queued:
            return
        while arch.key not in self._finished:
            try:
                key, error = self._results.get(timeout=_POLL_S)
                if key in self._queued:  # not a forgotten one's
                    self._finished[key] = error
            except queue.Empty:
                if not self._process.is_alive():
                    code = self._process.exitcode
                    self.close()
                    raise HostError(f"the export worker died (exit code {code}) exporting {arch.key}") from None
        self._queued.discard(arch.key)
        error = self._finished.pop(arch.key)
        if error is not None:
            raise error

    def forget(self, arch: ArchSpec) -> None:
        """Drop the export of `arch`, queued ahead but not needed: a wait no longer returns its
        result, and a later submit exports it again (a cache hit, when this one succeeded)."""
        self._queued.discard(arch.key)
        self._finished.pop(arch.key, None)

    def close(self) -> None:
        """Stop the child now, dropping exports not finished (the cache never holds half a file)."""
        if self._process is not None:
            self._process.kill()
            self._process.join()
            for q in (self._tasks, self._results):
                q.close()
                q.cancel_join_thread()
            self._process = self._tasks = self._results = None
        self._queued.clear()
        self._finished.clear()

    def _start(self) -> None:
        from multiprocessing import get_context

        ctx = get_context("spawn")
        self._tasks, self._results = ctx.Queue(), ctx.Queue()
        self._process = ctx.Process(target=_serve, args=(self.fmt, self._tasks, self._results, os.getpid()),
                                    name="akd-export-worker", daemon=True)
        self._process.start()


def _serve(fmt: str, tasks: Any, results: Any, parent_pid: int) -> None:
    """The child: export each queued arch and answer (key, None or the error)."""
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    _thread_lock_for_progress_bars()

    import torch

    from akd_mobile.export import export_model

    torch.set_num_threads(1)
    while True:
        try:
            arch = tasks.get(timeout=_POLL_S)
        except queue.Empty:
            if os.getppid() != parent_pid:  # orphaned where the kernel does not kill us
                os._exit(1)
            continue
        try:
            export_model(arch, fmt)
            results.put((arch.key, None))
        except Exception as exc:  # noqa: BLE001 - every error goes back to the search
            results.put((arch.key, _sendable(exc)))


def _sendable(exc: Exception) -> BaseException:
    """`exc` as it can cross the queue: its class and message survive pickling, its cause does
    not, so a host failure hidden in the cause is named here."""
    text = error_line(exc)
    if stops_the_run(exc) and not isinstance(exc, HostError):
        return HostError(text)
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - an exception class that does not pickle
        return RuntimeError(text)
    return exc


def _thread_lock_for_progress_bars() -> None:
    """Give tqdm (torch.fx draws its progress bars with it) a thread lock: its default, a
    multiprocessing lock, stays registered with the resource tracker when this process is
    killed, which then warns of a leaked semaphore when the search exits."""
    try:
        import threading

        from tqdm import tqdm
    except ImportError:
        return
    tqdm.set_lock(threading.RLock())


def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux), and exit now if it
    already has."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)
