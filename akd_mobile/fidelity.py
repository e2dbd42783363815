"""The statistics of a proxy fidelity study: rank correlations with bootstrap intervals.

The ground truth is each student's fully distilled test accuracy under the study's first
teacher (seed 0). Every predictor (MACs, parameters, each proxy budget in KD and CE mode,
full CE training) is compared with it on the same students by:

- Kendall's tau-b and Spearman's rho over all students;
- the mean of Kendall's tau within each cost bin (what the search must decide, since the
  reward already prices latency);
- regret: the full KD accuracy lost, in points, by taking the predictor's best student of
  a bin instead of the truly best one, averaged over the bins.

Intervals are 95% percentile bootstrap intervals over students, resampled with
replacement within each cost bin (stratified, so every resample keeps the bins' sizes).
scipy's `bootstrap` has no stratified resampling, so the resampling is done here, and tau
and rho are computed in batches over all resamples at once with numpy; the tests check
both against scipy.
"""

from __future__ import annotations

import statistics
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.stats import rankdata

RESAMPLES = 2000
CONFIDENCE = 0.95


# ---------------------------------------------------------------- statistics on batches


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of the last axis of `x` and `y` (ties counted as scipy does); NaN
    where either is constant."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    dx = np.sign(x[..., :, None] - x[..., None, :])
    dy = np.sign(y[..., :, None] - y[..., None, :])
    n = x.shape[-1]
    pairs = n * (n - 1) / 2
    concordance = (dx * dy).sum((-1, -2)) / 2
    tied_x = ((dx == 0).sum((-1, -2)) - n) / 2
    tied_y = ((dy == 0).sum((-1, -2)) - n) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return concordance / np.sqrt((pairs - tied_x) * (pairs - tied_y))


