"""`latency recheck`: architectures the database holds measured again on a device that kept its
speed, or drifted, and the command's exit codes and bad paths; the sweep's check before it
adds to a device's measurements."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from click.testing import CliRunner

import akd_mobile.latency
import devices.profiles
from akd_base.errors import DatabaseError, DeviceUnavailable, DriftError
from akd_mobile.latency_predictor import measured_archs
from akd_mobile.latency_recheck import RECHECK_ARCHS, recheck, spread_picks
from akd_mobile.latency_sweep import adds_measurements, check_speed, run_sweep, sweep_archs
from cli import cli
from latency_db import open_db
from latency_db.predictors import keyed_measurements
from latency_support import KEY, SPACE, FakeService, law_database, law_ms


def test_picks_spread_from_the_fastest_to_the_slowest():
    latencies = np.array([5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0])
    assert [latencies[i] for i in spread_picks(latencies, 3)] == [1.0, 5.0, 9.0]
    assert [latencies[i] for i in spread_picks(latencies, 4)] == [1.0, 3.0, 7.0, 9.0]
    assert sorted(spread_picks(latencies, 10)) == list(range(7))


def test_a_device_at_its_stored_speed_passes_and_stores_nothing(tmp_path):
    with open_db(law_database(tmp_path / "l.sqlite", 20)) as db:
        service = FakeService(db)
        seen = []
        summary = recheck(service, 6, on_each=seen.append)
        assert db.stats().measurements == 20
    assert len(service.measured) == 6 and [r.arch_key for r in seen] == service.measured
    assert summary.drift == pytest.approx(0.0) and not summary.drifted and summary.agreement.within == 6
    assert [r.stored_ms for r in summary.rechecks] == sorted(r.stored_ms for r in summary.rechecks)


def test_a_slower_device_drifts_and_store_keeps_only_measurements_of_the_stored_speed(tmp_path):
    path = law_database(tmp_path / "l.sqlite", 20)
    with open_db(path) as db:
        summary = recheck(FakeService(db, speed=1.3), 5, store=True)
        assert db.stats().measurements == 20 and not summary.stored  # two speeds are not mixed
        kept = recheck(FakeService(db, speed=1.04), 5, store=True)
        measurements = keyed_measurements(db, KEY)
    assert summary.drift == pytest.approx(0.3) and summary.drifted and summary.agreement.within == 0
    assert summary.drift_low == pytest.approx(0.3) and summary.drift_high == pytest.approx(0.3)
    assert summary.describe() == "x1.30 the stored latencies (30.0% slower)"
    assert kept.stored and not kept.drifted and len(measurements) == 25
    keys, archs, per_arch = measured_archs(measurements)
    twice = [ms for ms in per_arch if len(ms) == 2]
    assert len(twice) == 5 and all(b == pytest.approx(1.04 * a) for a, b in twice)


def test_a_drift_within_the_limit_is_not_a_change(tmp_path):
    with open_db(law_database(tmp_path / "l.sqlite", 20)) as db:
        assert not recheck(FakeService(db, speed=1.08), 4).drifted
        assert recheck(FakeService(db, speed=1.08), 4, max_drift=0.05).drifted
        faster = recheck(FakeService(db, speed=0.8), 4)
        assert faster.drift == pytest.approx(-0.2) and faster.describe() == "x0.80 the stored latencies (20.0% faster)"
        assert not recheck(FakeService(db, speed=1.1), 4).drifted  # the bound itself is within, as in latency eval


def test_the_stored_latency_is_the_median_of_an_architectures_measurements(tmp_path):
    path = law_database(tmp_path / "l.sqlite", 12, noise=0.2, repeats=12)  # each measured twice, noisily
    with open_db(path) as db:
        _, archs, per_arch = measured_archs(keyed_measurements(db, KEY))
        summary = recheck(FakeService(db), 12)
    stored = {a.key: float(np.median(ms)) for a, ms in zip(archs, per_arch)}
    for r in summary.rechecks:
        assert r.stored_count == 2 and r.stored_ms == pytest.approx(stored[r.arch_key])
        assert r.now_ms == pytest.approx(law_ms(next(a for a in archs if a.key == r.arch_key)))


def test_one_failing_architecture_is_reported_and_left_out(tmp_path):
    with open_db(law_database(tmp_path / "l.sqlite", 20)) as db:
        _, archs, per_arch = measured_archs(keyed_measurements(db, KEY))
        fastest = archs[int(np.argmin([min(ms) for ms in per_arch]))].key
        summary = recheck(FakeService(db, fail={fastest}, speed=1.2), 4)
    failed = [r for r in summary.rechecks if r.error]
    assert [r.arch_key for r in failed] == [fastest] and "does not convert" in failed[0].error
    assert summary.agreement.trials == 3 and summary.drift == pytest.approx(0.2)


def test_nothing_to_recheck_every_failure_and_a_lost_device_are_errors(tmp_path):
    with open_db(tmp_path / "empty.sqlite") as db:
        with pytest.raises(DatabaseError, match="holds no measurement for device"):
            recheck(FakeService(db))
    with open_db(law_database(tmp_path / "l.sqlite", 3)) as db:
        _, archs, _ = measured_archs(keyed_measurements(db, KEY))
        with pytest.raises(DatabaseError, match="none of the 3 architectures could be measured again"):
            recheck(FakeService(db, fail={a.key for a in archs}))
        with pytest.raises(DeviceUnavailable):
            recheck(FakeService(db, down_after=1))


@pytest.fixture
def fake_device(monkeypatch):
    """The CLI's device and service replaced by FakeService at `speed`; returns its setter."""
    speed = {"value": 1.0}
    monkeypatch.setattr(devices.profiles, "open_device", lambda profile: None)

    def service(device, db, settings):
        fake = FakeService(db, speed=speed["value"])
        fake.key = dataclasses.replace(KEY, fmt=settings.fmt)
        return fake

    monkeypatch.setattr(akd_mobile.latency, "LatencyService", service)
    return lambda value: speed.update(value=value)


