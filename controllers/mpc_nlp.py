"""The NLP path of the economic MPC: the OCP of :mod:`pems.controllers.ocp` in do-mpc, solved by IPOPT.

Used where the OCP is not a linear program (a quadratic comfort or wear term, a state-dependent
COP) and as the IPOPT link of the LP path's fallback chain. The stage, constraints and terminal
value are the same :func:`~pems.controllers.ocp.stage` as the LP's; do-mpc collocates the horizon
with one stage per control step and passes the forecasts as time-varying parameters.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from pems.controllers.ocp import (DiscreteModel, OcpSolution, OcpVariables, StageParameters, Weights, stage,
                                  terminal_prices, terminal_value)
from pems.twin.model import HouseModel
from pems.twin.signals import Forecast

#: IPOPT settings measured on this project's problems (see bench/test_mpc.py): where the OCP is an
#: LP, Mehrotra's predictor-corrector converges in ~20 iterations.
IPOPT_OPTIONS = {
    "ipopt.mehrotra_algorithm": "yes",
    "ipopt.mumps_pivot_order": 2,  # AMF: fastest of MUMPS' orderings here (1.5 s against 2.0 s)
    "ipopt.max_iter": 500,
    "ipopt.tol": 1e-6,
    "ipopt.print_level": 0,
    "ipopt.sb": "yes",
    "print_time": 0,
}
#: Mehrotra's algorithm is for LPs and convex QPs; a general NLP takes IPOPT's defaults.
NLP_OPTIONS = {k: v for k, v in IPOPT_OPTIONS.items() if k != "ipopt.mehrotra_algorithm"}
ACCEPTED = {"Solve_Succeeded", "Solved_To_Acceptable_Level"}


class NlpPlanner:
    """The OCP over ``n_steps`` control steps as a do-mpc MPC with IPOPT.

    Parameters
    ----------
    dm
        The control-step discretisation of the house model.
    weights, v
        Objective weights and decision variables.
    n_steps
        Horizon [control steps].
    ipopt
        IPOPT options (casadi ``nlpsol`` form); ``ipopt.max_wall_time`` bounds each solve.
    scheme
        ``"trapezoidal"`` (implicit, sparse: the LP's form) or ``"zoh"`` (explicit exact ZOH).
    """

    solver = "ipopt"

    def __init__(self, dm: DiscreteModel, weights: Weights, v: OcpVariables, n_steps: int, ipopt: dict,
                 scheme: str = "trapezoidal") -> None:
        self.dm, self.weights, self.v, self.N = dm, weights, v, int(n_steps)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            # do-mpc announces its optional extras (ONNX, OPC UA, PyTorch) and that no input-rate
            # penalty is set (on purpose: relays, not valves), and calls numpy on casadi values,
            # which casadi 3.8 flags; none of it concerns this controller.
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", FutureWarning)
            self._build(dict(ipopt), scheme)
        self.build_s = time.perf_counter() - t0
        self._first = True

    @property
    def model(self) -> HouseModel:
        return self.dm.model

    def _build(self, ipopt: dict, scheme: str) -> None:
        import do_mpc

        m, dm, w, v = self.model, self.dm, self.weights, self.v
        nx, nr, nd = len(m.sym.x), m.n_rooms, len(m.sym.d)
        mod = do_mpc.model.Model("discrete", "SX")
        x = mod.set_variable("_x", "x", shape=(nx, 1))
        z = mod.set_variable("_u", "z", shape=(len(v.names), 1))
        implicit = scheme == "trapezoidal"
        xn = mod.set_variable("_z", "x_next", shape=(nx, 1)) if implicit else None
        d = mod.set_variable("_tvp", "d", shape=(nd, 1))
        pi = mod.set_variable("_tvp", "price_import")
        pe = mod.set_variable("_tvp", "price_export")
        lo = mod.set_variable("_tvp", "low", shape=(nr, 1))
        hi = mod.set_variable("_tvp", "high", shape=(nr, 1))
        v_el = mod.set_variable("_tvp", "value_electricity")
        v_heat = mod.set_variable("_tvp", "value_heat", shape=(nx, 1))  # a price per state (its need)
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
        s.t_step = dm.step_s
        s.store_full_solution = False
        s.store_lagr_multiplier = False
        s.use_terminal_bounds = True
        s.nlpsol_opts = ipopt
        # Symbols are re-read after setup (do-mpc rebuilds its structures there).
        mpc.set_objective(lterm=mod.aux["cost"], mterm=mod.aux["terminal"])
        mpc.bounds["lower", "_u", "z"] = v.lb
        mpc.bounds["upper", "_u", "z"] = np.where(np.isfinite(v.ub), v.ub, 1e6)
        if m.has_battery or m.cars:
            xl, xu = np.full(nx, -1e3), np.full(nx, 1e3)
            if m.has_battery:
                xl[m.i_soc], xu[m.i_soc] = m.limits.soc_min, m.limits.soc_max
            for i in m.i_ev_soc:  # a car holds no more than its battery
                xu[i] = 1.0
            mpc.bounds["lower", "_x", "x"] = xl
            mpc.bounds["upper", "_x", "x"] = xu
        mpc.set_nl_cons("g", mod.aux["g"], ub=0.0)
        self._tvp = mpc.get_tvp_template()
        mpc.set_tvp_fun(lambda t_now: self._tvp)
        mpc.setup()
        self.mpc = mpc

    def reset(self) -> None:
        """The next solve starts from a fresh initial guess."""
        self._first = True

    def _fill_tvp(self, fc: Forecast, terminal_window: int | None) -> None:
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
        w = idx if terminal_window is None else idx[-terminal_window:]
        p_el, p_heat = terminal_prices(self.dm, fc.price_import[w], fc.d[w], fc.low[w])
        t["_tvp", n - 1, "value_electricity"] = p_el
        t["_tvp", n - 1, "value_heat"] = p_heat

    def solve(self, x0: np.ndarray, fc: Forecast, terminal_window: int | None = None) -> OcpSolution:
        """Solve from ``x0`` on forecast ``fc``; warm-started from the previous solution.

        ``terminal_window``: price the energy left at the end over the last this many steps (None:
        the whole horizon).
        """
        import casadi as ca

        self._fill_tvp(fc, terminal_window)
        mpc = self.mpc
        if self._first:
            mpc.x0 = x0
            mpc.set_initial_guess()
        t0 = time.perf_counter()
        try:
            mpc.make_step(np.asarray(x0, dtype=float).reshape(-1, 1))
        except Exception as exc:  # noqa: BLE001 - do-mpc/CasADi raise plain RuntimeErrors
            self._first = True
            return OcpSolution(self.solver, f"solver error: {exc}", False, wall_s=time.perf_counter() - t0)
        wall = time.perf_counter() - t0
        stats = mpc.solver_stats
        status = str(stats.get("return_status", "?"))
        ox = mpc.opt_x_num
        n = self.N
        z = np.hstack([np.asarray(ox["_u", k, 0]) for k in range(n)]).T
        x = np.hstack([np.asarray(ox["_x", k, 0, -1]) for k in range(n + 1)]).T
        ok = status in ACCEPTED and np.isfinite(z).all()
        self._first = not ok
        obj = float("nan")
        if ok:
            if not hasattr(self, "_objective"):
                self._objective = ca.Function("objective", [mpc._opt_x, mpc._opt_p], [mpc._nlp_obj])
            obj = float(self._objective(ox, mpc.opt_p_num))
        return OcpSolution(self.solver, status, ok, objective=obj, z=z if ok else None, x=x if ok else None,
                           starts=np.arange(n), n_steps=n, iterations=int(stats.get("iter_count", 0)), wall_s=wall)
