"""Search runs and their candidates, stored in the latency database's SQLite file
(tables `runs` and `candidates`, schema in `latency_db/schema.py`).

Every change is one transaction, so a search killed at any moment leaves whole rows only:
the candidates proposed for a step are stored together before any is evaluated, each
evaluated candidate is stored when it finishes, and the strategy's state is checkpointed
together with the step counter after every update.

A run has one owner at a time: the search that runs it holds a lease (its host and pid,
and a time), renews it every few seconds from a thread, and releases it when it stops. A
resume while another live search holds the lease is refused; a run whose owner died
(lease lapsed, or its process gone on this host) is `stale` and can be resumed.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from akd_base.errors import SearchError

if TYPE_CHECKING:
    from latency_db.store import LatencyDB

log = logging.getLogger(__name__)

LEASE_S = 30.0  # a run's lease lapses this long after its last renewal
RENEW_EVERY_S = 5.0

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
    latency_source: str | None
    predicted_ms: float | None
    latency_model_id: int | None

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
    reason: str | None
    inputs: dict[str, Any]
    owner: str | None
    lease_until: float | None

    @property
    def shown_status(self) -> str:
        """The status, with a `running` run whose owner died shown as `stale`."""
        if self.status == "running" and not lease_alive(self.owner, self.lease_until):
            return "stale"
        return self.status


_RUN_COLUMNS = "id, created_at, updated_at, status, config_json, versions_json, step, controller_s, " \
               "reason, inputs_json, owner, lease_until"


def this_owner() -> str:
    """The lease holder name of this process: `host:pid`."""
    return f"{socket.gethostname()}:{os.getpid()}"


def lease_alive(owner: str | None, lease_until: float | None, now: float | None = None) -> bool:
    """Whether `owner` still holds its lease. On this host: while its process runs (even if
    stopped or starved past its renewals). On another host: while renewed within LEASE_S."""
    if owner is None or lease_until is None:
        return False
    host, _, pid = owner.rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # another user's process
        return True
    return lease_until >= (time.time() if now is None else now)


@dataclass(frozen=True)
class CandidateOutcome:
    """What evaluating a candidate produced: status `done`, `failed`, or `skipped` (not trained:
    its latency alone bounds its reward; `error` says why). `latency_source` is `database`,
    `measured` or `predicted`; a prediction is kept in `predicted_ms` with its model's id."""

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
    latency_source: str | None = None
    predicted_ms: float | None = None
    latency_model_id: int | None = None


@dataclass(frozen=True)
class Checkpoint:
    """The strategy's state after update `step` (serialized with torch), and the controller's
    seconds since the last checkpoint."""

    step: int
    state: dict[str, Any]
    controller_s: float = 0.0


def _write_checkpoint(conn: Any, run_id: int, checkpoint: Checkpoint) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(checkpoint.state, buf)
    conn.execute("UPDATE runs SET step = ?, strategy_state = ?, controller_s = controller_s + ?, updated_at = ? "
                 "WHERE id = ?", (checkpoint.step, buf.getvalue(), checkpoint.controller_s, time.time(), run_id))