def run(*args):
    return CliRunner().invoke(cli, ["latency", "recheck", *[str(a) for a in args]])


def test_the_command_exits_0_at_the_stored_speed_and_1_when_drifted(tmp_path, fake_device):
    db = law_database(tmp_path / "l.sqlite", 20)
    same = run("--archs", 4, "--db", db)
    assert same.exit_code == 0, same.output
    assert len([line for line in same.output.splitlines() if "  now " in line]) == 4 and "x1.000" in same.output
    assert "4 of 4 within 10%; within +-10%: the stored latencies still describe this device" in same.output
    fake_device(1.3)
    slow = run("--archs", 4, "--db", db, "--json")
    assert slow.exit_code == 1, slow.output
    data = json.loads(slow.output)
    assert data["drifted"] and data["drift"] == pytest.approx(0.3) and len(data["rechecks"]) == 4
    text = run("--archs", 4, "--max-drift", 50, "--db", db)
    assert text.exit_code == 0 and "within +-50%" in text.output
    fake_device(0.7)
    fast = run("--archs", 4, "--db", db)
    assert fast.exit_code == 1 and "drifted: this device now runs at x0.70 the stored latencies (30.0% faster)" in fast.output
    with open_db(db) as opened:
        assert opened.stats().measurements == 20  # nothing stored without --store


@pytest.mark.parametrize(
    "args, message",
    [
        (["--archs", "0"], "Invalid value for '--archs'"),
        (["--max-drift", "0"], "Invalid value for '--max-drift'"),
        (["--device", "pixel9"], "unknown device 'pixel9'"),
        (["--format", "pte"], "holds no measurement for device"),
    ],
)
def test_bad_recheck_commands_are_one_line_errors(tmp_path, fake_device, args, message):
    db = law_database(tmp_path / "l.sqlite", 5)
    r = run(*args, "--db", db)
    assert r.exit_code == 2, r.output
    assert r.stderr.count("\n") == 1 and message in r.stderr, r.stderr


