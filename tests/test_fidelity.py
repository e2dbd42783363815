"""Fidelity statistics: tau, rho and the stratified bootstrap against scipy; regret and the
report of a study built from synthetic trainings (no training runs here)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from akd_mobile.fidelity import (
    _differs,
    _regret,
    analyze,
    compare,
    format_report,
    kendall_tau_b,
    spearman_rho,
    stratified_resamples,
)
from akd_mobile.study import Student, Study, StudyConfig, plan_jobs

RNG = np.random.default_rng(7)
X = np.array([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0])  # with ties
Y = np.array([2.0, 7.0, 1.0, 8.0, 2.0, 8.0, 1.0, 8.0, 2.0, 8.0])


def test_kendall_tau_b_matches_scipy_with_and_without_ties():
    assert kendall_tau_b(X, Y) == pytest.approx(stats.kendalltau(X, Y).statistic, abs=1e-12)
    a, b = RNG.normal(size=15), RNG.normal(size=15)
    assert kendall_tau_b(a, b) == pytest.approx(stats.kendalltau(a, b).statistic, abs=1e-12)
    assert kendall_tau_b(a, a) == pytest.approx(1.0) and kendall_tau_b(a, -a) == pytest.approx(-1.0)


def test_spearman_rho_matches_scipy_with_and_without_ties():
    assert spearman_rho(X, Y) == pytest.approx(stats.spearmanr(X, Y).statistic, abs=1e-12)
    a, b = RNG.normal(size=15), RNG.normal(size=15)
    assert spearman_rho(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)


def test_batched_statistics_equal_one_call_per_row():
    xs, ys = RNG.integers(0, 5, size=(6, 9)).astype(float), RNG.integers(0, 5, size=(6, 9)).astype(float)
    taus, rhos = kendall_tau_b(xs, ys), spearman_rho(xs, ys)
    for i in range(6):
        assert taus[i] == pytest.approx(stats.kendalltau(xs[i], ys[i]).statistic, abs=1e-12)
        assert rhos[i] == pytest.approx(stats.spearmanr(xs[i], ys[i]).statistic, abs=1e-12)


def test_a_constant_input_gives_nan_not_an_error():
    assert np.isnan(kendall_tau_b(np.ones(5), np.arange(5.0)))
    assert np.isnan(spearman_rho(np.arange(5.0), np.ones(5)))


def test_stratified_resamples_keep_each_column_in_its_stratum():
    strata = np.array([1, 0, 1, 2, 0, 2, 2, 1])
    idx, cols = stratified_resamples(strata, 300, seed=3)
    assert idx.shape == (301, 8)
    assert sorted(idx[0]) == list(range(8))  # row 0: the students as they are
    assert (strata[idx] == cols).all()  # a column's stratum never changes
    assert sorted(np.bincount(cols)) == sorted(np.bincount(strata))


def test_the_bootstrap_interval_agrees_with_scipys_percentile_bootstrap():
    a = RNG.normal(size=30)
    b = a + RNG.normal(scale=1.0, size=30)
    ours = compare(b, {"p": a}, np.zeros(30, int), np.arange(30), resamples=4000, seed=1)["p"]["tau"]
    theirs = stats.bootstrap((a, b), lambda x, y: stats.kendalltau(x, y).statistic, paired=True,
                             vectorized=False, n_resamples=4000, method="percentile", random_state=1)
    assert ours["value"] == pytest.approx(stats.kendalltau(a, b).statistic, abs=1e-4)
    assert ours["low"] == pytest.approx(theirs.confidence_interval.low, abs=0.05)
    assert ours["high"] == pytest.approx(theirs.confidence_interval.high, abs=0.05)


def test_regret_and_best_differs_by_hand():
    truth = np.array([[0.90, 0.80, 0.85]])
    assert _regret(truth, np.array([[3.0, 1.0, 2.0]]))[0] == pytest.approx(0.0)
    assert _regret(truth, np.array([[1.0, 3.0, 2.0]]))[0] == pytest.approx(0.10)
    ids = np.array([[4, 5, 6]])
    assert _differs(ids, np.array([[1.0, 3.0, 2.0]]), truth)[0] == 1.0
    assert _differs(ids, np.array([[9.0, 3.0, 2.0]]), truth)[0] == 0.0


def test_compare_scores_a_perfect_and_a_reversed_predictor():
    truth = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    strata = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    out = compare(truth, {"same": truth * 2, "reversed": -truth}, strata, np.arange(8), resamples=200)
    assert out["same"]["tau"]["value"] == 1.0 and out["same"]["within_tau"]["value"] == 1.0
    assert out["same"]["regret_points"] == {"value": 0.0, "low": 0.0, "high": 0.0}
    assert out["reversed"]["within_tau"]["value"] == -1.0
    # the reversed predictor picks the worst of each bin: 0.3 points below the best in both
    assert out["reversed"]["regret_points"]["value"] == pytest.approx(30.0)


def _synthetic_study(noise: float) -> tuple[Study, list[dict]]:
    """A stored study's shape with accuracies made up: truth rises with the index, proxies
    follow it with noise, MACs rise with it too (so both rank well)."""
    config = StudyConfig(teachers=("a", "b"), students=8, bins=2, budgets=(10, 20), seeds=2, epochs=2,
                         convergence_students=2, variants=("temperature=4",))
    students = [Student(i, f"arch{i}", f"key{i}", i % 2, 1000 * (i % 2) + i, 50 + i) for i in range(8)]
    study = Study(1, "f" * 16, 0.0, config.identity(),
                  [{"spec": "a", "hash": "ha", "test_accuracy": 0.95, "params": 10},
                   {"spec": "b", "hash": "hb", "test_accuracy": 0.94, "params": 20}],
                  {"name": "synthetic"}, {}, students)
    rng = np.random.default_rng(0)
    rows = []
    for job in plan_jobs(config, ["ha", "hb"]):
        truth = 0.5 + 0.04 * job.student
        accuracy = truth + (0 if job.kind == "full" and job.mode == "kd" and job.seed == 0 else rng.normal(scale=noise))
        rows.append({**job.__dict__, "accuracy": accuracy, "val_accuracy": accuracy, "seconds": float(job.budget),
                     "finished_at": 0.0})
    return study, rows


def test_the_report_of_a_study_ranks_a_faithful_proxy_and_names_its_cost():
    study, rows = _synthetic_study(noise=1e-4)
    report = analyze(study, rows, resamples=200)
    assert report["study"]["complete_students"] == 8 and report["study"]["trainings_done"] == len(rows)
    by_name = {p["predictor"]: p for p in report["predictors"]}
    assert set(by_name) >= {"MACs", "params", "KD proxy 10", "KD proxy 20 x2 seeds", "CE proxy 10",
                            "KD proxy 20 temperature=4", "full CE"}
    assert by_name["KD proxy 20"]["tau"]["value"] == pytest.approx(1.0)
    assert by_name["KD proxy 20"]["seconds"] == 20.0 and by_name["KD proxy 20 x2 seeds"]["seconds"] == 40.0
    assert report["teacher_dependence"]["teachers"]["tau"]["value"] == pytest.approx(1.0)
    assert report["teacher_dependence"]["ceiling_students"]["second seed"]["n"] == 3  # ceil(8 / 3)
    assert [c["student"] for c in report["convergence"]] == [0, 1]
    assert report["best_full_ce"]["arch_key"] == "key7"
    text = format_report(report)
    assert "KD proxy 20 x2 seeds" in text and "noise ceiling" in text


def test_the_report_says_what_distillation_buys_over_labels_per_teacher():
    study, rows = _synthetic_study(noise=1e-4)
    for r in rows:  # teacher b's students 2 points below their CE accuracy, teacher a's exactly at the truth
        if r["kind"] == "full" and r["mode"] == "kd" and r["teacher"] == "hb":
            r["accuracy"] -= 0.02
    report = analyze(study, rows, resamples=200)
    gain = {g["teacher"]: g for g in report["kd_gain"]}
    assert gain[1]["n"] == gain[2]["n"] == 8
    assert gain[1]["mean_points"]["value"] == pytest.approx(0.0, abs=0.05)  # CE differs from the truth by noise 1e-4
    assert gain[2]["mean_points"]["value"] == pytest.approx(-2.0, abs=0.05)
    assert gain[2]["mean_points"]["high"] < 0 and gain[2]["kd_better"] == 0
    assert "full KD (teacher 2) minus full CE: -2.0" in format_report(report)


def test_a_noisy_proxy_ranks_worse_than_a_faithful_one():
    faithful = analyze(*_synthetic_study(noise=1e-4), resamples=100)
    noisy = analyze(*_synthetic_study(noise=0.3), resamples=100)
    tau = lambda r: {p["predictor"]: p for p in r["predictors"]}["KD proxy 10"]["within_tau"]["value"]  # noqa: E731
    assert tau(noisy) < tau(faithful) == 1.0


def test_a_partial_study_reports_only_complete_students():
    study, rows = _synthetic_study(noise=0.01)
    first_students = [r for r in rows if r["student"] < 5]
    report = analyze(study, first_students, resamples=50)
    assert report["study"]["complete_students"] == 5
    assert all(p["n"] == 5 for p in report["predictors"])


def test_a_study_with_one_training_done_reports_without_error():
    study, rows = _synthetic_study(noise=0.01)
    report = analyze(study, rows[:1], resamples=10)
    assert report["predictors"] == [] and [c["n"] for c in report["cost"]] == [1]
    assert "1 trainings" in format_report(report)
