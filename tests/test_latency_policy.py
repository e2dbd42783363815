"""`search --latency measure|predict|hybrid`: the rule of when a candidate is measured, the
evaluator following it exactly, and the rows saying where each latency came from."""

from __future__ import annotations

import dataclasses
import math
import random

import numpy as np
import pytest

import akd_mobile.distill as distill_module
import akd_mobile.engines as engines_module
import akd_mobile.search as search_module
from akd_base.errors import PredictorError
from akd_base.measurement import LatencyResult
from akd_mobile.distill import ProxyResult
from akd_mobile.latency import LatencyOutcome, LatencyService
from akd_mobile.latency_policy import (MODEL_CHECK_MIN, SKIP_REWARD, TOP_MEASURED, Standing, may_be_measured,
                                       measure_after_training, measure_before_training, model_drift, model_is_off,
                                       skip_bound)
from akd_mobile.latency_predictor import Prediction, fit_stored
from akd_mobile.reward import RewardConfig
from akd_mobile.space import get_space
from devices.local import LocalDevice
from latency_db import open_db
from search_support import evaluate_one, in_process_engine
from latency_support import archs, law_ms, record

SPACE = get_space("mnasnet-small")
HARD, SOFT = RewardConfig.constraint("hard", 1.0), RewardConfig.constraint("soft", 1.0)


def prediction(ms: float, band: float = 0.1, extrapolated: bool = False) -> Prediction:
    return Prediction(ms, band, 7, extrapolated)


def test_the_hard_constraint_skips_only_what_cannot_score():
    assert skip_bound(prediction(5.0), HARD, True, Standing()) == pytest.approx(1 / 4.5)  # 4.5 ms at the fast end
    assert skip_bound(prediction(4.0), HARD, True, Standing()) is None  # 3.6 ms: up to 0.28 > SKIP_REWARD
    assert skip_bound(prediction(50.0), SOFT, False, Standing()) is None  # the soft reward is never near zero
    assert SKIP_REWARD == 0.25


def test_hybrid_measures_before_training_where_the_decision_depends_on_it():
    assert measure_before_training("hybrid", prediction(1.05), HARD, True, Standing())  # 0.945 .. 1.155: holds it
    assert not measure_before_training("hybrid", prediction(1.2), HARD, True, Standing())  # 1.08 .. 1.32: surely over
    assert not measure_before_training("hybrid", prediction(0.8), HARD, True, Standing())  # surely under
    assert not measure_before_training("hybrid", prediction(1.0), SOFT, False, Standing())  # smooth reward
    assert measure_before_training("hybrid", prediction(0.3, extrapolated=True), SOFT, False, Standing())
    assert not measure_before_training("predict", prediction(1.0, extrapolated=True), HARD, True, Standing())


def test_a_candidate_that_may_enter_the_top_or_lead_under_the_target_is_measured():
    top = (0.9, 0.8, 0.7, 0.6, 0.5)
    assert measure_after_training(prediction(1.0), 0.3, SOFT, Standing(top[: TOP_MEASURED - 1]))  # top not full
    assert measure_after_training(prediction(1.2), 0.52, SOFT, Standing(top))  # 0.52 * 1.08^-0.07 = 0.517 >= 0.5
    assert not measure_after_training(prediction(1.2), 0.45, SOFT, Standing(top))
    # under the target at the fast end, and as accurate as the best there so far: it may lead there
    assert measure_after_training(prediction(1.05), 0.45, SOFT, Standing(top, best_under_accuracy=0.44))
    assert not measure_after_training(prediction(1.05), 0.45, SOFT, Standing(top, best_under_accuracy=0.46))
    assert not measure_after_training(prediction(1.2), 0.45, SOFT, Standing(top, best_under_accuracy=0.1))


