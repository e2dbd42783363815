"""The Ray execution engine: the same search as in-process, phones as actors, faults, and
bad addresses (a local Ray started by the engine or by the test; no cluster, no phone)."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from akd_mobile.distill import ProxyBudget
from akd_mobile.engines import Execution
from akd_mobile.runs import RunStore
from akd_mobile.search import SearchConfig, run_search
from cli import cli
from latency_db import open_db

TINY = dict(data="digits", budget=4, batch=2, proxy=ProxyBudget(steps=20), target_ms=0.25, runs=5, warmup=1,
            min_time_s=0.0)
RAY = Execution(ray="auto")
# How long a step may take before the test calls it hung: a guard, not a timing (a loaded
# 2-core host with an empty export cache takes minutes over what a warm one does).
HUNG_S = 600


def _stored(db: Path, run_id: int) -> list[tuple]:
    return [(r.step, r.slot, r.arch, r.status, r.accuracy, r.latency_ms, r.reward)
            for r in RunStore(open_db(db)).candidates(run_id)]


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory) -> str:
    from akd_mobile.data import load_dataset
    from akd_mobile.teachers import save_teacher, train_teacher

    data = load_dataset("digits", seed=0)
    model, result = train_teacher("resnet", data, epochs=8, seed=0)
    path = tmp_path_factory.mktemp("teacher") / "digits-resnet.pt"
    save_teacher(model, result, data, path)
    return str(path)


@pytest.fixture()
def ray_cluster():
    """A local Ray this test starts (the engine joins it and leaves it running)."""
    import ray

    from akd_mobile.ray_engine import signals_for_ray_init

    with signals_for_ray_init():
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False,
                 _system_config={"worker_niceness": 0})
    yield ray
    ray.shutdown()


def _last_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize("address, message", [
    (None, "no Ray cluster answers at 127.0.0.1:{port}"),
    ("head-node", "--ray takes auto or a Ray head's host:port, got 'head-node'"),
])
def test_a_ray_address_where_no_cluster_answers_is_a_one_line_error(tmp_path, address, message):
    from devices_support import free_port

    port = free_port()
    start = time.monotonic()
    result = CliRunner().invoke(cli, ["search", "--data", "digits", "--reward", "ce", "--db", str(tmp_path / "db.sqlite"),
                                      "--ray", address or f"127.0.0.1:{port}"])
    assert result.exit_code == 2 and message.format(port=port) in _last_line(result)
    assert time.monotonic() - start < 30
    assert RunStore(open_db(tmp_path / "db.sqlite")).list_runs() == []  # refused before a run existed


def test_a_device_profile_names_the_cluster_and_ray_off_overrides_it(tmp_path):
    from devices_support import free_port

    port = free_port()
    profile = tmp_path / "farm.toml"
    profile.write_text(f'backend = "local"\ntarget_ms = 0.25\nray = "127.0.0.1:{port}"\n')
    db = tmp_path / "db.sqlite"
    base = ["search", "--data", "digits", "--reward", "ce", "--device", str(profile), "--db", str(db)]
    result = CliRunner().invoke(cli, base)
    assert result.exit_code == 2 and f"no Ray cluster answers at 127.0.0.1:{port}" in _last_line(result)
    result = CliRunner().invoke(cli, base + ["--ray", "off", "--budget", "1", "--batch", "1", "--proxy-steps", "5",
                                             "--min-time", "0", "--json"])
    assert result.exit_code == 0, result.output
    assert [r.status for r in RunStore(open_db(db)).candidates(1)] == ["done"]
    profile.write_text('backend = "local"\nray = 6379\n')
    result = CliRunner().invoke(cli, base)
    assert result.exit_code == 2 and "ray must be \"auto\" or a Ray head's \"host:port\"" in _last_line(result)


def test_a_phone_no_node_has_is_a_one_line_error(tmp_path, ray_cluster):
    from devices_support import make_key, profile_toml

    profile = profile_toml(tmp_path / "phone.toml", 15999, make_key(tmp_path))
    result = CliRunner().invoke(cli, ["search", "--data", "digits", "--reward", "ce", "--device", str(profile), "--target-ms", "1",
                                      "--db", str(tmp_path / "db.sqlite"), "--ray", "auto"])
    assert result.exit_code == 2
    assert "no node of the Ray cluster this process is in has phone:127.0.0.1:15999" in _last_line(result)
    assert "ray start --address HEAD --resources '{\"phone:127.0.0.1:15999\": 1}'" in _last_line(result)


def test_cuda_on_a_cluster_without_a_gpu_is_a_one_line_error(tmp_path, ray_cluster):
    db = tmp_path / "db.sqlite"
    result = CliRunner().invoke(cli, ["search", "--data", "digits", "--reward", "ce", "--db", str(db),
                                      "--ray", "auto", "--torch-device", "cuda"])
    assert result.exit_code == 2
    assert _last_line(result) == ("error: --torch-device cuda asked for, but no node of the Ray cluster has a GPU; "
                                  "use --torch-device cpu")
    assert RunStore(open_db(db)).list_runs() == []  # refused before a run existed


@pytest.mark.slow
def test_a_kd_search_on_ray_stores_what_the_in_process_search_stores(tmp_path, digits_teacher):
    """Same seed, same candidates and scores; the second search reads the first's latencies."""
    db = tmp_path / "db.sqlite"
    config = SearchConfig(**TINY, teacher=digits_teacher, seed=1)
    here = run_search(config, db)
    there = run_search(config, db, execution=RAY)
    assert there.status == "done" and there.evaluated == 4
    assert _stored(db, there.run_id) == _stored(db, here.run_id)
    assert there.latency_sources == {"database": 4, "measured": 0, "predicted": 0, "skipped": 0}