def test_a_sweep_adds_measurements_while_one_lacks_its_passes_or_repeat():
    picked = sweep_archs(SPACE, 6, seed=2)
    full = {a.key: 3 for a in picked}
    assert not adds_measurements(full, picked, repeat=2, times=3)
    assert adds_measurements({**full, picked[5].key: 2}, picked, repeat=2, times=3)  # a later pass to go
    assert adds_measurements({k: n for k, n in full.items() if k != picked[4].key}, picked, 0, 1)  # first pass
    once = {a.key: 1 for a in picked}
    assert not adds_measurements(once, picked, repeat=0, times=1)
    assert adds_measurements(once, picked, repeat=1, times=1)  # the first one's repeat
    assert not adds_measurements({**once, picked[0].key: 2}, picked, repeat=1, times=1)


def test_a_sweep_rechecks_before_adding_and_stops_on_a_drifted_device(tmp_path):
    picked = sweep_archs(SPACE, 10, seed=3)
    with open_db(tmp_path / "s.sqlite") as db:
        assert check_speed(FakeService(db), picked, 0, 1, 0.1) is None  # nothing held: nothing to check
        run_sweep(FakeService(db), picked[:6])
        same = FakeService(db)
        summary = check_speed(same, picked, 0, 1, 0.1)
        assert summary is not None and not summary.drifted and len(same.measured) == 6  # all 6 held, rechecked
        assert db.stats().measurements == 6  # a recheck stores nothing
        slow = FakeService(db, speed=1.3)
        with pytest.raises(DriftError, match=r"this device now runs at x1.30 the stored latencies \(30.0% slower\) of "
                                             r"the 6 measurements the database holds of it .*sweep into a new --db, or "
                                             r"pass --allow-drift"):
            check_speed(slow, picked, 0, 1, 0.1)
        broken = FakeService(db, fail={a.key for a in picked})
        with pytest.raises(DriftError, match="none of the 6 architectures could be measured again.*--allow-drift"):
            check_speed(broken, picked, 0, 1, 0.1)
        run_sweep(FakeService(db), picked)
        done = FakeService(db, speed=1.3)
        assert check_speed(done, picked, 0, 1, 0.1) is None and not done.measured  # nothing left to add


def test_the_sweep_command_refuses_a_drifted_device_unless_allowed(tmp_path, fake_device):
    db = law_database(tmp_path / "l.sqlite", 20)
    fake_device(1.3)
    refused = CliRunner().invoke(cli, ["latency", "sweep", "--n", "3", "--db", str(db)])
    assert refused.exit_code == 2 and refused.stderr.count("\n") == 1, refused.output
    assert "this device now runs at x1.30 the stored latencies (30.0% slower) of the 20 measurements" in refused.stderr
    assert refused.stdout.count("recheck ") == RECHECK_ARCHS
    with open_db(db) as opened:
        assert opened.stats().measurements == 20
    allowed = CliRunner().invoke(cli, ["latency", "sweep", "--n", "3", "--allow-drift", "--db", str(db)])
    assert allowed.exit_code == 0 and "recheck" not in allowed.stdout and "measured 3" in allowed.stdout, allowed.output
    fake_device(1.02)
    more = CliRunner().invoke(cli, ["latency", "sweep", "--n", "3", "--times", "2", "--db", str(db)])
    assert more.exit_code == 0, more.output
    assert "recheck: the device runs at x1.02 the stored latencies (2.0% slower), within +-10%: sweeping on" in more.stdout
    assert "measured 0, already in the database 3, failed 0, repeated 0, measured again 3" in more.stdout
