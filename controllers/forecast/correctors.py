"""Residual correctors: learn, per room, the heat the calibrated physics misses.

Physics first, learning second. The twin explains conduction, ventilation, the sun on the windows
it knows of and the heating; what remains (people on a schedule, cooking, a window the house file
lacks, airing in the morning) shows up as a heat gain the model did not expect. A corrector learns
that gain as a function of things known ahead (time of day, weekday or day off, outdoor temperature
and irradiance forecasts, the sun's position) and adds it to the room's internal gains ``Q_int``: the
MPC's model becomes physics + correction.

Two stages:

1. **Residual gains from history** (:func:`residual_gains`). A Kalman smoother on the twin's exact
   discrete model, augmented with one random-walk heat-gain state per room entering exactly where
   ``Q_int`` enters (the column of the one symbolic model), with the step-mean measurement model of
   :class:`pems.calibration.predict.HistoryFilter`. Forward filter, then Rauch–Tung–Striebel
   smoothing back: the smoothed gain states are the heat each room needed that the model did not
   have [W].
2. **A regressor per room** (gradient boosting) from the features to the smoothed gain.

Why it cannot make the model unstable or unphysical: the correction is an *exogenous* input computed
from forecasts and the calendar, never from the model's states, so the model's dynamics (its A
matrix, its poles) are untouched; its output is clipped to the range seen in training (widened by a
margin) and to an absolute cap per room; a non-finite feature gives zero; and a room whose
correction does not improve held-out 24 h-ahead predictions during fitting is switched off (zero).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingRegressor

from pems.calibration.predict import HistoryFilter, ahead_errors
from pems.controllers.forecast.features import calendar_features
from pems.twin.estimator import SteadyKalman, apply_gain
from pems.twin.inputs import measured_disturbances
from pems.twin.model import HouseModel
from pems.twin.solar import solar_position

#: Features of the per-room regressors, all known ahead of time.
FEATURES = ("hod_sin", "hod_cos", "hour", "weekday", "day_off", "T_out", "I_room", "I_sky",
            "sun_elevation", "sun_azimuth")


@dataclass(frozen=True)
class CorrectorSettings:
    """Settings of the residual smoother, the regressors and the safety gates.

    Attributes
    ----------
    sigma_gain_w
        Random-walk standard deviation of each room's residual gain per step [W]: how fast the
        smoother lets the unexplained heat change.
    sigma_air_k, sigma_mass_k, sigma_sensor_k
        Process noise of the air and slab nodes per step and sensor noise [K]. The air's is kept
        small so that unexplained heat goes into the gain state, not into temperature jumps.
    margin
        Predictions are clipped to the training range of the smoothed gain widened by this share.
    cap_w_per_m2
        Absolute cap on a room's correction per m² of floor [W m⁻²].
    holdout_share
        Most recent share of the history used to decide per room whether correcting helps.
    min_improvement
        A room keeps its corrector only if its held-out 24 h-ahead RMSE drops by at least this share.
    """

    sigma_gain_w: float = 25.0
    sigma_air_k: float = 0.01
    sigma_mass_k: float = 0.005
    sigma_sensor_k: float = 0.06
    margin: float = 0.2
    cap_w_per_m2: float = 40.0
    holdout_share: float = 0.25
    min_improvement: float = 0.02
    max_iter: int = 200
    learning_rate: float = 0.05
    max_leaf_nodes: int = 15
    min_samples_leaf: int = 30
    burn_in: pd.Timedelta = pd.Timedelta(days=1)  # the filter's start-up (slabs guessed), not learned from


@dataclass
class RoomCorrector:
    """One room's learned correction."""

    room: str
    model: HistGradientBoostingRegressor | None
    low_w: float
    high_w: float
    enabled: bool = True
    holdout: dict[str, float] = field(default_factory=dict)  # rmse_physics, rmse_corrected [K]


def gain_columns(model: HouseModel) -> np.ndarray:
    """∂c/∂Q_int__r for every room: how one watt of internal gain enters each state (n_x, n_rooms)."""
    from pems.twin.linear import affine_form

    form = affine_form(model)
    names = model.sym.d.names
    d0 = np.zeros((1, len(names)))
    c0 = form.c(d0)[0]
    cols = []
    for r in model.rooms:
        d = d0.copy()
        d[0, names.index(f"Q_int__{r}")] = 1.0
        cols.append(form.c(d)[0] - c0)
    return np.column_stack(cols)


