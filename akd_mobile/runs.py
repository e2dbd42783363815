"""Search runs and their candidates, stored in the latency database's SQLite file
(tables `runs` and `candidates`, schema in `latency_db/schema.py`).

Every change is one transaction, so a search killed at any moment leaves whole rows only:
the candidates proposed for a step are stored together before any is evaluated, each
evaluated candidate is stored when it finishes, and the strategy's state is checkpointed
together with the step counter after every update.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from akd_mobile.errors import SearchError

if TYPE_CHECKING:
    from latency_db.store import LatencyDB

@dataclass(frozen=True)
class CandidateRow:
    """One stored candidate."""

    id: int
    run_id: int
    step: int
    slot: int
    arch: str
    arch_key: str
    status: str
    accuracy: float | None
    latency_ms: float | None
    reward: float | None
    params: int | None
    macs: int | None
    latency_cached: int | None
    reused: int | None
    train_s: float | None
    export_s: float | None
    measure_s: float | None
    error: str | None
    created_at: float
    finished_at: float | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


_CANDIDATE_COLUMNS = ", ".join(CandidateRow.__dataclass_fields__)


@dataclass(frozen=True)
class RunRow:
    """One stored search run."""

    id: int
    created_at: float
    updated_at: float
    status: str
    config: dict[str, Any]
    versions: dict[str, Any]
    step: int
    controller_s: float


@dataclass(frozen=True)
class CandidateOutcome:
    """What evaluating a candidate produced (status `done` or `failed`)."""

    status: str
    accuracy: float | None = None
    latency_ms: float | None = None
    reward: float | None = None
    params: int | None = None
    macs: int | None = None
    latency_cached: bool = False
    reused: bool = False
    train_s: float = 0.0
    export_s: float = 0.0
    measure_s: float = 0.0
    error: str | None = None


class RunStore:
    """Runs and candidates in an open latency database (each write one transaction)."""

    def __init__(self, db: LatencyDB) -> None:
        self.db = db

    def create_run(self, config: dict[str, Any], versions: dict[str, Any]) -> int:
        now = time.time()
        with self.db.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO runs (created_at, updated_at, status, config_json, versions_json) VALUES (?, ?, ?, ?, ?)",
                (now, now, "running", json.dumps(config, sort_keys=True), json.dumps(versions, sort_keys=True)),
            )
        return int(cur.lastrowid)

    def get_run(self, run_id: int) -> RunRow:
        rows = self.db.read(
            "SELECT id, created_at, updated_at, status, config_json, versions_json, step, controller_s "
            "FROM runs WHERE id = ?",
            (run_id,),
        )
        if not rows:
            raise SearchError(f"no search run {run_id} in this database; `akd-mobile runs list` shows the runs")
        row = rows[0]
        return RunRow(row[0], row[1], row[2], row[3], json.loads(row[4]), json.loads(row[5]), row[6], row[7])

    def list_runs(self) -> list[RunRow]:
        ids = [r[0] for r in self.db.read("SELECT id FROM runs ORDER BY id")]
        return [self.get_run(i) for i in ids]

    def set_status(self, run_id: int, status: str) -> None:
        with self.db.transaction() as conn:
            conn.execute("UPDATE runs SET status = ?, updated_at = ? WHERE id = ?", (status, time.time(), run_id))

    def load_checkpoint(self, run_id: int) -> tuple[int, dict[str, Any] | None]:
        """The number of completed updates and the strategy state after the last one."""
        step, blob = self.db.read("SELECT step, strategy_state FROM runs WHERE id = ?", (run_id,))[0]
        if blob is None:
            return step, None
        return step, torch.load(io.BytesIO(blob), weights_only=True)

    def checkpoint(self, run_id: int, step: int, state: dict[str, Any], controller_s: float = 0.0) -> None:
        """Store the strategy state after update `step`, adding the controller's time."""
        buf = io.BytesIO()
        torch.save(state, buf)
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE runs SET step = ?, strategy_state = ?, controller_s = controller_s + ?, updated_at = ? "
                "WHERE id = ?",
                (step, buf.getvalue(), controller_s, time.time(), run_id),
            )

    def add_pending(self, run_id: int, step: int, archs: list[tuple[str, str]]) -> None:
        """Store a step's proposed (arch, key) pairs, all or none."""
        now = time.time()
        with self.db.transaction() as conn:
            conn.executemany(
                "INSERT INTO candidates (run_id, step, slot, arch, arch_key, status, created_at) "
                "VALUES (?, ?, ?, ?, ?, 'pending', ?)",
                [(run_id, step, slot, arch, key, now) for slot, (arch, key) in enumerate(archs)],
            )

    def finish(self, candidate_id: int, outcome: CandidateOutcome) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE candidates SET status = ?, accuracy = ?, latency_ms = ?, reward = ?, params = ?, macs = ?, "
                "latency_cached = ?, reused = ?, train_s = ?, export_s = ?, measure_s = ?, error = ?, finished_at = ? "
                "WHERE id = ? AND status = 'pending'",
                (
                    outcome.status,
                    outcome.accuracy,
                    outcome.latency_ms,
                    outcome.reward,
                    outcome.params,
                    outcome.macs,
                    int(outcome.latency_cached),
                    int(outcome.reused),
                    outcome.train_s,
                    outcome.export_s,
                    outcome.measure_s,
                    outcome.error,
                    time.time(),
                    candidate_id,
                ),
            )

    def candidates(self, run_id: int, step: int | None = None) -> list[CandidateRow]:
        """A run's candidates in order (one step's, when `step` is given)."""
        sql = f"SELECT {_CANDIDATE_COLUMNS} FROM candidates WHERE run_id = ?"
        args: tuple[Any, ...] = (run_id,)
        if step is not None:
            sql += " AND step = ?"
            args += (step,)
        return [CandidateRow(*r) for r in self.db.read(sql + " ORDER BY step, slot", args)]

    def done_with_key(self, run_id: int, arch_key: str) -> CandidateRow | None:
        """An earlier successful evaluation of the same arch in this run."""
        rows = self.db.read(
            f"SELECT {_CANDIDATE_COLUMNS} FROM candidates "
            "WHERE run_id = ? AND arch_key = ? AND status = 'done' AND reused = 0 ORDER BY id LIMIT 1",
            (run_id, arch_key),
        )
        return CandidateRow(*rows[0]) if rows else None