class RunStore:
    """Runs and candidates in an open latency database (each write one transaction)."""

    def __init__(self, db: LatencyDB) -> None:
        self.db = db

    def create_run(self, config: dict[str, Any], versions: dict[str, Any], inputs: dict[str, Any]) -> int:
        """Store a new run, `running` and held by this process."""
        now = time.time()
        with self.db.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO runs (created_at, updated_at, status, config_json, versions_json, inputs_json, owner, "
                "lease_until) VALUES (?, ?, 'running', ?, ?, ?, ?, ?)",
                (now, now, json.dumps(config, sort_keys=True), json.dumps(versions, sort_keys=True),
                 json.dumps(inputs, sort_keys=True), this_owner(), now + LEASE_S),
            )
        return int(cur.lastrowid)

    def get_run(self, run_id: int) -> RunRow:
        rows = self.db.read(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,))
        if not rows:
            raise SearchError(f"no search run {run_id} in this database; `akd-mobile runs list` shows the runs")
        return _run_row(rows[0])

    def list_runs(self) -> list[RunRow]:
        return [_run_row(r) for r in self.db.read(f"SELECT {_RUN_COLUMNS} FROM runs ORDER BY id")]

    def set_status(self, run_id: int, status: str, reason: str | None = None) -> None:
        """Set a run's status and why (None clears the reason)."""
        with self.db.transaction() as conn:
            conn.execute("UPDATE runs SET status = ?, reason = ?, updated_at = ? WHERE id = ?",
                         (status, reason, time.time(), run_id))

    def claim(self, run_id: int, owner: str) -> None:
        """Take run `run_id`'s lease for `owner`.

        Raises:
            SearchError: another live search holds it.
        """
        with self.db.transaction() as conn:
            held_by, until = conn.execute("SELECT owner, lease_until FROM runs WHERE id = ?", (run_id,)).fetchone()
            if held_by != owner and lease_alive(held_by, until):
                renewed = time.time() - (until - LEASE_S)
                raise SearchError(
                    f"run {run_id} is being run by {held_by} (lease renewed {max(0.0, renewed):.0f} s ago); "
                    "wait for it to finish or stop that search first"
                )
            conn.execute("UPDATE runs SET owner = ?, lease_until = ? WHERE id = ?", (owner, time.time() + LEASE_S, run_id))

    def renew(self, run_id: int, owner: str) -> bool:
        """Extend `owner`'s lease of run `run_id`; False if it no longer holds it."""
        with self.db.transaction() as conn:
            cur = conn.execute("UPDATE runs SET lease_until = ? WHERE id = ? AND owner = ?",
                               (time.time() + LEASE_S, run_id, owner))
        return cur.rowcount > 0

    def release(self, run_id: int, owner: str) -> None:
        """Give up `owner`'s lease of run `run_id`."""
        with self.db.transaction() as conn:
            conn.execute("UPDATE runs SET owner = NULL, lease_until = NULL WHERE id = ? AND owner = ?", (run_id, owner))

    def delete_run(self, run_id: int) -> tuple[int, int]:
        """Delete a run, its candidates and its finals (their files stay); returns how many
        candidates and finals went.

        Raises:
            SearchError: an unknown run, or one a live search holds.
        """
        self.get_run(run_id)
        with self.db.transaction() as conn:
            owner, until = conn.execute("SELECT owner, lease_until FROM runs WHERE id = ?", (run_id,)).fetchone()
            if lease_alive(owner, until):
                raise SearchError(f"run {run_id} is being run by {owner}; stop that search before deleting the run")
            candidates = conn.execute("DELETE FROM candidates WHERE run_id = ?", (run_id,)).rowcount
            finals = conn.execute("DELETE FROM finals WHERE run_id = ?", (run_id,)).rowcount
            conn.execute("DELETE FROM runs WHERE id = ?", (run_id,))
        return candidates, finals

    def load_checkpoint(self, run_id: int) -> tuple[int, dict[str, Any] | None]:
        """The number of completed updates and the strategy state after the last one."""
        import torch

        step, blob = self.db.read("SELECT step, strategy_state FROM runs WHERE id = ?", (run_id,))[0]
        if blob is None:
            return step, None
        return step, torch.load(io.BytesIO(blob), weights_only=True)

    def checkpoint(self, run_id: int, checkpoint: Checkpoint) -> None:
        """Store the strategy's state after update `checkpoint.step`, adding the controller's time."""
        with self.db.transaction() as conn:
            _write_checkpoint(conn, run_id, checkpoint)

    def add_pending(self, run_id: int, step: int, archs: list[tuple[str, str]],
                    checkpoint: Checkpoint | None = None) -> list[int]:
        """Store a step's proposed (arch, key) pairs, all or none, with the strategy's state
        after proposing them when given; returns their ids."""
        now = time.time()
        with self.db.transaction() as conn:
            ids = [conn.execute("INSERT INTO candidates (run_id, step, slot, arch, arch_key, status, created_at) "
                                "VALUES (?, ?, ?, ?, ?, 'pending', ?)", (run_id, step, slot, arch, key, now)).lastrowid
                   for slot, (arch, key) in enumerate(archs)]
            if checkpoint is not None:
                _write_checkpoint(conn, run_id, checkpoint)
        return ids

    def finish(self, candidate_id: int, outcome: CandidateOutcome, checkpoint: Checkpoint | None = None) -> None:
        """Store a candidate's outcome, with the strategy's state after taking it in when given."""
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE candidates SET status = ?, accuracy = ?, latency_ms = ?, reward = ?, params = ?, macs = ?, "
                "latency_cached = ?, reused = ?, train_s = ?, export_s = ?, measure_s = ?, error = ?, finished_at = ?, "
                "latency_source = ?, predicted_ms = ?, latency_model_id = ? WHERE id = ? AND status = 'pending'",
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
                    outcome.latency_source,
                    outcome.predicted_ms,
                    outcome.latency_model_id,
                    candidate_id,
                ),
            )
            if checkpoint is not None:
                run_id = conn.execute("SELECT run_id FROM candidates WHERE id = ?", (candidate_id,)).fetchone()[0]
                _write_checkpoint(conn, run_id, checkpoint)

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


    def candidate(self, candidate_id: int) -> CandidateRow:
        """One stored candidate."""
        return CandidateRow(*self.db.read(f"SELECT {_CANDIDATE_COLUMNS} FROM candidates WHERE id = ?",
                                          (candidate_id,))[0])

    def finished_count(self, run_id: int) -> int:
        """How many of a run's candidates are no longer pending."""
        return self.db.read("SELECT count(*) FROM candidates WHERE run_id = ? AND status != 'pending'", (run_id,))[0][0]

    def best_done(self, run_id: int) -> CandidateRow | None:
        """A run's done candidate of the highest reward (the first stored, on a tie)."""
        rows = self.db.read(f"SELECT {_CANDIDATE_COLUMNS} FROM candidates WHERE run_id = ? AND status = 'done' "
                            "ORDER BY reward DESC, step, slot LIMIT 1", (run_id,))
        return CandidateRow(*rows[0]) if rows else None

    def top_rewards(self, run_id: int, count: int) -> tuple[float, ...]:
        """The `count` highest rewards of a run's evaluated candidates (reuses left out), best first."""
        return tuple(r for (r,) in self.db.read("SELECT reward FROM candidates WHERE run_id = ? AND status = 'done' "
                                                "AND reused = 0 ORDER BY reward DESC LIMIT ?", (run_id, count)))

    def measured_and_predicted(self, run_id: int, model_id: int | None = None,
                               last: int | None = None) -> list[tuple[float, float]]:
        """(measured, predicted) latency of a run's candidates measured with a prediction
        beside them (reuses left out): of latency model `model_id` only, when given, and the
        `last` to finish only, when given; newest first."""
        by_model = "" if model_id is None else " AND latency_model_id = ?"
        return [(m, p) for m, p in self.db.read(
            "SELECT latency_ms, predicted_ms FROM candidates WHERE run_id = ? AND status = 'done' AND reused = 0 "
            f"AND latency_source = 'measured' AND predicted_ms IS NOT NULL{by_model} ORDER BY finished_at DESC, id DESC "
            "LIMIT ?", (run_id, *(() if model_id is None else (model_id,)), -1 if last is None else last))]

    def best_accuracy_under(self, run_id: int, target_ms: float) -> float | None:
        """The highest accuracy of a run's evaluated candidates within `target_ms`."""
        return self.db.read("SELECT max(accuracy) FROM candidates WHERE run_id = ? AND status = 'done' AND reused = 0 "
                            "AND latency_ms <= ?", (run_id, target_ms))[0][0]