def residual_gains(model: HouseModel, data: pd.DataFrame, step: pd.Timedelta,
                   settings: CorrectorSettings = CorrectorSettings()) -> pd.DataFrame:
    """The heat per room the model misses over a history [W], by Kalman smoothing.

    Parameters
    ----------
    model
        The (calibrated) house model.
    data
        History table (``T_room__*``, ``P_heat__*``, ``T_out``, ``ghi``, ... one row per step).
    step
        The history's step.

    Returns
    -------
    DataFrame
        One column per room: the smoothed residual gain of each step [W]; NaN during the first
        ``settings.burn_in``, while the filter is still finding the slabs' temperatures.
    """
    s = settings
    f = HistoryFilter(model, step)
    nr = model.n_rooms
    th = slice(0, 2 * nr)
    U, D = f.inputs(data)
    D = np.where(np.isfinite(D), D, 0.0)
    W = f.w(U, D)[:, th]
    Ad, G = f.disc.Ad[th, th], f.disc.Gamma[th, th]
    Pm, Gm = f.disc.Phi_mean[:nr, th], f.disc.Gamma_mean[:nr, th]
    Bq = gain_columns(model)[th]
    na = 3 * nr
    A = np.zeros((na, na))
    A[: 2 * nr, : 2 * nr] = Ad
    A[: 2 * nr, 2 * nr:] = G @ Bq
    A[2 * nr:, 2 * nr:] = np.eye(nr)
    C = np.hstack([Pm, Gm @ Bq])
    Q = np.diag(np.r_[np.full(nr, s.sigma_air_k), np.full(nr, s.sigma_mass_k), np.full(nr, s.sigma_gain_w)] ** 2)
    R = np.diag(np.full(nr, s.sigma_sensor_k) ** 2)
    kf = SteadyKalman.design(A, C, Q, R)
    K, J = kf.K, kf.smoother_gain  # filter gain, steady-state RTS smoother gain
    Y = data[[f"T_room__{r}" for r in model.rooms]].to_numpy(dtype=float)
    n = len(data)
    GW = W @ G.T
    MW = W @ Gm.T
    z = np.zeros(na)
    first = np.nanmean(Y[: max(1, min(n, 8))], axis=0)
    first = np.where(np.isfinite(first), first, np.nanmean(first) if np.isfinite(first).any() else 20.0)
    z[:nr], z[nr:2 * nr] = first, first
    prior, post = np.zeros((n, na)), np.zeros((n, na))
    for k in range(n):
        prior[k] = z
        z = apply_gain(z, K, Y[k] - C @ z - MW[k])
        post[k] = z
        z = A @ z
        z[: 2 * nr] += GW[k]
    smooth = post.copy()
    for k in range(n - 2, -1, -1):
        smooth[k] = post[k] + J @ (smooth[k + 1] - prior[k + 1])
    q = smooth[:, 2 * nr:].copy()
    q[: int(round(s.burn_in / step))] = np.nan
    return pd.DataFrame(q, index=data.index, columns=list(model.rooms))


def features(model: HouseModel, table: pd.DataFrame, step: pd.Timedelta, country: str | None = "CZ") -> dict[str, pd.DataFrame]:
    """Per room, the regressors' features from a disturbance table (the model's ``d`` columns:
    ``T_out``, ``I_sol__<room>``; index: step starts, UTC)."""
    tz = model.house.site.timezone
    cal = calendar_features(pd.DatetimeIndex(table.index), tz, country)
    sun = solar_position(pd.DatetimeIndex(table.index) + step / 2, model.house.site)
    irr = table[[f"I_sol__{r}" for r in model.rooms]].to_numpy(dtype=float)
    common = pd.DataFrame({
        "hod_sin": cal["hod_sin"].to_numpy(), "hod_cos": cal["hod_cos"].to_numpy(), "hour": cal["hour"].to_numpy(),
        "weekday": cal["weekday"].to_numpy(), "day_off": cal["day_off"].to_numpy(),
        "T_out": table["T_out"].to_numpy(dtype=float),
        "I_sky": irr.mean(axis=1),
        "sun_elevation": 90.0 - np.asarray(sun["apparent_zenith"], float),
        "sun_azimuth": np.asarray(sun["azimuth"], float)}, index=table.index)
    out = {}
    for i, r in enumerate(model.rooms):
        fr = common.copy()
        fr["I_room"] = irr[:, i]
        out[r] = fr[list(FEATURES)]
    return out


