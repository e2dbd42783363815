"""The latency predictor: features, the fit on a known cost law, storage with its measurements,
the evaluation and its bounds, the sweep, and the commands' bad paths."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from akd_base.errors import DeviceUnavailable, PredictorError
from akd_base.measurement import DeviceInfo
from akd_mobile.latency_eval import clopper_pearson_lower, evaluate_predictor, noise_floor
from akd_mobile.latency_features import CHANNEL_TILES, FEATURES, arch_features
from akd_mobile.latency_predictor import MIN_ARCHS, LatencyModel, Predictor, fit_model, fit_stored
from akd_mobile.latency_sweep import run_sweep, sweep_archs
from cli import cli
from latency_db import open_db
from latency_db.predictors import KeyedMeasurement, keyed_measurements, measurement_counts, resolve_key
from latency_support import HOST, KEY, LAW, SPACE, FakeService, archs, law_database, law_ms, record


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


# ---------------------------------------------------------------- features and the fit


def test_features_count_the_spaces_own_macs():
    """The four MAC features add up to the space's analytic MACs; the pooled shortcuts' pools
    are counted apart."""
    for arch in archs(20, seed=3):
        x = dict(zip(FEATURES, arch_features(SPACE, arch)))
        pools = sum(9 * layer.in_ch * layer.out_hw[0] * layer.out_hw[1] for layer in SPACE.plan(arch)
                    if layer.skip == "pool")
        macs = x["dense_macs"] + x["depthwise_macs"] + x["pointwise_macs"] + x["small_macs"]
        assert macs == SPACE.cost(arch).macs and x["pool_macs"] == pools
        assert x["pool_ops"] == sum(layer.skip == "pool" for layer in SPACE.plan(arch))
        assert x["weight_elems"] == SPACE.cost(arch).params and x["ops"] > 2 * len(SPACE.plan(arch))


def test_a_fit_recovers_a_known_cost_law():
    students = archs(160)
    x = np.array([arch_features(SPACE, a) for a in students])
    y = x @ LAW[:-1] + LAW[-1]
    model = fit_model(students[:100], y[:100])
    relative = model.predict(students[100:]) / y[100:] - 1
    assert np.max(np.abs(relative)) < 0.01 and model.band < 0.01 and model.archs == 100
    assert model.tile == 1  # the law counts channels one by one
    costs = np.array(model.costs)
    for j, name in enumerate(FEATURES):  # the costs that carry the latency come back
        share = np.mean(x[:, j] * LAW[j] / y)
        if share > 0.1:
            assert costs[j] == pytest.approx(LAW[j], rel=0.1), name
    assert np.all(costs >= 0)
    assert LatencyModel.from_json(json.loads(json.dumps(model.to_json()))) == model


def test_a_fit_finds_the_devices_channel_tile():
    """A device whose kernels compute channels in tiles of 16: the fit keeps tile 16, and
    counting channels one by one would have been worse."""
    students = archs(160)
    y = np.array([arch_features(SPACE, a, tile=16) for a in students]) @ LAW[:-1] + LAW[-1]
    model = fit_model(students[:100], y[:100])
    assert model.tile == 16 and model.band < 0.01
    assert np.max(np.abs(model.predict(students[100:]) / y[100:] - 1)) < 0.01
    untiled = fit_model(students[:100], y[:100], tiles=(1,))
    assert untiled.tile == 1 and untiled.band > 5 * model.band


def test_the_band_grows_with_the_noise():
    students = archs(100)
    x = np.array([arch_features(SPACE, a) for a in students])
    y = x @ LAW[:-1] + LAW[-1]
    noisy = y * np.exp(np.random.default_rng(1).normal(0, 0.05, len(y)))
    assert fit_model(students, y).band < 0.01 < 0.05 < fit_model(students, noisy).band < 0.2


def test_too_few_or_bad_latencies_are_refused():
    students = archs(MIN_ARCHS)
    with pytest.raises(PredictorError, match=f"at least {MIN_ARCHS} measured architectures, got {MIN_ARCHS - 1}"):
        fit_model(students[:-1], np.ones(MIN_ARCHS - 1))
    with pytest.raises(PredictorError, match="must be positive"):
        fit_model(students, np.r_[np.ones(MIN_ARCHS - 1), 0.0])


# ---------------------------------------------------------------- storage and prediction


def test_a_fit_is_stored_with_its_measurements_and_predicts(tmp_path):
    db_path = law_database(tmp_path / "l.sqlite", 30, repeats=2)
    with open_db(db_path) as db:
        key = resolve_key(db, "local", "tflite", 1)
        assert key == KEY
        with pytest.raises(PredictorError, match="no latency model for device .*latency fit"):
            Predictor(db, key)
        stored = fit_stored(db, key)
        assert stored.archs == 30 and len(stored.measurement_uids) == 32
        assert set(stored.measurement_uids) == {m.uid for m in keyed_measurements(db, key)}
        unseen = archs(5, seed=9)[0]
        prediction = Predictor(db, key).predict(unseen)
        assert prediction.model_id == stored.id
        assert prediction.median_ms == pytest.approx(law_ms(unseen), rel=0.02)
        assert fit_stored(db, key).id == stored.id + 1  # a new fit is a new model; the newest predicts
        assert Predictor(db, key).stored.id == stored.id + 1


def test_keys_resolve_by_name_or_fingerprint_and_refuse_the_unknown(tmp_path):
    db_path = law_database(tmp_path / "l.sqlite", 3)
    other = DeviceInfo("local", "Epyc", "Epyc", "x86_64", 2, runtimes={"litert": "2.3.0"})
    with open_db(db_path) as db:
        assert resolve_key(db, HOST.fingerprint, "tflite", 1) == KEY
        with pytest.raises(Exception, match="has no device 'pixel'"):
            resolve_key(db, "pixel", "tflite", 1)
        with pytest.raises(Exception, match=r"no measurements of device local \(.pte, 1 thread"):
            resolve_key(db, "local", "pte", 1)
        record(db, archs(1, seed=5)[0], 1.0, info=other)
        with pytest.raises(Exception, match="names 2 devices .*give a fingerprint"):
            resolve_key(db, "local", "tflite", 1)


# ---------------------------------------------------------------- evaluation


def test_clopper_pearson_matches_scipy():
    from scipy.stats import binomtest

    for k, n in [(150, 150), (145, 150), (7, 10), (1, 299), (299, 299), (0, 20)]:
        expected = binomtest(k, n, alternative="greater").proportion_ci(0.95, method="exact").low
        assert clopper_pearson_lower(k, n) == pytest.approx(expected, abs=1e-9)
    with pytest.raises(ValueError):
        clopper_pearson_lower(3, 2)


def _measurements(values: list[tuple[str, float]]) -> list[KeyedMeasurement]:
    arch = archs(1)[0].to_json()
    return [KeyedMeasurement(f"u{i}", key, arch, ms, f"2026-01-01T00:00:{i:02d}") for i, (key, ms) in enumerate(values)]


def test_the_noise_floor_compares_repeats_with_the_first():
    floor = noise_floor(_measurements([("a", 1.0), ("b", 2.0), ("a", 1.05), ("b", 2.5), ("a", 0.89)]))
    assert (floor.trials, floor.within) == (3, 1)  # 1.05 is within 10% of 1.0; 2.5 and 0.89 are not
    assert floor.lower == pytest.approx(clopper_pearson_lower(1, 3))
    assert noise_floor(_measurements([("a", 1.0), ("b", 2.0)])) is None


def test_eval_holds_out_by_architecture(tmp_path):
    db_path = law_database(tmp_path / "l.sqlite", 80, noise=0.03, repeats=10)
    with open_db(db_path) as db:
        e = evaluate_predictor(keyed_measurements(db, KEY), KEY, sizes=(10, 30, 100), held_out=40)
    assert (e.archs, e.held_out) == (80, 40)
    assert [r.train_archs for r in e.results] == [10, 30]  # 100 does not fit beside 40 held out of 80
    for r in e.results:
        assert r.agreement.trials == 40 and r.agreement.within / 40 == r.agreement.share
        assert r.agreement.lower <= r.agreement.share and r.kendall_tau > 0.8 and r.rmspe < 0.15
    assert e.results[-1].agreement.share >= 0.9
    assert e.noise is not None and e.noise.trials == 10
    with pytest.raises(PredictorError, match="cannot give 75 held out"):
        evaluate_predictor(keyed_measurements(open_db(db_path), KEY), KEY, held_out=75)


def test_eval_fits_on_first_measurements_and_judges_against_medians():
    """A student's later measurements never reach the fit (n students, n measurements), and a
    held-out student is judged against the median of all of its own."""
    students = archs(60, seed=3)
    # each student measured at the law, then twice 30% slower
    values = [(a, law_ms(a) * scale) for scale in (1.0, 1.3, 1.3) for a in students]
    measurements = [KeyedMeasurement(f"u{i}", a.key, a.to_json(), ms, f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}")
                    for i, (a, ms) in enumerate(values)]
    e = evaluate_predictor(measurements, KEY, sizes=(30,), held_out=30)
    assert e.held_out_measurements == 90
    # fitted on the first measurements it predicts the law, judged against medians 30% slower:
    # every error is 1/1.3 - 1 (a fit on medians, or a test on first measurements, would make it 0)
    r = e.results[0]
    assert r.agreement.within == 0 and r.rmspe == pytest.approx(1 - 1 / 1.3, abs=1e-3)
    # yet each prediction is its student's first measurement, and each student's own measurements spread by 30%
    assert r.near_a_measurement == 30 and e.held_out_spread == (30, 30)
    once = evaluate_predictor(measurements[:60], KEY, sizes=(30,), held_out=30)
    assert once.held_out_spread == (0, 0) and once.results[0].near_a_measurement == once.results[0].agreement.within


# ---------------------------------------------------------------- the sweep


def test_the_sweep_spreads_over_the_cost_range():
    picked = sweep_archs(SPACE, 30, seed=0)
    assert len({a.key for a in picked}) == 30 and picked == sweep_archs(SPACE, 30, seed=0)
    spread = sorted(math.log(SPACE.cost(a).macs) for a in picked)
    plain = sorted(math.log(SPACE.cost(a).macs) for a in archs(30))
    assert spread[0] < plain[0] and spread[-1] > plain[-1]  # reaches further out at both ends
    gaps = np.diff(spread)
    assert gaps.max() < 4 * (spread[-1] - spread[0]) / 30  # no hole in the middle


def test_the_sweep_resumes_repeats_once_and_skips_a_failing_student(tmp_path):
    picked = sweep_archs(SPACE, 12, seed=1)
    key = [a.key for a in picked]
    with open_db(tmp_path / "s.sqlite") as db:
        down = FakeService(db, down_after=5)
        with pytest.raises(DeviceUnavailable):
            run_sweep(down, picked, repeat=3)
        # the j-th is repeated right after the 2j-th: 0, 1, 0 again, 2, 3, then the device went away
        assert down.measured == [key[0], key[1], key[0], key[2], key[3]] and db.stats().measurements == 5
        progress = []
        again = FakeService(db, fail={key[7]})
        summary = run_sweep(again, picked, repeat=3, on_progress=progress.append)
        assert (summary.measured, summary.cached, summary.failed, summary.repeated) == (7, 4, 1, 2)
        assert again.measured == [key[1], key[4], key[5], key[2], key[6], key[8], key[9], key[10], key[11]]
        assert [p.index for p in progress] == list(range(1, 16)) and progress[-1].total == 15
        assert [p.arch_key for p in progress if p.error] == [key[7]] and progress[2].cached  # 0's repeat was stored
        third = FakeService(db)
        summary = run_sweep(third, picked, repeat=3)
        assert (summary.measured, summary.cached, summary.repeated) == (1, 11, 0) and third.measured == [key[7]]
    with open_db(tmp_path / "s.sqlite") as db:
        floor = noise_floor(keyed_measurements(db, KEY))
    assert floor.trials == 3 and floor.within == 3  # the law gives the same latency twice


def test_later_passes_measure_each_student_until_it_has_k_and_resume(tmp_path):
    picked = sweep_archs(SPACE, 6, seed=2)
    key = [a.key for a in picked]
    with open_db(tmp_path / "s.sqlite") as db:
        # pass 1 measures six (the first repeated after the second), pass 2 stops after two
        first = FakeService(db, fail={key[3]}, down_after=8)
        with pytest.raises(DeviceUnavailable):
            run_sweep(first, picked, repeat=1, times=3)
        assert first.measured == [key[0], key[1], key[0], key[2], key[4], key[5], key[1], key[2]]
        progress = []
        again = FakeService(db, fail={key[3]})
        summary = run_sweep(again, picked, repeat=1, times=3, on_progress=progress.append)
        # pass 2: 4 and 5 (0 had its repeat, 1 and 2 their second before the device went); pass 3: all but 3
        assert again.measured == [key[4], key[5], key[0], key[1], key[2], key[4], key[5]]
        assert (summary.measured, summary.cached, summary.failed, summary.remeasured) == (0, 5, 1, 7)
        assert progress[-1].total == 6 + 1 + 2 * 6 and [p.index for p in progress] == list(range(1, 20))
        assert [p.error for p in progress if p.arch_key == key[3]][1:] == ["not measured again: its first "
                                                                        "measurement failed"] * 2
        assert measurement_counts(db, KEY) == {k: 3 for k in key if k != key[3]}
        third = FakeService(db, fail={key[3]})
        assert run_sweep(third, picked, repeat=1, times=3).remeasured == 0 and third.measured == []
        # a student that fails in a later pass is reported, and the pass goes on
        progress = []
        fourth = FakeService(db, fail={key[0], key[3]})
        summary = run_sweep(fourth, picked, repeat=1, times=4, on_progress=progress.append)
        assert fourth.measured == [key[1], key[2], key[4], key[5]]
        assert (summary.failed, summary.remeasured) == (2, 4) and len(progress) == 6 + 1 + 3 * 6
        assert progress[-6].arch_key == key[0] and "does not convert" in progress[-6].error


# ---------------------------------------------------------------- the commands


def test_fit_predict_and_eval_commands(tmp_path):
    db = law_database(tmp_path / "l.sqlite", 40, noise=0.02, repeats=4)
    student = archs(3, seed=11)[0]
    fit = run("latency", "fit", "--device", "local", "--db", db, "--json")
    assert fit.exit_code == 0, fit.output
    d = json.loads(fit.stdout)
    assert d["archs"] == 40 and d["measurements"] == 44 and d["key"]["runtime_version"] == "litert 2.3.0"
    assert d["tile"] in CHANNEL_TILES
    predicted = json.loads(run("latency", "predict", student.canonical, "--device", "local", "--db", db, "--json").stdout)
    assert predicted["model_id"] == d["model_id"] and predicted["arch_key"] == student.key
    assert predicted["median_ms"] == pytest.approx(law_ms(student), rel=0.1)
    text = run("latency", "predict", student.canonical, "--device", HOST.fingerprint, "--db", db).stdout
    assert text.startswith(f"{student.key}  ") and f"latency model {d['model_id']})" in text
    e = run("latency", "eval", "--device", "local", "--sizes", "10,30", "--held-out", 10, "--db", db)
    assert e.exit_code == 0, e.output
    assert "40 architectures, 10 held out" in e.stdout and len(e.stdout.splitlines()) == 6
    header, first = e.stdout.splitlines()[1:3]
    assert header.split()[-4] == "tile" and int(first.split()[-2]) in CHANNEL_TILES
    d = json.loads(run("latency", "eval", "--device", "local", "--sizes", "10,30", "--held-out", 10, "--db", db,
                       "--json").stdout)
    spread, of = d["held_out_spread"]
    assert d["held_out_measurements"] == 10 + of  # the 4 repeated students held out have two measurements each
    assert e.stdout.splitlines()[4] == (f"held out and measured more than once: {of}, of which {spread} spread by more "
                                        "than 10% themselves" if of else "held out and measured more than once: none")
    assert first.split()[-1] == f"{d['results'][0]['near_a_measurement'] / 10:.1%}"
    assert "noise floor: 4 of 4 repeated measurements within 10% of the first (100.0%" in e.stdout  # 2% noise


def test_an_export_without_samples_reimports_and_evaluates_the_same(tmp_path):
    db = law_database(tmp_path / "l.sqlite", 24, noise=0.02, repeats=3)
    assert run("latency", "export", "--csv", tmp_path / "m.csv", "--without-samples", "--db", db).exit_code == 0
    rows = (tmp_path / "m.csv").read_text().splitlines()
    assert len(rows) == 28 and all(',"[]",' in row or ",[]," in row for row in rows[1:])
    assert run("latency", "import", tmp_path / "m.csv", "--db", tmp_path / "copy.sqlite").exit_code == 0
    evaluations = [json.loads(run("latency", "eval", "--device", "local", "--sizes", "10", "--held-out", 12, "--db",
                                  path, "--json").stdout) for path in (db, tmp_path / "copy.sqlite")]
    assert evaluations[0] == evaluations[1]


@pytest.mark.parametrize(
    "args, message",
    [
        (["latency", "fit", "--device", "local"], "at least 10 measured architectures, got 5"),
        (["latency", "fit", "--device", "pixel"], "has no device 'pixel'"),
        (["latency", "fit", "--device", "local", "--format", "pte"], "no measurements of device local (.pte"),
        (["latency", "predict", "mb6", "--device", "local"], "blocks joined by"),
        (["latency", "eval", "--device", "local"], "5 measured architectures cannot give 2 held out"),
        (["latency", "eval", "--device", "local", "--sizes", "ten"], "--sizes must be integers"),
        (["latency", "sweep", "--n", "3", "--device", "pixel9"], "unknown device 'pixel9'"),
        (["latency", "sweep", "--n", "3", "--min-time", "-1"], "--min-time must be a number of seconds >= 0"),
        (["latency", "sweep", "--n", "3", "--times", "0"], "Invalid value for '--times'"),
    ],
)
def test_bad_predictor_commands_are_one_line_errors(tmp_path, args, message):
    db = law_database(tmp_path / "l.sqlite", 5)
    r = run(*args, "--db", db)
    assert r.exit_code == 2, r.output
    assert r.stderr.count("\n") == 1 and message in r.stderr, r.stderr


def test_predict_without_a_model_is_a_one_line_error(tmp_path):
    db = law_database(tmp_path / "l.sqlite", 12)
    r = run("latency", "predict", archs(1)[0].canonical, "--device", "local", "--db", db)
    assert r.exit_code == 2 and "no latency model for device" in r.stderr and r.stderr.count("\n") == 1
