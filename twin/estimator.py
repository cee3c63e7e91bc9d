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


class KalmanEstimator:
    """Steady-state Kalman filter for ``x⁺ = Ad x + Γ (B(d) u + c(d))``, ``y = [T_air; soc]``."""

    def __init__(self, model: HouseModel, step_s: float, noise: NoiseModel = NoiseModel()) -> None:
        self.model = model
        self.form = affine_form(model)
        self.disc = zoh(self.form.A, step_s)
        n, nr = len(model.sym.x), model.n_rooms
        self.C = np.zeros((nr + (1 if model.has_battery else 0), n))
        self.C[:nr, :nr] = np.eye(nr)
        if model.has_battery:
            self.C[nr, model.i_soc] = 1.0
        q = np.r_[np.full(nr, noise.air_k), np.full(nr, noise.mass_k)] ** 2
        if model.has_battery:
            q = np.r_[q, noise.soc**2]
        r = np.r_[np.full(nr, noise.sensor_k), [noise.sensor_soc] if model.has_battery else []] ** 2
        P = solve_discrete_are(self.disc.Ad.T, self.C.T, np.diag(q), np.diag(r))
        S = self.C @ P @ self.C.T + np.diag(r)
        self.K = P @ self.C.T @ np.linalg.inv(S)  # update gain for the predicted state
        self.x: np.ndarray | None = None

    def measurement(self, T_room: np.ndarray, soc: float | None) -> np.ndarray:
        return np.r_[T_room, [soc] if self.model.has_battery else []]

    def reset(self, x0: np.ndarray) -> None:
        """Start from a guess of the full state."""
        self.x = np.asarray(x0, dtype=float).copy()

    def initial_guess(self, T_room: np.ndarray, soc: float | None) -> np.ndarray:
        """A guess from measurements only: each slab at its room's air temperature."""
        m = self.model
        x = np.zeros(len(m.sym.x))
        x[m.air] = T_room
        x[m.mass] = T_room
        if m.has_battery:
            x[m.i_soc] = 0.5 if soc is None else soc
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
        """Correct with the measurements ``y`` (air temperatures, SOC); NaN entries are skipped."""
        innov = y - self.C @ self.x
        ok = np.isfinite(innov)
        if ok.all():
            self.x = self.x + self.K @ innov
        elif ok.any():  # a missing sensor: use the others (steady gain restricted to them)
            self.x = self.x + self.K[:, ok] @ innov[ok]
        return self.x
