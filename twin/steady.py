"""Steady states of the thermal network, from the model's own affine form.

Used to start a run from a settled house (slab temperatures consistent with the heating that holds
each room at its target) instead of an arbitrary guess, and by tests as the analytic reference.
"""

from __future__ import annotations

import numpy as np

from pems.twin.linear import affine_form
from pems.twin.model import HouseModel


def steady_state(model: HouseModel, d: np.ndarray, T_target: np.ndarray,
                 soc: float | None = None, max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """The steady state with constant disturbances ``d`` where heaters hold rooms at ``T_target``.

    A room whose heater would have to be negative (it is warm enough from its neighbours or the
    sun) floats unheated above its target; one whose heater would exceed its rating runs at the
    rating and floats below. This is an active-set solve of the linear balance ``A x + B u + c = 0``.

    Returns
    -------
    x
        State in model order (``soc`` set to ``soc``, or the middle of its band) [°C, -].
    u_heat
        Heater powers holding that state [W].
    """
    n = model.n_rooms
    form = affine_form(model)
    A = form.A[:2 * n, :2 * n]
    Bh = form.B(d[None, :])[0][:2 * n, model.heat]
    c = form.c(d[None, :])[0][:2 * n]
    rating = model.u_max[model.heat]
    target = np.asarray(T_target, dtype=float)
    held = rating > 0  # rooms whose air is held at target (heater free)
    u_fixed = np.zeros(n)  # heater power of the floating rooms
    for _ in range(max_iter):
        air_idx, mass_idx = np.arange(n), np.arange(n, 2 * n)
        M = np.hstack([A[:, mass_idx], A[:, air_idx[~held]], Bh[:, held]])
        rhs = -c - A[:, air_idx[held]] @ target[held] - Bh[:, ~held] @ u_fixed[~held]
        sol = np.linalg.solve(M, rhs)
        T_mass = sol[:n]
        T_air = target.copy()
        T_air[~held] = sol[n:n + (~held).sum()]
        u = u_fixed.copy()
        u[held] = sol[n + (~held).sum():]
        changed = False
        for i in range(n):
            if held[i] and u[i] < -1e-9:
                held[i], u_fixed[i], changed = False, 0.0, True
            elif held[i] and u[i] > rating[i] + 1e-9:
                held[i], u_fixed[i], changed = False, rating[i], True
            elif not held[i] and rating[i] > 0 and (
                    (u_fixed[i] == 0.0 and T_air[i] < target[i] - 1e-9)
                    or (u_fixed[i] == rating[i] and T_air[i] > target[i] + 1e-9)):
                held[i], changed = True, True
        if not changed:
            break
    x = np.zeros(len(model.sym.x))
    x[model.air], x[model.mass] = T_air, T_mass
    if model.has_battery:
        lim = model.limits
        x[model.i_soc] = soc if soc is not None else 0.5 * (lim.soc_min + lim.soc_max)
    return x, np.clip(u, 0.0, rating)