class ResidualCorrector:
    """Per-room learned heat gains on top of a house model.

    Use :meth:`fit` on a history, then :meth:`gains` for any disturbance table (forecast or
    history) and :meth:`correct` to add them to its ``Q_int__<room>`` columns.
    """

    role = "corrector"
    target = "Q_res"
    unit = "W"
    quantiles = (0.5,)

    def __init__(self, model: HouseModel, step: pd.Timedelta = pd.Timedelta(minutes=15),
                 settings: CorrectorSettings = CorrectorSettings(), country: str | None = "CZ") -> None:
        self.model = model
        self.step = pd.Timedelta(step)
        self.settings = settings
        self.country = country
        self.rooms: dict[str, RoomCorrector] = {}
        self.trained_on: dict[str, str] = {}

    # ------------------------------------------------------------------ learning
    def _regressor(self) -> HistGradientBoostingRegressor:
        s = self.settings
        return HistGradientBoostingRegressor(max_iter=s.max_iter, learning_rate=s.learning_rate,
                                             max_leaf_nodes=s.max_leaf_nodes, min_samples_leaf=s.min_samples_leaf,
                                             l2_regularization=1.0, random_state=0)

    def _fit_rooms(self, data: pd.DataFrame) -> dict[str, RoomCorrector]:
        m, s = self.model, self.settings
        q = residual_gains(m, data, self.step, s)
        X = features(m, measured_disturbances(m.house, data, self.step), self.step, self.country)
        out = {}
        for r in m.rooms:
            y = q[r].to_numpy()
            x = X[r].to_numpy(dtype=float)
            ok = np.isfinite(y) & np.isfinite(x).all(axis=1)
            cap = s.cap_w_per_m2 * float(m.house.room(r).floor_area_m2)
            if ok.sum() < 100:
                out[r] = RoomCorrector(r, None, 0.0, 0.0, enabled=False)
                continue
            lo, hi = np.quantile(y[ok], [0.005, 0.995])
            span = hi - lo
            low, high = max(lo - s.margin * span, -cap), min(hi + s.margin * span, cap)
            out[r] = RoomCorrector(r, self._regressor().fit(x[ok], y[ok]), float(low), float(high))
        return out

    def fit(self, history: pd.DataFrame) -> ResidualCorrector:
        """Learn every room's correction; rooms where it does not help on held-out data stay off."""
        s = self.settings
        data = history.sort_index()
        n = len(data)
        cut = int(n * (1 - s.holdout_share))
        day = int(round(pd.Timedelta(days=1) / self.step))
        gate = {}
        if n - cut >= 2 * day and cut >= 7 * day:
            trial = self._fit_rooms(data.iloc[:cut])
            self.rooms = trial
            start = data.index[cut]
            phys = ahead_errors(self.model, data, self.step, start=start)
            corr = ahead_errors(self.model, data, self.step, start=start, gains=self.gains_for_history(data))
            for r in self.model.rooms:
                a = float(np.sqrt(np.nanmean(phys[r].to_numpy() ** 2)))
                b = float(np.sqrt(np.nanmean(corr[r].to_numpy() ** 2)))
                gate[r] = {"rmse_physics": a, "rmse_corrected": b,
                           "enabled": bool(trial[r].model is not None and b <= a * (1 - s.min_improvement))}
        self.rooms = self._fit_rooms(data)
        for r, g in gate.items():
            self.rooms[r].enabled = self.rooms[r].enabled and g["enabled"]
            self.rooms[r].holdout = {k: v for k, v in g.items() if k != "enabled"}
        self.trained_on = {"start": str(data.index[0]), "end": str(data.index[-1]), "rows": str(n),
                           "sha256": data_hash(data)}
        return self

    # ------------------------------------------------------------------ use
    def gains(self, table: pd.DataFrame) -> pd.DataFrame:
        """The correction per room [W] for a disturbance table (``T_out``, ``I_sol__*``, UTC index);
        bounded, zero where a room is off or a feature is not finite."""
        out = pd.DataFrame(0.0, index=table.index, columns=list(self.model.rooms))
        if not self.rooms or len(table) == 0:
            return out
        X = features(self.model, table, self.step, self.country)
        for r, rc in self.rooms.items():
            if not rc.enabled or rc.model is None:
                continue
            x = X[r].to_numpy(dtype=float)
            ok = np.isfinite(x).all(axis=1)
            v = np.zeros(len(x))
            if ok.any():
                v[ok] = np.clip(rc.model.predict(x[ok]), rc.low_w, rc.high_w)
            out[r] = np.where(np.isfinite(v), v, 0.0)
        return out

    def gains_for_history(self, data: pd.DataFrame) -> pd.DataFrame:
        """:meth:`gains` for a history table (its disturbances computed from the measurements)."""
        return self.gains(measured_disturbances(self.model.house, data, self.step))

    def correct(self, table: pd.DataFrame) -> pd.DataFrame:
        """A copy of a disturbance table with the corrections added to ``Q_int__<room>``."""
        g = self.gains(table)
        out = table.copy()
        for r in g.columns:
            out[f"Q_int__{r}"] = out[f"Q_int__{r}"].to_numpy() + g[r].to_numpy()
        return out

    # The CasADi model is rebuilt from the house on load: a stored corrector carries its house file's
    # content (calibrated parameters included), not compiled symbolic objects.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["model"] = self.model.house.model_dump_json()
        return state

    def __setstate__(self, state: dict) -> None:
        from pems.twin.house import House
        from pems.twin.model import build_model

        state = dict(state)
        house = House.model_validate_json(state.pop("model"))
        state["model"] = build_model(house)
        self.__dict__.update(state)

    def describe(self) -> dict:
        return {"features": list(FEATURES), "settings": self.settings.__dict__,
                "rooms": {r: {"enabled": rc.enabled, "low_w": rc.low_w, "high_w": rc.high_w, **rc.holdout}
                          for r, rc in self.rooms.items()},
                "house": self.model.house.name, "trained_on": self.trained_on}


def data_hash(data: pd.DataFrame) -> str:
    """A short content hash of a table (index and values), to tie a model to its training data."""
    h = hashlib.sha256()
    h.update(np.asarray(data.index.asi8).tobytes())
    h.update(",".join(map(str, data.columns)).encode())
    h.update(np.ascontiguousarray(data.to_numpy(dtype=float, na_value=np.nan)).tobytes())
    return h.hexdigest()[:16]
