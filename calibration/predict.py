"""Predictions from history: estimate the full state (hidden slabs too), then predict ahead.

:class:`HistoryFilter` runs a Kalman filter of the whole house over a history, with the measurement
model a history actually has: each ``T_room`` value is the *mean* over its step, which the exact
discretisation gives as ``Φ̄ x + Γ̄ w``. Predictions then run the same exact model open-loop from
the filtered state with the measured inputs (heating, weather): what ``pems predict`` writes and
what the validation metrics score. The filter at step ``k`` has used measurements up to ``k − 1``
only, so a prediction from ``k`` never sees the data it is scored on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pems.twin.estimator import NoiseModel, SteadyKalman, apply_gain
from pems.twin.inputs import measured_disturbances
from pems.twin.linear import affine_form, zoh
from pems.twin.model import HouseModel


@dataclass
class Filtered:
    """The filter's run over a history."""

    x_prior: np.ndarray  # (N, n_x): state at each step's start from measurements before it
    y_pred: np.ndarray  # (N, n_rooms): one-step-ahead prediction of each step's mean air temperature
    W: np.ndarray  # (N, n_x): Γ-free input term w = B u + c of every step
    index: pd.DatetimeIndex


class HistoryFilter:
    """Kalman filter and open-loop predictor of a house model on a measured history."""

    def __init__(self, model: HouseModel, step: pd.Timedelta, noise: NoiseModel = NoiseModel()) -> None:
        self.model, self.step = model, step
        self.form = affine_form(model)
        self.disc = zoh(self.form.A, step.total_seconds())
        nr = model.n_rooms
        n = len(model.sym.x)
        self.rows = np.r_[model.air]  # measured states: the rooms' air
        self.Cm = self.disc.Phi_mean[:nr, :]  # step mean of the air from the state at the step's start
        self.Dm = self.disc.Gamma_mean[:nr, :]
        # The gain is computed for the thermal states (2 per room); a battery's SOC is not measured
        # here and simply follows the logged battery power.
        th = slice(0, 2 * nr)
        A, C = self.disc.Ad[th, th], self.Cm[:, th]
        q = np.r_[np.full(nr, noise.air_k), np.full(nr, noise.mass_k)] ** 2
        r = np.full(nr, noise.sensor_k) ** 2
        self.K = np.zeros((n, nr))
        self.K[th] = SteadyKalman.design(A, C, np.diag(q), np.diag(r)).predictor_gain  # one-step predictor gain

    def inputs(self, data: pd.DataFrame, gains: pd.DataFrame | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(U [W], D) per step from a history table (missing heating counts as off).

        ``gains``: extra heat per room [W] (columns: room ids) added to the internal gains, e.g. a
        residual corrector's output.
        """
        m = self.model
        table = measured_disturbances(m.house, data, self.step)
        if gains is not None:
            for r in gains.columns:
                table[f"Q_int__{r}"] = table[f"Q_int__{r}"].to_numpy() + gains[r].reindex(table.index).fillna(0.0).to_numpy()
        D = table[list(m.sym.d.names)].to_numpy(dtype=float)
        U = np.zeros((len(data), len(m.sym.u)))
        for i, r in enumerate(m.rooms):
            col = f"P_heat__{r}"
            if col in data:
                U[:, i] = data[col].fillna(0.0).to_numpy()
        if m.has_battery and "P_bat" in data:
            pb = data["P_bat"].fillna(0.0).to_numpy()
            U[:, m.sym.u.index("P_ch")] = np.clip(pb, 0, None)
            U[:, m.sym.u.index("P_dis")] = np.clip(-pb, 0, None)
        return U, D

    def w(self, U: np.ndarray, D: np.ndarray) -> np.ndarray:
        """w = B(d) u + c(d) for every step (N, n_x)."""
        c = self.form.c(D)
        if self.form.B_depends_on_d:
            return c + np.einsum("kij,kj->ki", self.form.B(D), U)
        return c + U @ self.form.B(D[:1])[0].T

    def run(self, data: pd.DataFrame, gains: pd.DataFrame | None = None) -> Filtered:
        """Filter over the whole history; NaN temperatures are skipped (no correction).
        ``gains``: extra heat per room [W] (see :meth:`inputs`)."""
        m = self.model
        U, D = self.inputs(data, gains)
        D = np.where(np.isfinite(D), D, 0.0)
        W = self.w(U, D)
        Y = data[[f"T_room__{r}" for r in m.rooms]].to_numpy(dtype=float)
        n = len(data)
        x = np.zeros(len(m.sym.x))
        first = np.nanmean(Y[: max(1, min(n, 8))], axis=0)
        first = np.where(np.isfinite(first), first, np.nanmean(first) if np.isfinite(first).any() else 20.0)
        x[m.air], x[m.mass] = first, first
        if m.has_battery:
            x[m.i_soc] = float(data["soc"].dropna().iloc[0]) if "soc" in data and data["soc"].notna().any() else 0.5
        Ad, G = self.disc.Ad, self.disc.Gamma
        xs, yp = np.zeros((n, len(x))), np.zeros((n, m.n_rooms))
        GW = W @ G.T
        DmW = W @ self.Dm.T
        for k in range(n):
            xs[k] = x
            y_hat = self.Cm @ x + DmW[k]
            yp[k] = y_hat
            x = apply_gain(Ad @ x + GW[k], self.K, Y[k] - y_hat)
        return Filtered(xs, yp, W, pd.DatetimeIndex(data.index))

    def simulate(self, x0: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Open loop from ``x0`` over the steps of ``W``: (step-mean states, end states)."""
        Ad, G, Pm, Gm = self.disc.Ad, self.disc.Gamma, self.disc.Phi_mean, self.disc.Gamma_mean
        n = len(W)
        means, ends = np.zeros((n, len(x0))), np.zeros((n, len(x0)))
        x = x0.copy()
        for k in range(n):
            means[k] = Pm @ x + Gm @ W[k]
            x = Ad @ x + G @ W[k]
            ends[k] = x
        return means, ends


@dataclass
class DayAhead:
    """24 h-ahead predictions from each local midnight of some steps (what validation scores)."""

    starts: list[int]  # row of each midnight
    predicted: np.ndarray  # (days, steps per day, n_rooms): step-mean air temperatures [°C]
    measured: np.ndarray  # (days, steps per day, n_rooms) [°C]


def day_ahead(f: HistoryFilter, filt: Filtered, data: pd.DataFrame, steps: np.ndarray) -> DayAhead:
    """From the filtered state at every local midnight among ``steps`` (a boolean mask of rows) with a
    whole day after it, the open-loop prediction of the day with the measured inputs."""
    m = f.model
    day = int(round(pd.Timedelta(days=1) / f.step))
    local = data.index.tz_convert(m.house.site.timezone)
    starts = [k for k in np.flatnonzero(steps) if local[k].hour == 0 and local[k].minute == 0 and k + day <= len(data)]
    Y = data[[f"T_room__{r}" for r in m.rooms]].to_numpy(dtype=float)
    pred = np.zeros((len(starts), day, m.n_rooms))
    for j, k in enumerate(starts):
        pred[j] = f.simulate(filt.x_prior[k], filt.W[k:k + day])[0][:, : m.n_rooms]
    meas = np.array([Y[k:k + day] for k in starts]).reshape(len(starts), day, m.n_rooms)
    return DayAhead(starts, pred, meas)


def predict_ahead(model: HouseModel, data: pd.DataFrame, step: pd.Timedelta, start: pd.Timestamp,
                  hours: float) -> pd.DataFrame:
    """Estimate the state from ``data`` before ``start``, then predict ``hours`` ahead from the
    measured inputs: one row per step, ``T_room__<room>`` (and hidden ``T_mass__<room>``) [°C]."""
    f = HistoryFilter(model, step)
    filt = f.run(data)
    k = int(np.searchsorted(filt.index, start))
    n = int(round(pd.Timedelta(hours=hours) / step))
    if k >= len(filt.index) or k + n > len(filt.index):
        raise ValueError("the history does not cover the prediction period")
    means, _ = f.simulate(filt.x_prior[k], filt.W[k:k + n])
    out = pd.DataFrame(index=filt.index[k:k + n])
    for i, r in enumerate(model.rooms):
        out[f"T_room__{r}"] = means[:, i]
    for i, r in enumerate(model.rooms):
        out[f"T_mass__{r}"] = means[:, model.n_rooms + i]
    return out


def ahead_errors(model: HouseModel, data: pd.DataFrame, step: pd.Timedelta, hours: float = 24.0,
                 every: pd.Timedelta = pd.Timedelta(hours=6), start: pd.Timestamp | None = None,
                 gains: pd.DataFrame | None = None) -> pd.DataFrame:
    """Errors (predicted − measured) of open-loop predictions ``hours`` ahead from every origin
    ``every`` apart at or after ``start``: one row per (origin, step), one column per room [K].

    The filter before each origin uses measurements before it only; ``gains`` [W per room] are
    added to the internal gains in filter and prediction alike (physics + correction).
    """
    f = HistoryFilter(model, step)
    filt = f.run(data, gains)
    n = int(round(pd.Timedelta(hours=hours) / step))
    stride = max(1, int(round(every / step)))
    k0 = 0 if start is None else int(np.searchsorted(filt.index, pd.Timestamp(start)))
    Y = data[[f"T_room__{r}" for r in model.rooms]].to_numpy(dtype=float)
    frames = []
    for k in range(k0, len(filt.index) - n + 1, stride):
        means, _ = f.simulate(filt.x_prior[k], filt.W[k:k + n])
        e = means[:, : model.n_rooms] - Y[k:k + n]
        fr = pd.DataFrame(e, columns=list(model.rooms), index=filt.index[k:k + n])
        fr.insert(0, "origin", filt.index[k])
        frames.append(fr)
    if not frames:
        raise ValueError("the history is too short for one prediction after the start")
    return pd.concat(frames)