def test_what_may_be_measured_at_any_accuracy_is_exported_ahead():
    top = (0.9, 0.8, 0.7, 0.6, 0.5)
    assert not may_be_measured("hybrid", prediction(5.0), HARD, True, Standing())  # skipped: never measured
    assert may_be_measured("hybrid", prediction(1.05), HARD, True, Standing(top))  # straddles: measured before
    # 0.945 ms at the fast end: under the target, so at accuracy 1 it may lead there (and enter any top)
    assert may_be_measured("predict", prediction(1.05), HARD, True, Standing((1.0,) * TOP_MEASURED, 0.99))
    # 1.8 ms at the fast end: a reward of at most 1 / 1.8 = 0.556, which enters this top but not one of 0.6s
    assert may_be_measured("predict", prediction(2.0), HARD, True, Standing(top))
    assert not may_be_measured("predict", prediction(2.0), HARD, True, Standing((0.6,) * TOP_MEASURED, 0.6))
    assert may_be_measured("predict", prediction(2.0), HARD, True, Standing((0.6,) * (TOP_MEASURED - 1)))  # not full


def test_a_candidate_ruled_out_now_stays_ruled_out_as_the_run_improves():
    """Whatever the prediction and accuracy: measured after training as the run stands later
    implies `may_be_measured` as it stood before (the engine exports ahead on the earlier one)."""
    rng = random.Random(0)
    checked = 0
    for _ in range(2000):
        reward, hard = rng.choice(((HARD, True), (SOFT, False)))
        p = prediction(rng.uniform(0.2, 6.0), band=rng.uniform(0.0, 0.3), extrapolated=rng.random() < 0.1)
        earlier = sorted((rng.uniform(0.0, 1.0) for _ in range(rng.randint(0, TOP_MEASURED))), reverse=True)
        later = sorted(earlier + [rng.uniform(0.0, 1.0) for _ in range(rng.randint(0, 3))], reverse=True)
        best = rng.choice((None, rng.uniform(0.0, 1.0)))
        better = None if best is None and rng.random() < 0.5 else max(best or 0.0, rng.uniform(0.0, 1.0))
        accuracy = rng.uniform(0.0, 1.0)
        if skip_bound(p, reward, hard, Standing()) is None and measure_after_training(
                p, accuracy, reward, Standing(tuple(later[:TOP_MEASURED]), better)):
            checked += 1
            for mode in ("predict", "hybrid"):
                assert may_be_measured(mode, p, reward, hard, Standing(tuple(earlier), best))
    assert checked > 500


def test_the_model_is_judged_on_enough_of_the_runs_measurements():
    assert model_drift([(1.3, 1.0)] * (MODEL_CHECK_MIN - 1)) is None and MODEL_CHECK_MIN == 5
    assert model_drift([(1.3, 1.0), (2.6, 2.0), (0.5, 1.0), (1.0, 1.0), (3.9, 3.0)]) == pytest.approx(0.3)  # median
    assert not model_is_off(None) and not model_is_off(0.1) and not model_is_off(-0.1)
    assert model_is_off(0.11) and model_is_off(-0.11)
    assert Standing(model_drift=0.3).model_off and not Standing(model_drift=0.05).model_off


def test_while_the_model_is_off_every_candidate_is_measured_before_training_and_none_skipped():
    off, top = Standing((0.9,) * TOP_MEASURED, 0.9, model_drift=-0.25), Standing((0.9,) * TOP_MEASURED, 0.9)
    for mode in ("predict", "hybrid"):
        for p in (prediction(0.5), prediction(1.5), prediction(5.0)):
            assert measure_before_training(mode, p, HARD, True, off) and may_be_measured(mode, p, HARD, True, off)
            assert skip_bound(p, HARD, True, off) is None
        assert not measure_before_training(mode, prediction(0.5), HARD, True, top)  # the same, the model fine
        assert not may_be_measured(mode, prediction(5.0), HARD, True, top)
    # gone off while it trained (measured before training otherwise): measured after it, at any accuracy
    assert measure_after_training(prediction(3.0), 0.1, HARD, off)
    assert not measure_after_training(prediction(3.0), 0.1, HARD, top)


MEASURE = search_module.SearchConfig(threads=1, warmup=0, runs=1, min_time_s=0.0).measure


