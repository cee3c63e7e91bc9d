"""Economic nonlinear MPC with do-mpc, built from the twin's one symbolic model.

Every control step the controller estimates the full state (Kalman filter: the slabs are not
measured), hands the forecasts to do-mpc as time-varying parameters and solves the economic OCP of
:mod:`pems.controllers.ocp` over its horizon with IPOPT: energy cost with import and export split
exactly, an exact L1 penalty on leaving each room's comfort band, battery wear, an optional peak
penalty, and the value of energy left in the battery and the building at the horizon's end. Heater
powers are continuous; the plant realises them as relay duty cycles. do-mpc warm-starts each solve
from the previous solution.

When the solve fails (IPOPT does not converge, a forecast holds NaN, the state estimate is not
finite) the controller falls back to the rule-based action for that step and logs the reason in
:attr:`EconomicMPC.events`.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pems.controllers.estimator import KalmanEstimator, NoiseModel
from pems.controllers.ocp import (StageParameters, Weights, decision_variables, discretise, stage,
                                  terminal_prices, terminal_value)
from pems.controllers.rule_based import RuleBasedController
from pems.twin.model import HouseModel
from pems.twin.signals import Action, Forecast, Observation

log = logging.getLogger(__name__)

#: IPOPT settings measured on this project's problems (see bench/test_mpc.py): the OCP is an LP
#: for electric heating, where Mehrotra's predictor-corrector converges in ~20 iterations.
IPOPT_OPTIONS = {
    "ipopt.mehrotra_algorithm": "yes",
    "ipopt.mumps_pivot_order": 2,  # AMF: fastest of MUMPS' orderings here (1.5 s against 2.0 s)
    "ipopt.max_iter": 500,
    "ipopt.tol": 1e-6,
    "ipopt.print_level": 0,
    "ipopt.sb": "yes",
    "print_time": 0,
}
ACCEPTED = {"Solve_Succeeded", "Solved_To_Acceptable_Level"}


@dataclass(frozen=True)
class MpcConfig:
    """Settings of the economic MPC (documented defaults)."""

    horizon_hours: float = 24.0
    weights: Weights = field(default_factory=Weights)
    noise: NoiseModel = field(default_factory=NoiseModel)
    ipopt: dict = field(default_factory=lambda: dict(IPOPT_OPTIONS))
    use_true_state: bool = False  # skip the estimator where the plant offers its true state
    scheme: str = "trapezoidal"  # OCP dynamics: "trapezoidal" (sparse, implicit) or "zoh" (exact, dense)


class EconomicMPC:
    """The ``mpc`` controller."""

    name = "mpc"

    def __init__(self, model: HouseModel, step_s: float = 900.0, config: MpcConfig | None = None) -> None:
        self.model = model
        self.step_s = float(step_s)
        self.config = config or MpcConfig()
        self.privileged = self.config.use_true_state
        self.N = int(round(self.config.horizon_hours * 3600 / self.step_s))
        self.dm = discretise(model, self.step_s)
        self.vars = decision_variables(model, self.config.weights)
        self.fallback = RuleBasedController(model)
        self.estimator = KalmanEstimator(model, self.step_s, self.config.noise)
        self.events: list[dict] = []
        self.solve_s: list[float] = []
        self._fc: Forecast | None = None
        self._build()

    # ------------------------------------------------------------------ do-mpc set-up
    def _build(self) -> None:
        with warnings.catch_warnings():
            # do-mpc announces its optional extras (ONNX, OPC UA, PyTorch) and that no input-rate
            # penalty is set (on purpose: relays, not valves), and calls numpy on casadi values,
            # which casadi 3.8 flags; none of it concerns this controller.
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", FutureWarning)
            self._build_do_mpc()

    def _build_do_mpc(self) -> None:
        import do_mpc

        m, dm, w, v = self.model, self.dm, self.config.weights, self.vars
        nx, nr, nd = len(m.sym.x), m.n_rooms, len(m.sym.d)
        mod = do_mpc.model.Model("discrete", "SX")
        x = mod.set_variable("_x", "x", shape=(nx, 1))
        z = mod.set_variable("_u", "z", shape=(len(v.names), 1))
        implicit = self.config.scheme == "trapezoidal"
        xn = mod.set_variable("_z", "x_next", shape=(nx, 1)) if implicit else None
        d = mod.set_variable("_tvp", "d", shape=(nd, 1))
        pi = mod.set_variable("_tvp", "price_import")
        pe = mod.set_variable("_tvp", "price_export")
        lo = mod.set_variable("_tvp", "low", shape=(nr, 1))
        hi = mod.set_variable("_tvp", "high", shape=(nr, 1))
        v_el = mod.set_variable("_tvp", "value_electricity")
        v_heat = mod.set_variable("_tvp", "value_heat")
        cost, g, dyn = stage(dm, w, v, x, z, StageParameters(d, pi, pe, lo, hi), x_next=xn)
        mod.set_expression("cost", cost)
        mod.set_expression("g", g)
        mod.set_expression("terminal", -terminal_value(dm, x, v_el, v_heat, w))
        if implicit:
            mod.set_alg("dynamics", dyn)
            mod.set_rhs("x", xn)
        else:
            mod.set_rhs("x", dyn)
        mod.setup()

        mpc = do_mpc.controller.MPC(mod)
        s = mpc.settings
        s.n_horizon = self.N
        s.t_step = self.step_s
        s.store_full_solution = False
        s.store_lagr_multiplier = False
        s.use_terminal_bounds = True
        s.nlpsol_opts = dict(self.config.ipopt)
        # Symbols are re-read after setup (do-mpc rebuilds its structures there).
        mpc.set_objective(lterm=mod.aux["cost"], mterm=mod.aux["terminal"])
        mpc.bounds["lower", "_u", "z"] = v.lb
        mpc.bounds["upper", "_u", "z"] = np.where(np.isfinite(v.ub), v.ub, 1e6)
        if m.has_battery:
            xl, xu = np.full(nx, -1e3), np.full(nx, 1e3)
            b = m.house.battery
            xl[m.i_soc], xu[m.i_soc] = b.soc_min, b.soc_max
            mpc.bounds["lower", "_x", "x"] = xl
            mpc.bounds["upper", "_x", "x"] = xu
        mpc.set_nl_cons("g", mod.aux["g"], ub=0.0)
        self._tvp = mpc.get_tvp_template()
        mpc.set_tvp_fun(lambda t_now: self._tvp)
        mpc.setup()
        self.mpc = mpc

    # ------------------------------------------------------------------ protocol
    def reset(self) -> None:
        self.fallback.reset()
        self.estimator.x = None
        self.events = []
        self.solve_s = []
        self._last_d: np.ndarray | None = None
        self._first = True

    def _estimate(self, obs: Observation, fc: Forecast) -> np.ndarray:
        if self.config.use_true_state and "x_true" in fc.extras:
            return np.asarray(fc.extras["x_true"], dtype=float)
        est, m = self.estimator, self.model
        if est.x is None or self._last_d is None:
            est.reset(est.initial_guess(obs.T_room, obs.soc))
        else:
            u = np.zeros(len(m.sym.u))
            u[m.heat] = obs.P_heat if obs.P_heat is not None else 0.0
            if m.has_battery:
                u[m.sym.u.index("P_ch")] = max(obs.P_bat, 0.0)
                u[m.sym.u.index("P_dis")] = max(-obs.P_bat, 0.0)
            d = self._last_d.copy()
            names = m.sym.d.names
            d[names.index("T_out")] = obs.T_out
            d[names.index("P_pv")] = obs.P_pv
            d[names.index("P_load")] = obs.P_load
            est.predict(u, d)
        return est.correct(est.measurement(obs.T_room, obs.soc))

    def _fill_tvp(self, fc: Forecast) -> None:
        n = self.N + 1
        idx = np.minimum(np.arange(n), len(fc) - 1)  # past the data's end: hold the last row
        t = self._tvp
        for k in range(n):
            j = idx[k]
            t["_tvp", k, "d"] = fc.d[j]
            t["_tvp", k, "price_import"] = fc.price_import[j]
            t["_tvp", k, "price_export"] = fc.price_export[j]
            t["_tvp", k, "low"] = fc.low[j]
            t["_tvp", k, "high"] = fc.high[j]
        p_el, p_heat = terminal_prices(self.dm, fc.price_import[idx], fc.d[idx])
        t["_tvp", n - 1, "value_electricity"] = p_el
        t["_tvp", n - 1, "value_heat"] = p_heat

    def act(self, observation: Observation, forecast: Forecast) -> Action:
        bad = [n for n, ok in zip(forecast.d_names, np.isfinite(forecast.d).all(axis=0)) if not ok]
        if not np.isfinite(forecast.price_import).all() or not np.isfinite(forecast.price_export).all():
            bad.append("prices")
        if bad:
            return self._fall_back(observation, forecast, f"forecast contains NaN/inf in {bad[:4]}")
        try:
            x0 = self._estimate(observation, forecast)
        except Exception as exc:  # noqa: BLE001 - any estimator failure means: no trustworthy state
            return self._fall_back(observation, forecast, f"state estimate failed: {exc}")
        self._last_d = forecast.d[0].copy()
        if not np.isfinite(x0).all():
            self.estimator.x = None
            return self._fall_back(observation, forecast, "state estimate is not finite")
        self._fill_tvp(forecast)
        mpc = self.mpc
        if self._first:
            mpc.x0 = x0
            mpc.set_initial_guess()
            self._first = False
        t0 = time.perf_counter()
        try:
            z = np.asarray(mpc.make_step(x0.reshape(-1, 1))).ravel()
        except Exception as exc:  # noqa: BLE001 - do-mpc/CasADi raise plain RuntimeErrors
            return self._fall_back(observation, forecast, f"solver error: {exc}")
        self.solve_s.append(time.perf_counter() - t0)
        status = mpc.solver_stats.get("return_status", "?")
        if status not in ACCEPTED or not np.isfinite(z).all():
            return self._fall_back(observation, forecast, f"IPOPT: {status}")
        m = self.model
        u_w = z[: self.vars.n_model_u] * 1000.0
        heat = np.clip(u_w[m.heat], 0.0, m.heater_w)
        bat = None
        if m.has_battery:
            bat = float(u_w[m.sym.u.index("P_ch")] - u_w[m.sym.u.index("P_dis")])
        self._fc = forecast  # for plan()
        return Action(heat_w=heat, bat_w=bat)

    def plan(self) -> pd.DataFrame | None:
        """The last solve's plan over the horizon (None before the first solve or after a fallback).

        One row per step from the solve's time: the planned inputs (``P_heat__<room>``, and
        ``P_bat`` [W, AC, charge +] with a battery) and the predicted states at the step's start
        (``T_room__<room>``, ``T_mass__<room>`` [°C], ``soc`` [-]) — what the live loop logs as
        "planned".
        """
        fc = self._fc
        if fc is None or self._first:
            return None
        m, ox = self.model, self.mpc.opt_x_num
        n = min(self.N, len(fc.index))
        u = np.hstack([np.asarray(ox["_u", k, 0]) for k in range(n)]).T * 1000.0  # (n, nu) [W]
        x = np.hstack([np.asarray(ox["_x", k, 0, -1]) for k in range(n)]).T  # (n, nx)
        heat, air, mass = (np.arange(k)[sl] for k, sl in ((u.shape[1], m.heat), (x.shape[1], m.air),
                                                            (x.shape[1], m.mass)))
        out = {f"P_heat__{r}": u[:, j] for r, j in zip(m.rooms, heat)}
        if m.has_battery:
            names = self.vars.names
            out["P_bat"] = u[:, names.index("P_ch")] - u[:, names.index("P_dis")]
            out["soc"] = x[:, m.i_soc]
        out |= {f"T_room__{r}": x[:, j] for r, j in zip(m.rooms, air)}
        out |= {f"T_mass__{r}": x[:, j] for r, j in zip(m.rooms, mass)}
        return pd.DataFrame(out, index=fc.index[:n])

    def _fall_back(self, obs: Observation, fc: Forecast, reason: str) -> Action:
        log.warning("mpc falls back to rule-based at %s: %s", obs.time, reason)
        self.events.append({"time": obs.time, "kind": "fallback", "controller": self.name, "reason": reason})
        self._first = True  # the next solve starts from a fresh initial guess
        return self.fallback.act(obs, fc)
