"""State estimation: a Kalman filter on the twin's own exact discrete model.

A real home measures its room air temperatures and the battery's SOC, not the temperature inside
its floor slabs. The filter reconstructs the hidden slab temperatures from how the rooms respond to
the heating that was applied. It predicts with the exact zero-order-hold discretisation of the one
symbolic model (:mod:`pems.twin.linear`) and corrects with a steady-state gain from the discrete
Riccati equation (the model is time-invariant in its states, so the gain is computed once). The
MPC uses it every step; calibration and ``pems predict`` use it to start predictions from the
history.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import solve_discrete_are

from pems.twin.linear import affine_form, zoh
from pems.twin.model import HouseModel


@dataclass(frozen=True)
class NoiseModel:
    """Standard deviations per step (process) and per measurement."""

    air_k: float = 0.05  # unmodelled heat on the air node, per step [K]
    mass_k: float = 0.02  # ... on the mass node [K]
    soc: float = 0.002  # [-]
    sensor_k: float = 0.1  # room sensor noise and 0.1 K quantisation [K]
    sensor_soc: float = 0.01  # [-]


def apply_gain(x: np.ndarray, K: np.ndarray, innov: np.ndarray) -> np.ndarray:
    """``x + K innov``, skipping the measurements that are missing (NaN innovations): a sensor that
    drops out leaves the others' correction (the steady gain restricted to them)."""
    ok = np.isfinite(innov)
    if ok.all():
        return x + K @ innov
    if ok.any():
        return x + K[:, ok] @ innov[ok]
    return x


@dataclass(frozen=True)
class SteadyKalman:
    """The one steady-state Kalman filter of every estimator here: ``x⁺ = A x + …``, ``y = C x + … + v``.

    The twin is time-invariant in its states, so the discrete Riccati equation is solved once
    (:meth:`design`) and every gain derives from its solution: the live loop's estimator
    (:class:`KalmanEstimator`), the history filter of calibration and ``pems predict``
    (:class:`~pems.calibration.predict.HistoryFilter`) and the residual correctors' smoother
    (:func:`~pems.controllers.forecast.correctors.residual_gains`).

    Attributes
    ----------
    A, C
        State transition and measurement matrices.
    P
        Steady-state prior (predicted) covariance.
    S
        Innovation covariance ``C P Cᵀ + R``.
    K
        Update gain ``P Cᵀ S⁻¹`` (corrects a predicted state with its measurement).
    """

    A: np.ndarray
    C: np.ndarray
    P: np.ndarray
    S: np.ndarray
    K: np.ndarray

    @classmethod
    def design(cls, A: np.ndarray, C: np.ndarray, Q: np.ndarray, R: np.ndarray) -> SteadyKalman:
        """The steady-state filter for process noise covariance ``Q`` and measurement noise ``R``."""
        P = solve_discrete_are(A.T, C.T, Q, R)
        S = C @ P @ C.T + R
        return cls(A, C, P, S, P @ C.T @ np.linalg.inv(S))

    @property
    def predictor_gain(self) -> np.ndarray:
        """``A K``: the one-step predictor's gain (from the prior at k to the prior at k + 1)."""
        return self.A @ self.K

    @property
    def posterior(self) -> np.ndarray:
        """Steady-state posterior (filtered) covariance ``(I − K C) P``."""
        return (np.eye(len(self.P)) - self.K @ self.C) @ self.P

    @property
    def smoother_gain(self) -> np.ndarray:
        """Steady-state Rauch–Tung–Striebel smoother gain ``P⁺ Aᵀ P⁻¹``."""
        return self.posterior @ self.A.T @ np.linalg.inv(self.P)


class KalmanEstimator:
    """Steady-state Kalman filter for ``x⁺ = Ad x + Γ (B(d) u + c(d))``, ``y = [T_air; soc]``."""

    def __init__(self, model: HouseModel, step_s: float, noise: NoiseModel = NoiseModel()) -> None:
        self.model = model
        self.form = affine_form(model)
        self.disc = zoh(self.form.A, step_s)
        n, nr = len(model.sym.x), model.n_rooms
        nb, nc = (1 if model.has_battery else 0), len(model.cars)
        self.C = np.zeros((nr + nb + nc, n))
        self.C[:nr, :nr] = np.eye(nr)
        if model.has_battery:
            self.C[nr, model.i_soc] = 1.0
        for j, i in enumerate(model.i_ev_soc):  # each car reports its own state of charge
            self.C[nr + nb + j, i] = 1.0
        q = np.r_[np.full(nr, noise.air_k), np.full(nr, noise.mass_k)] ** 2
        if model.has_battery:
            q = np.r_[q, noise.soc**2]
        q = np.r_[q, np.full(nc, noise.soc**2)]
        r = np.r_[np.full(nr, noise.sensor_k), [noise.sensor_soc] if model.has_battery else [],
                  np.full(nc, noise.sensor_soc)] ** 2
        self.filter = SteadyKalman.design(self.disc.Ad, self.C, np.diag(q), np.diag(r))
        self.K = self.filter.K  # update gain for the predicted state
        self.x: np.ndarray | None = None

    def measurement(self, T_room: np.ndarray, soc: float | None, ev_soc: np.ndarray | None = None) -> np.ndarray:
        """``y``: the rooms' air, the battery's SOC, each car's SOC (NaN where not known: skipped)."""
        cars = np.full(len(self.model.cars), np.nan) if ev_soc is None else np.asarray(ev_soc, dtype=float)
        return np.r_[T_room, [soc if soc is not None else np.nan] if self.model.has_battery else [], cars]

    def reset(self, x0: np.ndarray) -> None:
        """Start from a guess of the full state."""
        self.x = np.asarray(x0, dtype=float).copy()

    def initial_guess(self, T_room: np.ndarray, soc: float | None, ev_soc: np.ndarray | None = None) -> np.ndarray:
        """A guess from measurements only: each slab at its room's air temperature, each car as it
        reports itself (at its target when it does not)."""
        m = self.model
        x = np.zeros(len(m.sym.x))
        x[m.air] = T_room
        x[m.mass] = T_room
        if m.has_battery:
            x[m.i_soc] = 0.5 if soc is None else soc
        for j, (car, i) in enumerate(zip(m.house.ev, m.i_ev_soc)):
            seen = np.nan if ev_soc is None else float(ev_soc[j])
            x[i] = seen if np.isfinite(seen) else car.target_soc
        return x

    def step_input(self, u_w: np.ndarray, d: np.ndarray) -> np.ndarray:
        """Γ (B(d) u + c(d)) for one step."""
        B = self.form.B(d[None, :])[0]
        c = self.form.c(d[None, :])[0]
        return self.disc.Gamma @ (B @ u_w + c)

    def predict(self, u_w: np.ndarray, d: np.ndarray) -> np.ndarray:
        """Propagate over one step with the applied inputs ``u_w`` [W] and disturbances ``d``."""
        self.x = self.disc.Ad @ self.x + self.step_input(u_w, d)
        return self.x

    def correct(self, y: np.ndarray) -> np.ndarray:
        """Correct with the measurements ``y`` (air temperatures, SOC, the cars' SOC); NaN entries are
        skipped. A car's own SOC is taken as it reports it: the car measures its battery far better
        than its trips are known (a trip longer than planned must not take hours to be believed)."""
        self.x = apply_gain(self.x, self.K, y - self.C @ self.x)
        cars = y[len(y) - len(self.model.cars):] if self.model.cars else y[:0]
        for i, v in zip(self.model.i_ev_soc, cars):
            if np.isfinite(v):
                self.x[i] = v
        return self.x