@pytest.fixture()
def modelled_db(tmp_path):
    """A database holding 30 students at the cost law, times a seeded 2% noise (so a model's
    band is not zero and some predictions straddle a target), on this host's device."""
    device = LocalDevice()
    rng = np.random.default_rng(0)
    with open_db(tmp_path / "l.sqlite") as db:
        for arch in archs(30):
            record(db, arch, law_ms(arch) * math.exp(rng.normal(0, 0.02)), info=device.info())
    return tmp_path / "l.sqlite", device


def test_the_service_predicts_with_its_devices_newest_model(modelled_db):
    db_path, device = modelled_db
    with open_db(db_path) as db:
        with pytest.raises(PredictorError, match="no latency model for device"):
            LatencyService(device, db, MEASURE).predictor  # noqa: B018
        model = fit_stored(db, LatencyService(device, db, MEASURE).key)
        service = LatencyService(device, db, MEASURE)
        for arch in archs(5, seed=21):
            p = service.predictor.predict(arch)
            assert p.model_id == model.id and p.median_ms == pytest.approx(law_ms(arch), rel=0.03)
            assert service.lookup(arch) is None  # a prediction is never stored as a measurement
        with pytest.raises(PredictorError, match="no latency model for device .*.pte"):
            LatencyService(device, db, dataclasses.replace(MEASURE, fmt="pte")).predictor  # noqa: B018