@pytest.mark.slow
def test_two_loopback_phones_as_actors_share_a_searchs_measurements(tmp_path):
    from devices.manage import setup_device
    from devices_support import KillingProxy, daemon, make_key, profile_toml

    key = make_key(tmp_path)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    with daemon(tmp_path / "a", key) as a, daemon(tmp_path / "b", key) as b:
        counters = [KillingProxy(a.port, b"never", kills=0), KillingProxy(b.port, b"never", kills=0)]
        phones = [f"127.0.0.1:{c.port}" for c in counters]
        profile = profile_toml(tmp_path / "farm.toml", a.port, key)  # its address gives way to the two phones
        text = profile.read_text().replace(f'address = "127.0.0.1:{a.port}"\n', "")
        profile.write_text('phones = ["' + '", "'.join(phones) + '"]\n' + text)
        setup_device(str(profile))
        before = [c.connections for c in counters]
        db = tmp_path / "db.sqlite"
        summary = run_search(SearchConfig(**{**TINY, "batch": 4}, reward="ce", device=str(profile)), db,
                             execution=Execution(ray="auto", max_in_flight=4))
        used = [c.connections - n for c, n in zip(counters, before)]
        for c in counters:
            c.close()
    assert summary.status == "done" and summary.latency_sources["measured"] == 4, summary
    assert all(n > 0 for n in used), used  # each phone measured some of the four
    keys = [r[0] for r in open_db(db).read("SELECT arch_key FROM measurements")]
    assert sorted(keys) == sorted(r.arch_key for r in RunStore(open_db(db)).candidates(summary.run_id))


def _kill_once(title: str, done: threading.Event, killed: list[int]) -> None:
    """SIGKILL the first process whose title starts with `title` (a Ray worker running it)."""
    import psutil

    while not done.is_set() and not killed:
        for proc in psutil.process_iter(["pid", "cmdline"]):
            line = " ".join(proc.info["cmdline"] or [])
            if line.startswith(title):
                proc.kill()
                killed.append(proc.info["pid"])
                return
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("title", ["ray::_train", "ray::Phone.measure"])
def test_a_worker_or_phone_killed_mid_work_leaves_each_candidate_evaluated_once(tmp_path, title):
    from devices_support import set_up_phone

    with set_up_phone(tmp_path) as profile:
        db = tmp_path / "db.sqlite"
        done, killed = threading.Event(), []
        killer = threading.Thread(target=_kill_once, args=(title, done, killed), daemon=True)
        killer.start()
        try:
            summary = run_search(SearchConfig(**TINY, reward="ce", device=str(profile)), db, execution=RAY)
        finally:
            done.set()
            killer.join(5)
    assert killed, f"no {title} process was seen"
    rows = RunStore(open_db(db)).candidates(summary.run_id)
    assert summary.status == "done" and [r.status for r in rows] == ["done"] * 4
    measured = [r[0] for r in open_db(db).read("SELECT arch_key FROM measurements")]
    assert sorted(measured) == sorted({r.arch_key for r in rows})  # each measured once, none lost


