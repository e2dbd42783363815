"""A latency predictor per device, format, thread count and runtime, fitted on the
whole-model measurements the latency database holds.

The model (`LatencyModel`, kind KIND) is physical first and learned second:

- base: latency = sum_j c_j * x_j + c_0, with x the operator work and traffic of
  `akd_mobile.latency_features` and every cost c_j >= 0 (a MAC or a byte never takes negative
  time), fitted by non-negative least squares on relative errors (each row divided by its
  latency: to first order a fit in log space, so a 0.2 ms student counts as much as a 20 ms one);
- correction: a ridge regression (scikit-learn's RidgeCV, its penalty chosen by leave-one-out)
  of log(measured / base) on the standardized log features: what a sum of costs misses
  (cache effects, kernels that are faster at some widths);
- channel tile: the features count channels in whole tiles (`latency_features`); the fit
  tries each of CHANNEL_TILES and keeps the one of the lowest cross-validated RMSPE, the
  device's kernels' tile as the measurements show it (16 on this project's x86 host);
- band: the 95th percentile of |measured / predicted - 1| over a 5-fold cross-validation of the
  training set, each prediction made by a model that did not see it: 95% of the measured
  latencies lie within predicted * (1 +- band). The search treats a prediction as uncertain
  within this band. It is the chosen tile's, the best of five, so slightly optimistic: most
  so on few architectures (docs/latency-predictor.md).

Fitted models are stored with the measurements they were fitted on
(`latency_db.predictors`), so a prediction names its model.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from akd_base.errors import PredictorError
from akd_mobile.latency_features import CHANNEL_TILES, FEATURES, arch_features
from akd_mobile.space import ArchSpec, get_space
from latency_db.predictors import KeyedMeasurement, ModelKey, StoredModel, keyed_measurements, latest_model, save_model
from latency_db.store import LatencyDB

KIND = "ops-tile-pool-nnls-ridge/2"
MIN_ARCHS = 10  # a fit needs at least this many measured architectures
BAND_QUANTILE = 0.95
FOLDS = 5


@dataclass(frozen=True)
class LatencyModel:
    """A fitted predictor's parameters (see the module docstring).

    Attributes:
        costs: ms per unit of each FEATURES entry, then the constant ms (all >= 0).
        mean: the correction's feature means (of log1p features).
        scale: the correction's feature scales.
        ridge: the correction's coefficients, then its intercept.
        range_ms: the fastest and slowest latency it was fitted on (outside them it extrapolates).
        tile: the channel tile its features count in.
        band: relative error band.
        archs: architectures it was fitted on.
    """

    costs: tuple[float, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    ridge: tuple[float, ...]
    range_ms: tuple[float, float]
    tile: int = 1
    band: float = math.nan
    archs: int = 0

    def predict(self, archs: Sequence[ArchSpec]) -> np.ndarray:
        """Predicted latencies (ms) of `archs`."""
        return self.predict_features(features(archs, self.tile))

    def predict_features(self, x: np.ndarray) -> np.ndarray:
        """Predicted latencies (ms) of the feature rows `x` (n x len(FEATURES), at `tile`)."""
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        base = np.maximum(x @ np.array(self.costs[:-1]) + self.costs[-1], 1e-9)
        z = (np.log1p(x) - np.array(self.mean)) / np.array(self.scale)
        return base * np.exp(z @ np.array(self.ridge[:-1]) + self.ridge[-1])

    def to_json(self) -> dict[str, Any]:
        """The stored form."""
        return {"features": list(FEATURES), **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LatencyModel:
        """Read the stored form back (PredictorError for one of other features)."""
        if data.get("features") != list(FEATURES):
            raise PredictorError("this latency model was fitted on other features; fit it again (akd-mobile latency fit)")
        return cls(**{f.name: tuple(data[f.name]) if isinstance(data[f.name], list) else data[f.name]
                      for f in dataclasses.fields(cls)})


def fit_model(archs: Sequence[ArchSpec], y: np.ndarray, folds: int = FOLDS,
              tiles: Sequence[int] = CHANNEL_TILES) -> LatencyModel:
    """Fit a LatencyModel to architectures `archs` and their latencies `y` (ms): for each
    channel tile in `tiles`, a `folds`-fold cross-validation; the tile of the lowest RMSPE
    is kept, its cross-validated errors give the band.

    Raises:
        PredictorError: fewer than MIN_ARCHS architectures, or a latency that is not positive.
    """
    y = np.asarray(y, dtype=np.float64)
    if len(y) < MIN_ARCHS:
        raise PredictorError(f"a latency model needs at least {MIN_ARCHS} measured architectures, got {len(y)}; "
                             "measure more (akd-mobile latency sweep)")
    if not np.all(np.isfinite(y) & (y > 0)):
        raise PredictorError("latencies must be positive numbers of milliseconds")
    from sklearn.model_selection import KFold

    splits = list(KFold(n_splits=min(folds, len(y)), shuffle=True, random_state=0).split(y))
    best: tuple[float, int, np.ndarray, np.ndarray] | None = None
    for tile in tiles:
        x = features(archs, tile)
        relative_errors = np.empty(len(y))
        for train, test in splits:
            relative_errors[test] = y[test] / _fit(x[train], y[train], tile).predict_features(x[test]) - 1.0
        rmspe = float(np.sqrt(np.mean(relative_errors**2)))
        if best is None or rmspe < best[0]:
            best = (rmspe, tile, x, relative_errors)
    assert best is not None, "no channel tiles to try"
    _, tile, x, relative_errors = best
    band = float(np.quantile(np.abs(relative_errors), BAND_QUANTILE))
    return dataclasses.replace(_fit(x, y, tile), band=band, archs=len(y))


def _fit(x: np.ndarray, y: np.ndarray, tile: int) -> LatencyModel:
    from scipy.optimize import nnls
    from sklearn.linear_model import RidgeCV

    design = np.column_stack([x, np.ones(len(y))])
    columns = np.maximum(np.abs(design).max(axis=0), 1e-12)  # NNLS on columns of one scale
    weights, _ = nnls(design / columns / y[:, None], np.ones(len(y)))
    costs = weights / columns
    base = np.maximum(design @ costs, 1e-9)
    logs = np.log1p(x)
    mean, scale = logs.mean(axis=0), logs.std(axis=0)
    scale[scale == 0] = 1.0
    ridge = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit((logs - mean) / scale, np.log(y / base))
    return LatencyModel(tuple(costs), tuple(mean), tuple(scale), (*ridge.coef_, float(ridge.intercept_)),
                        (float(y.min()), float(y.max())), tile)


def measured_archs(measurements: list[KeyedMeasurement]) -> tuple[list[str], list[ArchSpec], list[list[float]]]:
    """Per architecture (first measured first): its key, the architecture and the median
    latency of each of its measurements, in the order of `measurements` (oldest first)."""
    by_arch: dict[str, list[KeyedMeasurement]] = {}
    for m in measurements:
        by_arch.setdefault(m.arch_key, []).append(m)
    keys = list(by_arch)
    archs = [ArchSpec.from_json(by_arch[k][0].arch_json) for k in keys]
    return keys, archs, [[m.median_ms for m in by_arch[k]] for k in keys]


def arch_latency(per_arch_ms: list[list[float]]) -> np.ndarray:
    """Each architecture's latency: the median of its measurements' medians."""
    return np.array([float(np.median(ms)) for ms in per_arch_ms])


def training_set(measurements: list[KeyedMeasurement]) -> tuple[list[str], list[ArchSpec], np.ndarray]:
    """Per architecture (first measured first): its key, the architecture and its latency
    (`arch_latency`)."""
    keys, archs, per_arch_ms = measured_archs(measurements)
    return keys, archs, arch_latency(per_arch_ms)


def features(archs: Sequence[ArchSpec], tile: int) -> np.ndarray:
    """The feature rows of `archs`, each in its own space, at channel tile `tile`."""
    rows = [arch_features(get_space(a.space, a.input_shape, a.num_classes), a, tile) for a in archs]
    return np.array(rows, dtype=np.float64).reshape(len(rows), len(FEATURES))


def fit_stored(db: LatencyDB, key: ModelKey) -> StoredModel:
    """Fit a predictor on every measurement under `key` and store it.

    Raises:
        PredictorError: too few measured architectures.
    """
    measurements = keyed_measurements(db, key)
    keys, archs, y = training_set(measurements)
    model = fit_model(archs, y)
    model_id = save_model(db, key, KIND, model.to_json(), [m.uid for m in measurements], len(keys), model.band)
    stored = latest_model(db, key)
    assert stored is not None and stored.id == model_id
    return stored


@dataclass(frozen=True)
class Prediction:
    """A predicted latency and the model that made it.

    Attributes:
        median_ms: the predicted median latency.
        band: the model's relative error band (the truth is within median_ms * (1 +- band)
            for 95% of its cross-validated predictions).
        model_id: the stored model's id.
        extrapolated: the prediction lies outside the latencies the model was fitted on.
    """

    median_ms: float
    band: float
    model_id: int
    extrapolated: bool

    @property
    def low_ms(self) -> float:
        """The fast end of the band."""
        return self.median_ms * max(0.0, 1.0 - self.band)

    @property
    def high_ms(self) -> float:
        """The slow end of the band."""
        return self.median_ms * (1.0 + self.band)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "low_ms": self.low_ms, "high_ms": self.high_ms}


class Predictor:
    """The newest stored model of a ModelKey, ready to predict architectures."""

    def __init__(self, db: LatencyDB, key: ModelKey) -> None:
        stored = latest_model(db, key)
        if stored is None:
            raise PredictorError(f"no latency model for {key.describe()}; fit one with akd-mobile latency fit")
        if stored.kind != KIND:
            raise PredictorError(f"latency model {stored.id} is a {stored.kind} model; fit it again (akd-mobile latency fit)")
        self.stored = stored
        self.model = LatencyModel.from_json(stored.model)

    def predict(self, arch: ArchSpec) -> Prediction:
        """The predicted latency of `arch`."""
        median = float(self.model.predict([arch])[0])
        low, high = self.model.range_ms
        return Prediction(median, self.stored.band, self.stored.id, not low <= median <= high)