def spearman_rho(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of the last axis (Pearson's r of average ranks); NaN where either is constant."""
    rx = rankdata(np.asarray(x, float), axis=-1)
    ry = rankdata(np.asarray(y, float), axis=-1)
    rx -= rx.mean(-1, keepdims=True)
    ry -= ry.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(-1) / np.sqrt((rx**2).sum(-1) * (ry**2).sum(-1))


def stratified_resamples(strata: np.ndarray, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Row 0: the students as they are; rows 1..count: each stratum resampled with replacement.

    Returns:
        (indices of shape (count + 1, n), the stratum of each column), the columns grouped
        by stratum so that a column's stratum is the same in every row.
    """
    rng = np.random.default_rng(seed)
    columns, column_strata = [], []
    for s in np.unique(strata):
        members = np.flatnonzero(strata == s)
        draws = members[rng.integers(0, len(members), size=(count, len(members)))]
        columns.append(np.vstack([members, draws]))
        column_strata.append(np.full(len(members), s))
    return np.concatenate(columns, axis=1), np.concatenate(column_strata)


def _per_stratum(stat: Callable[[np.ndarray], np.ndarray], strata: np.ndarray) -> np.ndarray:
    """The mean over strata of `stat(mask of the stratum's columns)`, strata where it is
    undefined (NaN) left out."""
    per = np.stack([stat(strata == s) for s in np.unique(strata)], axis=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a row where every stratum is undefined
        return np.nanmean(per, axis=-1)


def _regret(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Truth lost by taking the predictor's best: max(truth) - truth[argmax(pred)], per row."""
    pick = np.take_along_axis(truth, pred.argmax(-1)[..., None], -1)[..., 0]
    return truth.max(-1) - pick


def _differs(ids: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1.0 where the best student by `a` is another student than the best by `b`."""
    best_a = np.take_along_axis(ids, a.argmax(-1)[..., None], -1)[..., 0]
    best_b = np.take_along_axis(ids, b.argmax(-1)[..., None], -1)[..., 0]
    return (best_a != best_b).astype(float)


def _interval(values: np.ndarray) -> dict[str, float | None]:
    """Point estimate (row 0) and the percentile interval of the resamples (rows 1..)."""
    tail = (1 - CONFIDENCE) / 2 * 100
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN resamples
        lo, hi = np.nanpercentile(values[1:], [tail, 100 - tail]) if len(values) > 1 else (np.nan, np.nan)
    return {"value": _num(values[0]), "low": _num(lo), "high": _num(hi)}


def _num(v: float) -> float | None:
    return None if not np.isfinite(v) else round(float(v), 4)


def compare(truth: np.ndarray, preds: dict[str, np.ndarray], strata: np.ndarray, ids: np.ndarray,
            resamples: int = RESAMPLES, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Each predictor against `truth` on the same students and the same resamples.

    Args:
        truth: (n,) the quantity to rank by.
        preds: name -> (n,) predictor values.
        strata: (n,) cost bin of each student.
        ids: (n,) student indices (to tell students apart in a resample).
        resamples: bootstrap resamples.
        seed: seeds the resampling.

    Returns:
        name -> {tau, spearman, within_tau, regret_points, best_differs, n}, each statistic
        a {value, low, high} interval.
    """
    idx, cols = stratified_resamples(strata, resamples, seed)
    t = truth[idx]
    out = {}
    for name, pred in preds.items():
        p, i = pred[idx], ids[idx]
        out[name] = {
            "n": int(len(truth)),
            "tau": _interval(kendall_tau_b(p, t)),
            "spearman": _interval(spearman_rho(p, t)),
            "within_tau": _interval(_per_stratum(lambda m: kendall_tau_b(p[:, m], t[:, m]), cols)),
            "regret_points": _interval(100 * _per_stratum(lambda m: _regret(t[:, m], p[:, m]), cols)),
            "best_differs": _interval(_per_stratum(lambda m: _differs(i[:, m], p[:, m], t[:, m]), cols)),
        }
    return out


# ---------------------------------------------------------------- a study's report


def analyze(study: Any, trainings: list[dict[str, Any]], resamples: int = RESAMPLES, seed: int = 0) -> dict[str, Any]:
    """The fidelity report of a study (`akd_mobile.study.Study`) from its finished trainings."""
    from akd_mobile.study import StudyConfig

    config = StudyConfig.from_identity(study.config)
    hashes = [t["hash"] for t in study.teachers]
    primary = hashes[0]
    acc: dict[tuple, float] = {}
    seconds: dict[tuple, list[float]] = {}
    for r in trainings:
        acc[(r["student"], r["kind"], r["mode"], r["teacher"], r["setting"], r["budget"], r["seed"])] = r["accuracy"]
        seconds.setdefault((r["kind"], r["mode"], r["setting"], r["budget"]), []).append(r["seconds"])
    students = study.students
    E = config.epochs

    def full(s: int, mode: str = "kd", teacher: str = primary, seed_: int = 0, epochs: int = E) -> float | None:
        return acc.get((s, "full", mode, teacher if mode == "kd" else "", "", epochs, seed_))

    def proxy(s: int, mode: str, steps: int, seed_: int, setting: str = "") -> float | None:
        return acc.get((s, "proxy", mode, primary if mode == "kd" else "", setting, steps, seed_))

    def mean(values: list[float | None]) -> float | None:
        return None if any(v is None for v in values) else float(np.mean(values))

    seeds = range(config.seeds)
    getters: dict[str, Callable[[Any], float | None]] = {
        "MACs": lambda st: float(st.macs),
        "params": lambda st: float(st.params),
    }
    predictor_cost: dict[str, float | None] = {"MACs": 0.0, "params": 0.0}
    for mode in ("kd", "ce"):
        for steps in config.budgets:
            label = f"{mode.upper()} proxy {steps}"
            times = seconds.get(("proxy", mode, "", steps))
            one = statistics.median(times) if times else None
            getters[label] = lambda st, m=mode, b=steps: proxy(st.idx, m, b, 0)
            predictor_cost[label] = one
            if config.seeds > 1:
                getters[f"{label} x{config.seeds} seeds"] = lambda st, m=mode, b=steps: mean(
                    [proxy(st.idx, m, b, k) for k in seeds])
                predictor_cost[f"{label} x{config.seeds} seeds"] = None if one is None else one * config.seeds
    for variant in config.variants:
        steps = config.variant_budget_steps
        label = f"KD proxy {steps} {variant}"
        getters[label] = lambda st, v=variant, b=steps: proxy(st.idx, "kd", b, 0, v)
        times = seconds.get(("proxy", "kd", variant, steps))
        predictor_cost[label] = statistics.median(times) if times else None
    getters["full CE"] = lambda st: full(st.idx, "ce")
    times = seconds.get(("full", "ce", "", E))
    predictor_cost["full CE"] = statistics.median(times) if times else None

    complete = [st for st in students if full(st.idx) is not None and all(g(st) is not None for g in getters.values())]
    report: dict[str, Any] = {
        "study": {"id": study.id, "fingerprint": study.fingerprint, "data": study.data, "space": config.space,
                  "students": len(students), "complete_students": len(complete), "bins": config.bins,
                  "epochs": E, "budgets": list(config.budgets), "seeds": config.seeds,
                  "trainings_done": len(trainings), "resamples": resamples},
        "teachers": study.teachers,
        "students": [_student_row(st, full) for st in students],
    }
    ce_full = [(full(st.idx, "ce"), st) for st in students if full(st.idx, "ce") is not None]
    if ce_full:
        best_acc, best = max(ce_full, key=lambda p: p[0])
        report["best_full_ce"] = {"arch_key": best.arch_key, "params": best.params, "test_accuracy": best_acc}
    report["predictors"] = []
    if len(complete) >= 2:
        truth = np.array([full(st.idx) for st in complete])
        strata = np.array([st.cost_bin for st in complete])
        ids = np.array([st.idx for st in complete])
        preds = {name: np.array([g(st) for st in complete]) for name, g in getters.items()}
        stats = compare(truth, preds, strata, ids, resamples, seed)
        report["predictors"] = [{"predictor": name, "seconds": predictor_cost[name], **s} for name, s in stats.items()]
    report["kd_gain"] = _kd_gain(students, hashes, full, resamples, seed)
    report["teacher_dependence"] = _teacher_dependence(students, hashes, full, resamples, seed)
    report["convergence"] = [
        {"student": st.idx, "arch_key": st.arch_key, "epochs": E, "accuracy": full(st.idx),
         "accuracy_2x_epochs": full(st.idx, epochs=2 * E), "gain_points": round(100 * (full(st.idx, epochs=2 * E) - full(st.idx)), 2)}
        for st in students if full(st.idx) is not None and full(st.idx, epochs=2 * E) is not None
    ]
    report["cost"] = [
        {"kind": k[0], "mode": k[1], "setting": k[2], "budget": k[3], "n": len(v),
         "median_s": round(statistics.median(v), 2), "min_s": round(min(v), 2), "max_s": round(max(v), 2)}
        for k, v in sorted(seconds.items())
    ]
    return report


def _student_row(st: Any, full: Callable[..., float | None]) -> dict[str, Any]:
    return {"student": st.idx, "arch_key": st.arch_key, "cost_bin": st.cost_bin, "macs": st.macs, "params": st.params,
            "full_kd": full(st.idx), "full_ce": full(st.idx, "ce")}


def _kd_gain(students: list[Any], hashes: list[str], full: Callable[..., float | None],
             resamples: int, seed: int) -> list[dict[str, Any]]:
    """What distillation buys: full KD minus full CE accuracy of the same students, per teacher."""
    out = []
    for number, teacher in enumerate(hashes, 1):
        both = [st for st in students if full(st.idx, teacher=teacher) is not None and full(st.idx, "ce") is not None]
        if len(both) < 2:
            continue
        gain = 100 * np.array([full(st.idx, teacher=teacher) - full(st.idx, "ce") for st in both])
        idx, _ = stratified_resamples(np.array([st.cost_bin for st in both]), resamples, seed)
        out.append({"teacher": number, "n": len(both), "kd_better": int((gain > 0).sum()),
                    "mean_points": _interval(gain[idx].mean(-1))})
    return out


def _teacher_dependence(students: list[Any], hashes: list[str], full: Callable[..., float | None],
                        resamples: int, seed: int) -> dict[str, Any]:
    """Full KD under two teachers against the noise ceiling of two seeds of one teacher."""
    out: dict[str, Any] = {}
    if len(hashes) > 1:
        both = [st for st in students if full(st.idx) is not None and full(st.idx, teacher=hashes[1]) is not None]
        if len(both) >= 2:
            a = np.array([full(st.idx) for st in both])
            b = np.array([full(st.idx, teacher=hashes[1]) for st in both])
            strata, ids = np.array([st.cost_bin for st in both]), np.array([st.idx for st in both])
            out["teachers"] = compare(a, {"second teacher": b}, strata, ids, resamples, seed)["second teacher"]
    seeded = [st for st in students if full(st.idx) is not None and full(st.idx, seed_=1) is not None]
    if len(seeded) >= 2:
        a = np.array([full(st.idx) for st in seeded])
        preds = {"second seed": np.array([full(st.idx, seed_=1) for st in seeded])}
        if len(hashes) > 1 and all(full(st.idx, teacher=hashes[1]) is not None for st in seeded):
            preds["second teacher"] = np.array([full(st.idx, teacher=hashes[1]) for st in seeded])
        strata, ids = np.array([st.cost_bin for st in seeded]), np.array([st.idx for st in seeded])
        out["ceiling_students"] = compare(a, preds, strata, ids, resamples, seed)
        out["seed_abs_diff_points"] = round(float(100 * np.mean(np.abs(a - preds["second seed"]))), 3)
    return out


# ---------------------------------------------------------------- text


def _ci(s: dict[str, float | None]) -> str:
    if s["value"] is None:
        return "n/a"
    if s["low"] is None:
        return f"{s['value']:+.2f}"
    return f"{s['value']:+.2f} [{s['low']:+.2f}, {s['high']:+.2f}]"


def format_report(report: dict[str, Any]) -> str:
    """The report as text for a terminal."""
    st = report["study"]
    lines = [
        f"proxy study {st['id']} ({st['fingerprint']}): {st['data'].get('name')} on {st['space']}, "
        f"{st['complete_students']}/{st['students']} students complete, {st['trainings_done']} trainings, "
        f"{st['bins']} cost bins, full training {st['epochs']} epochs",
    ]
    for i, t in enumerate(report["teachers"]):
        lines.append(f"teacher {i + 1}: {t['spec']} ({t['hash']}), test accuracy {t['test_accuracy']:.4f}"
                     + (f", {t['params']:,} parameters" if t.get("params") else ""))
    if "best_full_ce" in report:
        b = report["best_full_ce"]
        lines.append(f"best full-CE student: {b['arch_key']} ({b['params']:,} parameters), "
                     f"test accuracy {b['test_accuracy']:.4f}")
    if report["predictors"]:
        lines += ["", f"against full KD accuracy (teacher 1), 95% bootstrap intervals over students "
                      f"({st['resamples']} resamples within bins):",
                  f"{'predictor':<26} {'s':>7}  {'Kendall tau':<22} {'Spearman':<22} {'tau within bins':<22} "
                  f"{'regret (points)':<22}"]
        for p in report["predictors"]:
            sec = "" if p["seconds"] is None else f"{p['seconds']:.1f}"
            lines.append(f"{p['predictor']:<26} {sec:>7}  {_ci(p['tau']):<22} {_ci(p['spearman']):<22} "
                         f"{_ci(p['within_tau']):<22} {_ci(p['regret_points']):<22}")
        ce = next((p for p in report["predictors"] if p["predictor"] == "full CE"), None)
        if ce is not None:
            lines.append(f"best KD student differs from best CE student in a bin: {_ci(ce['best_differs'])} of bins")
    for g in report["kd_gain"]:
        lines.append(f"full KD (teacher {g['teacher']}) minus full CE: {_ci(g['mean_points'])} points on average, "
                     f"KD better for {g['kd_better']} of {g['n']} students")
    dep = report["teacher_dependence"]
    if "teachers" in dep:
        lines += ["", f"teacher 1 against teacher 2 (full KD, {dep['teachers']['n']} students): tau "
                      f"{_ci(dep['teachers']['tau'])}, within bins {_ci(dep['teachers']['within_tau'])}, "
                      f"best differs in {_ci(dep['teachers']['best_differs'])} of bins"]
    if "ceiling_students" in dep:
        c = dep["ceiling_students"]
        lines.append(f"noise ceiling, seed 0 against seed 1 ({c['second seed']['n']} students): tau "
                     f"{_ci(c['second seed']['tau'])}; mean |difference| {dep['seed_abs_diff_points']} points")
        if "second teacher" in c:
            lines.append(f"  teacher 1 against teacher 2 on the same students: tau {_ci(c['second teacher']['tau'])}")
    if report["convergence"]:
        gains = [c["gain_points"] for c in report["convergence"]]
        lines.append(f"convergence: {st['epochs']} -> {2 * st['epochs']} epochs gains "
                     f"{', '.join(f'{g:+.2f}' for g in gains)} points ({len(gains)} students)")
    if report["cost"]:
        lines += ["", "cost per training (seconds): " + "; ".join(
            f"{c['kind']} {c['mode']}{' ' + c['setting'] if c['setting'] else ''} {c['budget']}: {c['median_s']}"
            for c in report["cost"])]
    return "\n".join(lines)