def test_ray_starts_its_processes_with_sigint_taken_and_keeps_the_sigterm_handler():
    """A background job ignores SIGINT and Ray's processes would inherit that (so `ray.cancel`
    could not stop a running training); around `ray.init` it is taken, then ignored again."""
    import signal

    from akd_mobile.ray_engine import signals_for_ray_init

    def on_term(signum, frame):
        pass

    saved = signal.signal(signal.SIGINT, signal.SIG_IGN), signal.signal(signal.SIGTERM, on_term)
    try:
        with signals_for_ray_init():
            assert signal.getsignal(signal.SIGINT) == signal.SIG_DFL
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as ray.init does with a handler of its own
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN and signal.getsignal(signal.SIGTERM) is on_term
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with signals_for_ray_init():  # a SIGINT this process takes is left as it is
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, saved[0])
        signal.signal(signal.SIGTERM, saved[1])


def test_the_in_process_path_does_not_import_ray():
    import subprocess
    import sys

    code = ("import sys, cli, akd_mobile.search, akd_mobile.engines, akd_mobile.evaluation; "
            "from cli import cli as c; assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_sigterm_stops_a_ray_search_resumably_and_a_resume_on_ray_finishes_it(tmp_path):
    """Ray's `ray.init` installs its own SIGTERM handler and its waits re-raise a plain
    KeyboardInterrupt: the run must still stop as SIGTERM (exit 143) and resume."""
    import signal
    import sqlite3
    import subprocess
    import sys

    db = tmp_path / "db.sqlite"
    args = [sys.executable, "-m", "cli", "search", "--data", "digits", "--reward", "ce", "--budget", "4", "--batch", "2",
            "--proxy-steps", "20", "--target-ms", "0.25", "--db", str(db), "--ray", "auto"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + HUNG_S
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.3)
        if db.exists():
            with contextlib.suppress(sqlite3.OperationalError), sqlite3.connect(db, timeout=5) as conn:
                if conn.execute("SELECT count(*) FROM candidates WHERE status = 'done'").fetchone()[0] >= 1:
                    break
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in proc.stderr.read()
    assert RunStore(open_db(db)).get_run(1).status == "interrupted"
    result = CliRunner().invoke(cli, ["search", "--resume", "1", "--db", str(db), "--ray", "auto", "--json"])
    assert result.exit_code == 0, result.output
    rows = RunStore(open_db(db)).candidates(1)
    assert [r.status for r in rows] == ["done"] * 4 and len({r.id for r in rows}) == 4


@pytest.fixture()
def ray_head():
    """A Ray head that `ray start` began, as on a cluster: it outlives its drivers."""
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    from devices_support import free_port

    port = free_port()
    ray_cli = Path(sys.executable).with_name("ray")
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}  # Ray's default: token auth
    env.update(RAY_worker_niceness="0", RAY_USAGE_STATS_ENABLED="0")
    temp = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths must fit in 107 characters
    started = subprocess.run([str(ray_cli), "start", "--head", f"--port={port}", "--num-cpus=2",
                              "--include-dashboard=false", f"--temp-dir={temp}"], env=env, capture_output=True, text=True)
    assert started.returncode == 0, started.stderr[-2000:]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(ray_cli), "stop", "--force"], env=env, capture_output=True)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_a_driver_killed_by_sigkill_resumes_on_the_cluster_with_each_candidate_once(tmp_path, ray_head):
    """Steady-state evolution on a cluster that `ray start` began (with Ray's token
    authentication, on by default); the driver dies mid-run (no handler runs); the cluster
    stays up; `--resume` on it evaluates only the pending candidates."""
    import os
    import signal
    import sqlite3
    import subprocess
    import sys

    db = tmp_path / "db.sqlite"
    search = [sys.executable, "-m", "cli", "search", "--db", str(db), "--ray", ray_head]
    first = search + ["--data", "digits", "--reward", "ce", "--budget", "6", "--strategy", "evolution",
                      "--proxy-steps", "20", "--target-ms", "0.25", "--max-in-flight", "2"]
    no_token = subprocess.run(first, env={**os.environ, "RAY_AUTH_MODE": "disabled"}, capture_output=True, text=True,
                              timeout=HUNG_S)
    assert no_token.returncode == 2 and "set RAY_AUTH_MODE=token" in no_token.stderr.strip().splitlines()[-1]
    assert not db.exists() or RunStore(open_db(db)).list_runs() == []
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    proc = subprocess.Popen(first, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + HUNG_S
    done_before: dict[int, float] = {}
    while time.monotonic() < deadline and proc.poll() is None and len(done_before) < 2:
        time.sleep(0.2)
        if db.exists():
            with contextlib.suppress(sqlite3.OperationalError), sqlite3.connect(db, timeout=5) as conn:
                done_before = dict(conn.execute("SELECT id, finished_at FROM candidates WHERE status = 'done'"))
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    store = RunStore(open_db(db))
    assert store.get_run(1).shown_status == "stale"
    assert any(r.status == "pending" for r in store.candidates(1))
    resumed = subprocess.run(search + ["--resume", "1", "--json"], env=env, capture_output=True, text=True,
                             timeout=HUNG_S)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = store.candidates(1)
    assert [(r.step, r.slot, r.status) for r in rows] == [(s, 0, "done") for s in range(1, 7)]
    assert all(r.finished_at == done_before[r.id] for r in rows if r.id in done_before), "evaluated again"
    measured = [k for (k,) in open_db(db).read("SELECT arch_key FROM measurements")]
    assert sorted(measured) == sorted({r.arch_key for r in rows})  # each architecture measured once


def test_a_candidate_that_does_not_export_fails_and_its_training_is_cancelled(ray_cluster, tmp_path):
    """Export, measurement and training run at once on Ray; a failed export fails the
    candidate with its reason and cancels the training still running.

    The export fails only once the training runs, as a real export fails tens of seconds
    into a training: a cancel that reaches a worker before its task starts is a race of
    Ray's own (ray-project/ray#24359, #52703) that this test must not depend on."""
    from akd_base.errors import ExportError
    from akd_mobile.evaluation import CandidateEvaluation
    from akd_mobile.latency import LatencyService
    from akd_mobile.ray_engine import RayEngine
    from akd_mobile.search import SearchInputs
    from akd_mobile.space import get_space
    from devices.local import LocalDevice

    training_runs = tmp_path / "training-runs"

    @ray_cluster.remote(num_cpus=0)
    def does_not_export():
        deadline = time.monotonic() + HUNG_S
        while not training_runs.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the training did not start within {HUNG_S} s")
            time.sleep(0.05)
        raise ExportError("the converter cannot handle op X")

    @ray_cluster.remote(num_cpus=0)
    def trains_long():  # steps, as a training does: a cancel interrupts between them
        training_runs.touch()
        for _ in range(3000):
            time.sleep(0.1)

    class NoExport(RayEngine):
        trainings: list = []

        def _train(self, arch):
            self.trainings.append(trains_long.remote())
            return self.trainings[-1]

        def _export(self, arch):
            return does_not_export.remote()

    config = SearchConfig(reward="ce", target_ms=1.0, threads=1, warmup=0, runs=1, min_time_s=0.0)
    space = get_space("mnasnet-small")
    evaluation = CandidateEvaluation(config, SearchInputs(None, space, None, {}),
                                     LatencyService(LocalDevice(), None, config.measure))
    engine = NoExport(evaluation, Execution(ray="auto"), [lambda shipped: shipped], owns_ray=False)
    arch = space.sample(__import__("random").Random(0))
    [(cid, outcome)] = list(engine.evaluate(iter([(7, arch)]), lambda: None, lambda cid, phase: None))
    assert cid == 7 and outcome.status == "failed" and outcome.error == "ExportError: the converter cannot handle op X"
    with pytest.raises(ray_cluster.exceptions.TaskCancelledError):
        ray_cluster.get(NoExport.trainings[0], timeout=60)