def best_first(candidates: list[CandidateRow], target_ms: float | None) -> list[CandidateRow]:
    """A run's finished candidates, best first: those under the latency target before those
    over it, each by reward (how finalize picks and the report ranks them)."""
    done = [c for c in candidates if c.status == "done"]
    return sorted(done, key=lambda c: (target_ms is not None and c.latency_ms > target_ms, -c.reward, c.id))


def _run_row(row: Any) -> RunRow:
    return RunRow(row[0], row[1], row[2], row[3], json.loads(row[4]), json.loads(row[5]), row[6], row[7], row[8],
                  json.loads(row[9]) if row[9] else {}, row[10], row[11])


class LeaseLost(SearchError):
    """Another search took over a run this one was running (its lease lapsed meanwhile)."""


class RunLease:
    """This process's hold on a run, as a context: claimed on entry (SearchError while another
    live search holds it), renewed from a thread with its own database connection, released
    on exit. `check()` before each write raises LeaseLost once another search holds it."""

    def __init__(self, store: RunStore, run_id: int) -> None:
        self.store, self.run_id, self.owner = store, run_id, this_owner()
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"akd-lease-{run_id}", daemon=True)

    def check(self) -> None:
        """Raise LeaseLost if another search took the run over."""
        if self._lost.is_set():
            holder = self.store.get_run(self.run_id).owner
            raise LeaseLost(f"run {self.run_id} was taken over by {holder or 'another search'} while this search "
                            "could not renew its lease; this search stops and leaves the run to it")

    def __enter__(self) -> RunLease:
        self.store.claim(self.run_id, self.owner)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.store.release(self.run_id, self.owner)

    def _renew(self) -> None:
        from latency_db import open_db

        with open_db(self.store.db.path) as db:
            store = RunStore(db)
            while not self._stop.wait(RENEW_EVERY_S):
                try:
                    if not store.renew(self.run_id, self.owner):
                        self._lost.set()
                        return
                except Exception as exc:  # noqa: BLE001 - a missed renewal is retried; the search goes on
                    log.warning("could not renew the lease of run %d: %s", self.run_id, exc)
