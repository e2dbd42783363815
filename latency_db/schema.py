"""The latency database's schema: forward migrations, applied in order.

`PRAGMA user_version` holds how many entries of MIGRATIONS a database has applied. A new
migration is one SQL script appended to MIGRATIONS (never edit an applied one); `migrate`
runs each missing script and bumps the version in the same transaction, so a database is
always at a whole version.
"""

from __future__ import annotations

import sqlite3

from akd_base.errors import DatabaseError

V1_LATENCY = """
CREATE TABLE devices (
    fingerprint TEXT PRIMARY KEY,          -- DeviceInfo.fingerprint
    name TEXT NOT NULL,                    -- profile name it was last measured under
    backend TEXT NOT NULL,
    model TEXT NOT NULL,
    soc TEXT NOT NULL,
    abi TEXT NOT NULL,
    cores INTEGER NOT NULL,
    info_json TEXT NOT NULL,               -- DeviceInfo.to_dict()
    first_seen TEXT NOT NULL,              -- ISO 8601 UTC
    last_seen TEXT NOT NULL
);

CREATE TABLE artifacts (
    sha256 TEXT PRIMARY KEY,               -- of the model file
    arch_key TEXT,                         -- NULL: a file of unknown architecture
    arch_json TEXT,                        -- ArchSpec.to_json(), NULL with arch_key
    format TEXT NOT NULL CHECK (format IN ('tflite', 'pte')),
    size_bytes INTEGER NOT NULL,
    converter_version TEXT,                -- NULL: not exported by akd-mobile
    created_at TEXT NOT NULL
);

CREATE TABLE measurements (
    id INTEGER PRIMARY KEY,
    uid TEXT NOT NULL UNIQUE,              -- identity across databases (import skips known ones)
    arch_key TEXT,                         -- NULL: a file of unknown architecture
    format TEXT NOT NULL CHECK (format IN ('tflite', 'pte')),
    device_fingerprint TEXT NOT NULL REFERENCES devices (fingerprint),
    artifact_sha256 TEXT REFERENCES artifacts (sha256),
    runtime_version TEXT NOT NULL,         -- e.g. 'litert 2.3.0'
    converter_version TEXT,
    threads INTEGER NOT NULL CHECK (threads >= 1),
    warmup INTEGER NOT NULL CHECK (warmup >= 0),
    runs INTEGER NOT NULL CHECK (runs >= 1),
    median_ms REAL NOT NULL,
    mean_ms REAL NOT NULL,
    std_ms REAL NOT NULL,
    min_ms REAL NOT NULL,
    max_ms REAL NOT NULL,
    p90_ms REAL,
    samples_json TEXT NOT NULL,            -- raw per-run latencies in ms
    thermal TEXT,                          -- thermal state when known
    measured_at TEXT NOT NULL              -- ISO 8601 UTC
);

CREATE INDEX measurements_lookup
    ON measurements (arch_key, format, device_fingerprint, threads, runtime_version);
CREATE INDEX measurements_median ON measurements (median_ms);
"""

V2_SEARCH_RUNS = """
CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    status TEXT NOT NULL,             -- running | done | failed
    config_json TEXT NOT NULL,        -- the full SearchConfig
    versions_json TEXT NOT NULL,      -- package, torch and converter versions
    step INTEGER NOT NULL DEFAULT 0,  -- strategy updates completed
    strategy_state BLOB,              -- checkpoint after the last update
    controller_s REAL NOT NULL DEFAULT 0  -- time spent proposing and updating
);
CREATE TABLE candidates (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    step INTEGER NOT NULL,            -- the update this candidate feeds (1-based)
    slot INTEGER NOT NULL,            -- position in its batch
    arch TEXT NOT NULL,
    arch_key TEXT NOT NULL,
    status TEXT NOT NULL,             -- pending | done | failed (| skipped, from version 9)
    accuracy REAL,
    latency_ms REAL,
    reward REAL,
    params INTEGER,
    macs INTEGER,
    latency_cached INTEGER,           -- 1: answered by the latency database
    reused INTEGER,                   -- 1: same arch evaluated earlier in this run
    train_s REAL,
    export_s REAL,
    measure_s REAL,
    error TEXT,
    created_at REAL NOT NULL,
    finished_at REAL,
    UNIQUE (run_id, step, slot)
);
CREATE INDEX candidates_by_run ON candidates (run_id, status);
"""

V3_MIN_TIME = """
-- the minimum span of timed runs a measurement asked for (benchmark_model's --min_secs);
-- NULL in rows measured before it was recorded
ALTER TABLE measurements ADD COLUMN min_time_s REAL CHECK (min_time_s >= 0);
"""

V4_PROXY_STUDIES = """
-- fidelity studies of the proxy (akd_mobile/study.py): does the proxy score order
-- students like their fully trained accuracy?
CREATE TABLE studies (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    fingerprint TEXT NOT NULL UNIQUE,  -- hash of the config, the teachers' and the data's identity
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    config_json TEXT NOT NULL,         -- the full StudyConfig
    teachers_json TEXT NOT NULL,       -- [{spec, hash, test_accuracy, params}], first: the primary teacher
    data_json TEXT NOT NULL,           -- Dataset.summary()
    versions_json TEXT NOT NULL
);
CREATE TABLE study_students (
    study_id INTEGER NOT NULL REFERENCES studies(id),
    idx INTEGER NOT NULL,              -- order of training (cost bins interleaved)
    arch TEXT NOT NULL,
    arch_key TEXT NOT NULL,
    cost_bin INTEGER NOT NULL,         -- 0: cheapest
    macs INTEGER NOT NULL,
    params INTEGER NOT NULL,
    PRIMARY KEY (study_id, idx)
);
CREATE TABLE study_trainings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_id INTEGER NOT NULL REFERENCES studies(id),
    student INTEGER NOT NULL,          -- study_students.idx
    kind TEXT NOT NULL CHECK (kind IN ('proxy', 'full')),
    mode TEXT NOT NULL CHECK (mode IN ('kd', 'ce')),
    teacher TEXT NOT NULL,             -- teacher hash; '' in mode ce
    setting TEXT NOT NULL,             -- '' for the base proxy settings, else e.g. 'temperature=4'
    budget INTEGER NOT NULL,           -- proxy: steps; full: epochs
    seed INTEGER NOT NULL,
    accuracy REAL NOT NULL,            -- proxy: validation accuracy; full: test accuracy
    val_accuracy REAL NOT NULL,
    seconds REAL NOT NULL,             -- training and scoring wall time
    finished_at REAL NOT NULL,
    UNIQUE (study_id, student, kind, mode, teacher, setting, budget, seed)
);
"""

