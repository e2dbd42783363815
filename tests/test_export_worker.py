"""The background export worker's bookkeeping: an export queued ahead and then forgotten
leaves nothing behind for a later wait (the child is replaced by in-process queues)."""

from __future__ import annotations

import queue
import random

import pytest

from akd_base.errors import ExportError
from akd_mobile.export_worker import ExportWorker
from akd_mobile.space import get_space

SPACE = get_space("mnasnet-small")


class _Alive:
    exitcode = None

    def is_alive(self) -> bool:
        return True


def _worker(monkeypatch) -> ExportWorker:
    worker = ExportWorker("tflite")

    def start() -> None:
        worker._tasks, worker._results, worker._process = queue.Queue(), queue.Queue(), _Alive()

    monkeypatch.setattr(worker, "_start", start)
    return worker


def test_a_forgotten_exports_result_is_not_returned_later(monkeypatch):
    a, b = SPACE.sample(random.Random(0)), SPACE.sample(random.Random(1))
    worker = _worker(monkeypatch)
    worker.submit([a, b])
    assert [worker._tasks.get_nowait().key for _ in range(2)] == [a.key, b.key]
    worker.forget(a)  # predicted after all: its export's outcome no longer matters
    worker._results.put((a.key, ExportError("converter crashed")))
    worker._results.put((b.key, None))
    worker.wait(b)  # drains a's result on the way, and drops it
    worker.submit([a])  # proposed again, now to be measured: exported again
    assert worker._tasks.get_nowait().key == a.key
    worker._results.put((a.key, None))
    worker.wait(a)  # the new export's success, not the forgotten failure
    worker.submit([b])
    worker._results.put((b.key, ExportError("disk full")))
    with pytest.raises(ExportError, match="disk full"):
        worker.wait(b)