def test_the_evaluator_measures_exactly_what_the_rule_names(modelled_db, monkeypatch):
    db_path, device = modelled_db
    measured, trained = [], []

    def fake_latency(self, arch, weights=None):
        measured.append(arch.key)
        return LatencyOutcome(LatencyResult.from_samples([law_ms(arch) * 1.02]), False, 0.0, 0.0, None, arch.key,
                              "tflite", self.info.fingerprint, self.runtime)

    def fake_proxy(arch, *args, **kwargs):
        trained.append(arch.key)
        return ProxyResult(0.5 + (int(arch.key[:2], 16) % 40) / 100, 0.1, 0.0, 1, 1.0, 1, 1, 0.0)

    monkeypatch.setattr(LatencyService, "latency", fake_latency)
    monkeypatch.setattr(distill_module, "proxy_score", fake_proxy)
    smallest = SPACE.from_indices([1, 0, 0, 0, 0, 0] * SPACE.num_blocks)  # below the fitted range: extrapolated
    students = archs(40, seed=5) + [smallest]
    laws = sorted(law_ms(a) for a in students)
    target = laws[len(laws) // 2]
    with open_db(db_path) as db:
        model = fit_stored(db, LatencyService(device, db, MEASURE).key)
        for mode in ("hybrid", "predict"):
            config = search_module.SearchConfig(constraint="hard", target_ms=target / 3, latency=mode, threads=1,
                                                warmup=0, runs=1, min_time_s=0.0, reward="ce")
            engine = in_process_engine(config, search_module.SearchInputs(None, SPACE, None, {}), db, device)
            evaluation = engine.evaluation
            reward = evaluation.reward_config
            exported: list[str] = []
            monkeypatch.setattr(engine.exporter, "submit", lambda batch: exported.extend(a.key for a in batch))
            # the engine exports ahead (the next candidate, while it trains one) only what may be measured as
            # the run stands: before training, or after it at any accuracy; never what is skipped
            full = Standing((0.4,) * TOP_MEASURED, best_under_accuracy=0.4)
            list(engine.evaluate(iter(enumerate(students)), lambda: full, lambda cid, phase: None))
            expected = [a.key for a in students
                        if may_be_measured(mode, evaluation.predictor.predict(a), reward, True, full)]
            assert exported == expected
            kept = [a for a in students if skip_bound(evaluation.predictor.predict(a), reward, True, full) is None]
            assert 0 < len(exported) < len(kept), (mode, len(exported), len(kept))
            assert set(measured) <= set(exported)
            # as the run improves (its standing read off the outcomes so far), every candidate measured was
            # exported ahead: what cannot be measured at some point never is later
            measured.clear()
            fresh = in_process_engine(config, search_module.SearchInputs(None, SPACE, None, {}), db, device)
            ahead: list[str] = []
            monkeypatch.setattr(fresh.exporter, "submit", lambda batch: ahead.extend(a.key for a in batch))
            outcomes: list = []

            def improving() -> Standing:
                done = [o for o in outcomes if o.status == "done"]
                under = [o.accuracy for o in done if o.latency_ms <= config.target_ms]
                return Standing(tuple(sorted((o.reward for o in done), reverse=True)[:TOP_MEASURED]),
                                max(under, default=None))

            outcomes += [o for _, o in fresh.evaluate(iter(enumerate(students)), improving, lambda cid, phase: None)]
            fresh.close()
            assert measured and set(measured) <= set(ahead), (mode, len(measured), len(ahead))
            measured.clear()
            done: list[tuple[float, float, float]] = []  # (reward, accuracy, latency)
            seen = {"skipped": 0, "before": 0, "after": 0, "predicted": 0}
            for arch in students:
                measured.clear(), trained.clear()
                p = evaluation.predictor.predict(arch)
                under = [acc for _, acc, ms in done if ms <= config.target_ms]
                standing = Standing(tuple(sorted((r for r, _, _ in done), reverse=True)[:TOP_MEASURED]),
                                    max(under, default=None))
                outcome = evaluate_one(engine, arch, standing)
                assert p.model_id == model.id and outcome.predicted_ms == pytest.approx(p.median_ms)
                if skip_bound(p, reward, True, standing) is not None:
                    assert outcome.status == "skipped" and not trained and not measured
                    assert outcome.reward <= SKIP_REWARD and "not trained" in outcome.error
                    seen["skipped"] += 1
                    continue
                before = measure_before_training(mode, p, reward, True, standing)
                after = not before and measure_after_training(p, fake_proxy(arch).accuracy, reward, standing)
                assert measured == ([arch.key] if before or after else []), (mode, arch.key)
                assert outcome.status == "done" and outcome.latency_model_id == model.id
                assert outcome.latency_source == ("measured" if measured else "predicted")
                assert outcome.latency_ms == pytest.approx(law_ms(arch) * 1.02 if measured else p.median_ms)
                done.append((outcome.reward, outcome.accuracy, outcome.latency_ms))
                seen["before" if before else "after" if after else "predicted"] += 1
            engine.close()
            assert all(seen.values()) if mode == "hybrid" else seen["before"] == 0, (mode, seen)


def test_the_evaluator_measures_everything_while_the_model_is_off(modelled_db, monkeypatch):
    db_path, device = modelled_db
    measured, trained = [], []
    monkeypatch.setattr(LatencyService, "latency", lambda self, arch, weights=None: measured.append(arch.key) or
                        LatencyOutcome(LatencyResult.from_samples([law_ms(arch) * 1.3]), False, 0.0, 0.0, None,
                                       arch.key, "tflite", self.info.fingerprint, self.runtime))
    monkeypatch.setattr(distill_module, "proxy_score", lambda arch, *a, **k: trained.append(arch.key) or
                        ProxyResult(0.6, 0.1, 0.0, 1, 1.0, 1, 1, 0.0))
    students = archs(6, seed=9)
    with open_db(db_path) as db:
        fit_stored(db, LatencyService(device, db, MEASURE).key)
        target = min(law_ms(a) for a in students) / 5  # every student far over it: skipped while the model is fine
        config = search_module.SearchConfig(constraint="hard", target_ms=target, latency="hybrid", threads=1,
                                            warmup=0, runs=1, min_time_s=0.0, reward="ce")
        engine = in_process_engine(config, search_module.SearchInputs(None, SPACE, None, {}), db, device)
        monkeypatch.setattr(engine.exporter, "submit", lambda batch: None)
        fine = [evaluate_one(engine, a, Standing()) for a in students]
        assert [o.status for o in fine] == ["skipped"] * 6 and not measured and not trained
        off = [evaluate_one(engine, a, Standing(model_drift=0.3)) for a in students]
        engine.close()
    assert [o.status for o in off] == ["done"] * 6 and measured == trained == [a.key for a in students]
    assert all(o.latency_source == "measured" and o.predicted_ms is not None for o in off)


def test_a_predicting_search_without_a_model_stops_before_a_run_exists(tmp_path):
    from akd_mobile.runs import RunStore

    with pytest.raises(PredictorError, match="no latency model for device .*latency fit"):
        search_module.run_search(search_module.SearchConfig(latency="hybrid", target_ms=1.0, data="digits",
                                                            reward="ce", budget=1), tmp_path / "db.sqlite")
    with open_db(tmp_path / "db.sqlite") as db:
        assert RunStore(db).list_runs() == []
    with pytest.raises(Exception, match="--latency must be one of measure, predict, hybrid"):
        search_module.SearchConfig(latency="guess").validate()


def test_rows_say_where_each_latency_came_from(tmp_path, monkeypatch):
    """A closed-form search stores each candidate's source, and the summary counts them."""
    from akd_mobile.runs import CandidateOutcome
    from search_support import ClosedFormEvaluator, engine_of

    sources = iter(["measured", "predicted", "database", "skipped"] * 4)

    class Sourced(ClosedFormEvaluator):
        def outcome(self, arch):
            source = next(sources)
            if source == "skipped":
                return CandidateOutcome("skipped", latency_ms=9.0, reward=0.11, params=1, macs=1,
                                        latency_source="predicted", predicted_ms=9.0, latency_model_id=3,
                                        error="not trained: predicted 9.000 ms")
            return CandidateOutcome("done", accuracy=0.5, latency_ms=1.0, reward=0.5, params=1, macs=1,
                                    latency_cached=source == "database", latency_source=source,
                                    predicted_ms=1.1 if source == "predicted" else None,
                                    latency_model_id=3 if source == "predicted" else None)

    updates = []
    real_strategy = search_module.make_strategy

    def spied(*args, **kwargs):
        strategy = real_strategy(*args, **kwargs)
        real_update = strategy.update
        strategy.update = lambda archs, rewards: (updates.append(rewards), real_update(archs, rewards))[1]
        return strategy

    monkeypatch.setattr(engines_module, "open_engine", engine_of(Sourced))
    monkeypatch.setattr(search_module, "make_strategy", spied)
    summary = search_module.run_search(search_module.SearchConfig(target_ms=1.0, data="digits", reward="ce",
                                                                  budget=4, strategy="random"), tmp_path / "db.sqlite")
    assert summary.latency_sources == {"database": 1, "measured": 1, "predicted": 1, "skipped": 1}
    assert summary.evaluated == 3 and summary.failed == 0
    assert updates == [[0.5, 0.5, 0.5, 0.11]]  # a skipped candidate's bound is its reward for the controller
    with open_db(tmp_path / "db.sqlite") as db:
        from akd_mobile.runs import RunStore

        rows = RunStore(db).candidates(summary.run_id)
    assert [(r.status, r.latency_source, r.predicted_ms, r.latency_model_id) for r in rows] == [
        ("done", "measured", None, None), ("done", "predicted", 1.1, 3), ("done", "database", None, None),
        ("skipped", "predicted", 9.0, 3)]
    assert rows[-1].error == "not trained: predicted 9.000 ms" and rows[-1].accuracy is None
    from akd_mobile.run_report import write_report

    with open_db(tmp_path / "db.sqlite") as db:
        write_report(db, [summary.run_id], tmp_path / "report")
    svg = next((tmp_path / "report").rglob("accuracy_latency*.svg")).read_text()
    assert "candidate at its predicted latency" in svg and "hollow: predicted" in svg


@pytest.mark.parametrize("mode", ["predict", "measure"])
def test_a_predicting_run_judges_its_model_on_its_recent_measured_candidates(tmp_path, monkeypatch, caplog, mode):
    """Five candidates measured as predicted, then ten 30% slower: the run's model goes off
    once the slow ones are the most of the last MODEL_CHECK_WINDOW (a search that only
    measures has no model to judge); a warning says so once, and the summary gives the median
    over all of them."""
    from types import SimpleNamespace

    from akd_mobile.report import format_summary
    from akd_mobile.runs import CandidateOutcome
    from search_support import ClosedFormEvaluator, engine_of

    standings = []

    class Slowing(ClosedFormEvaluator):
        predictor = SimpleNamespace(stored=SimpleNamespace(id=3)) if mode == "predict" else None

        def evaluate(self, arch, on_phase=lambda phase: None, standing=None):
            standings.append(standing)
            return CandidateOutcome("done", accuracy=0.5, latency_ms=1.0 if len(standings) <= 5 else 1.3, reward=0.5,
                                    params=1, macs=1, latency_source="measured", predicted_ms=1.0,
                                    latency_model_id=3)

    monkeypatch.setattr(engines_module, "open_engine", engine_of(Slowing))
    config = search_module.SearchConfig(target_ms=2.0, data="digits", reward="ce", budget=15, strategy="random",
                                        latency=mode)
    with caplog.at_level("WARNING", logger="akd_mobile.search"):
        summary = search_module.run_search(config, tmp_path / "db.sqlite")
    warnings = [r.getMessage() for r in caplog.records if "latency model is" in r.getMessage()]
    if mode == "measure":
        assert [s.model_drift for s in standings] == [None] * 15 and not warnings
    else:
        # candidate i (from 0) stands on the i finished before it: 5 at x1.0, then i - 5 at x1.3
        assert [s.model_drift for s in standings[:MODEL_CHECK_MIN]] == [None] * MODEL_CHECK_MIN
        # the 11th stands on 5 at x1.0 and 5 at x1.3 (median x1.15), the 15th on 1 and 9 of the last 10 (x1.30)
        assert [s.model_off for s in standings] == [False] * 10 + [True] * 5
        assert standings[10].model_drift == pytest.approx(0.15) and standings[14].model_drift == pytest.approx(0.3)
        assert len(warnings) == 1 and warnings[0].startswith("the latency model is +15% off")
    assert summary.model_drift == pytest.approx(0.3) and summary.model_checked == 15  # the rows say it
    assert "latency model against this run's 15 measured candidates: median +30.0%, off by more than 10%: the " \
           "device's speed changed? (akd-mobile latency recheck)" in format_summary(summary)


def test_the_model_is_judged_only_on_its_own_measured_candidates(tmp_path):
    """Predicted, database, reused and failed rows, and another model's, are left out; the
    newest first, as many as asked."""
    from akd_mobile.runs import CandidateOutcome, RunStore

    with open_db(tmp_path / "db.sqlite") as db:
        store = RunStore(db)
        run_id = store.create_run({"budget": 9}, {}, {})
        rows = [("measured", 1.2, 7, False, "done"), ("predicted", 1.0, 7, False, "done"),
                ("database", 1.0, 7, False, "done"), ("measured", 1.5, 7, True, "done"),
                ("measured", 1.7, 8, False, "done"), ("measured", 1.4, 7, False, "done"),
                ("measured", 1.3, 7, False, "done"), ("measured", None, 7, False, "failed")]
        students = archs(len(rows), seed=4)
        for i, (source, ms, model, reused, status) in enumerate(rows):
            [cid] = store.add_pending(run_id, i, [(students[i].canonical, students[i].key)])
            outcome = CandidateOutcome(status, accuracy=0.5 if ms else None, latency_ms=ms, reward=0.5 if ms else None,
                                       params=1, macs=1, latency_source=source, predicted_ms=1.0,
                                       latency_model_id=model, reused=reused, error=None if ms else "x")
            store.finish(cid, outcome)
        assert store.measured_and_predicted(run_id, 7) == [(1.3, 1.0), (1.4, 1.0), (1.2, 1.0)]
        assert store.measured_and_predicted(run_id, 7, last=2) == [(1.3, 1.0), (1.4, 1.0)]
        assert sorted(store.measured_and_predicted(run_id)) == [(1.2, 1.0), (1.3, 1.0), (1.4, 1.0), (1.7, 1.0)]