V5_RUN_OWNERSHIP = """
-- why a run stopped, what it was started from, and who runs it now (akd_mobile/runs.py)
ALTER TABLE runs ADD COLUMN reason TEXT;         -- why it failed or stopped; NULL while fine
ALTER TABLE runs ADD COLUMN inputs_json TEXT;    -- teacher and data: absolute path, hash, fingerprint
ALTER TABLE runs ADD COLUMN owner TEXT;          -- host:pid of the search holding the lease
ALTER TABLE runs ADD COLUMN lease_until REAL;    -- the lease lapses then unless renewed
"""

V6_FINALS = """
-- a run's finals (akd_mobile/finals.py): its best candidates, and architectures of the
-- user's own, fully trained with the run's teacher and data, exported and measured
CREATE TABLE finals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    arch TEXT NOT NULL,
    arch_key TEXT NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('top', 'user')),  -- a run's candidate, or --arch
    mode TEXT NOT NULL CHECK (mode IN ('kd', 'ce')),
    epochs INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('trained', 'done', 'failed')),
    proxy_accuracy REAL,               -- the candidate's proxy score; NULL for --arch
    test_accuracy REAL,
    val_accuracy REAL,
    train_s REAL,
    weights_sha256 TEXT,               -- of the trained state dict
    result_json TEXT,                  -- per format: artifact, size, max abs diff, latency statistics
    error TEXT,
    created_at REAL NOT NULL,
    finished_at REAL,
    UNIQUE (run_id, arch_key, mode, epochs)
);
"""

V7_FINAL_FOLDERS = """
-- the folder each final's files were last written to (weights, models), so a finalize into
-- another folder copies the trained weights instead of training again
ALTER TABLE finals ADD COLUMN out_dir TEXT;
"""

V8_LATENCY_MODELS = """
-- latency predictors (akd_mobile/latency_predictor.py), one per fit: the device, format,
-- threads and runtime they predict, their parameters, and the measurements they were fitted on
CREATE TABLE latency_models (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_fingerprint TEXT NOT NULL REFERENCES devices (fingerprint),
    format TEXT NOT NULL CHECK (format IN ('tflite', 'pte')),
    threads INTEGER NOT NULL CHECK (threads >= 1),
    runtime_version TEXT NOT NULL,
    kind TEXT NOT NULL,                -- the predictor's family and version
    model_json TEXT NOT NULL,          -- its parameters
    measurement_uids TEXT NOT NULL,    -- JSON list of the measurements it was fitted on
    archs INTEGER NOT NULL,            -- distinct architectures among them
    band REAL NOT NULL,                -- relative error band (cross-validated, 95th percentile)
    created_at TEXT NOT NULL
);
CREATE INDEX latency_models_key ON latency_models (device_fingerprint, format, threads, runtime_version);
"""

V9_LATENCY_SOURCES = """
-- where a candidate's latency came from (akd_mobile/latency_policy.py): 'database', 'measured'
-- or 'predicted' (NULL in rows stored before), and the prediction with the model that made it
ALTER TABLE candidates ADD COLUMN latency_source TEXT;
ALTER TABLE candidates ADD COLUMN predicted_ms REAL;
ALTER TABLE candidates ADD COLUMN latency_model_id INTEGER;
"""

MIGRATIONS: list[str] = [
    V1_LATENCY,
    V2_SEARCH_RUNS,
    V3_MIN_TIME,
    V4_PROXY_STUDIES,
    V5_RUN_OWNERSHIP,
    V6_FINALS,
    V7_FINAL_FOLDERS,
    V8_LATENCY_MODELS,
    V9_LATENCY_SOURCES,
]


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the database of `conn` (autocommit mode) to the latest version; returns it.

    Each migration runs in a `BEGIN IMMEDIATE` transaction that re-reads the version, so
    two processes opening a new database at once apply every migration exactly once.

    Raises:
        DatabaseError: a database newer than this code, or a failing migration.
    """
    latest = len(MIGRATIONS)
    for target, script in enumerate(MIGRATIONS, start=1):
        if _version(conn) >= target:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            if _version(conn) < target:
                for statement in _statements(script):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {target:d}")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            raise DatabaseError(f"migrating the latency database to version {target} failed: {exc}") from None
    version = _version(conn)
    if version > latest:
        raise DatabaseError(
            f"the latency database is at schema version {version}, newer than this akd-mobile "
            f"({latest}); upgrade akd-mobile"
        )
    return version


def _version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _statements(script: str) -> list[str]:
    """Split an SQL script into whole statements (semicolons inside strings are kept)."""
    statements, current = [], ""
    for piece in script.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            if current.strip(" \n;"):
                statements.append(current.strip())
            current = ""
    return statements
