"""The perfect-foresight oracle: the best any controller could do with the same model and objective.

The oracle knows the true initial state (slab temperatures included) and the true future of the
whole run, and solves the economic OCP of :mod:`pems.controllers.ocp` once over all of it — the same
LP builder (:mod:`pems.controllers.lp`), stage cost, constraints and terminal value as the MPC, with
the horizon stretched to the run and the day after it. A run's end is not the world's end: an
oracle free to empty the slabs and the battery in the last hours would "win" short runs by what it
leaves undone (on the 4-day cold snap that alone is worth 4 %), so it plans on, as every controller
that plans does. The problem is linear for electric heating and for a heat pump whose COP follows
the (known) outdoor temperature, so it is solved as one large sparse LP by an interior-point method
on a sparse direct factorisation (IPOPT with MUMPS, :meth:`pems.controllers.lp.HorizonLP.solve_interior`);
anything else (a quadratic comfort term) as an NLP by do-mpc and IPOPT. Runs longer than three
weeks are solved in overlapping windows (:data:`WINDOW_DAYS`). The plan is then played back
through the plant.

Its cost is the lower bound every benchmark reports distances to: a controller within a few percent
of it leaves little on the table, whatever its forecasts.
"""

from __future__ import annotations

import time

import numpy as np

from pems.controllers.lp import Blocking, HorizonLP, why_not_linear
from pems.controllers.mpc_nlp import NLP_OPTIONS, NlpPlanner
from pems.controllers.ocp import Weights, decision_variables, discretise, stage_costs
from pems.twin.ev import car_commands, leaving, plugged_share
from pems.twin.model import HouseModel
from pems.twin.signals import Action, Forecast, Observation


class OracleFailed(RuntimeError):
    """The LP of the whole run could not be solved."""


#: Runs longer than ``WINDOW_DAYS`` are planned in windows of that length, each committing its first
#: ``COMMIT_DAYS`` and starting from where the previous one committed to. One LP for a whole year
#: (2.5 million columns) overflows MUMPS' indices, and a week of perfect foresight beyond what a
#: window commits leaves the slabs and the battery nothing to gain (measured on 13 weeks of the
#: reference house: see docs/mpc.md).
WINDOW_DAYS = 21.0
COMMIT_DAYS = 14.0


def _rows(fc: Forecast, a: int, b: int) -> Forecast:
    return Forecast(index=fc.index[a:b], d=fc.d[a:b], d_names=fc.d_names, price_import=fc.price_import[a:b],
                    price_export=fc.price_export[a:b], low=fc.low[a:b], high=fc.high[a:b], rooms=fc.rooms)


def solve_plan(model: HouseModel, step_s: float, weights: Weights, x0: np.ndarray, fc: Forecast,
               window_days: float = WINDOW_DAYS, commit_days: float = COMMIT_DAYS) -> tuple[np.ndarray, float, dict]:
    """Solve the OCP over the whole of ``fc`` (and the day after it, ``fc.extras["after"]``) from ``x0``.

    An LP (electric heating, a heat pump on forecast COP) is built by :class:`~pems.controllers.lp.HorizonLP`
    and solved by its interior point; any other OCP (a quadratic comfort term) by do-mpc and IPOPT.

    Returns
    -------
    Z
        Decision variables per step of ``fc`` (N, n_z) (kW and K, :func:`decision_variables` order).
    objective
        Optimal objective [currency] over the run and the day after it (cost + comfort penalty − value
        of the energy left at the end).
    stats
        Solver statistics: status, wall times of building, updating and solving [s], iterations,
        LP size, and the number of windows.
    """
    v = decision_variables(model, weights)
    n_run = len(fc)
    after = fc.extras.get("after")
    if after is not None:  # plan on through the day after the run, as a controller would
        fc = Forecast(index=fc.index.append(after.index), d=np.vstack([fc.d, after.d]), d_names=fc.d_names,
                      price_import=np.r_[fc.price_import, after.price_import],
                      price_export=np.r_[fc.price_export, after.price_export],
                      low=np.vstack([fc.low, after.low]), high=np.vstack([fc.high, after.high]), rooms=fc.rooms)
    N = len(fc)
    dm = discretise(model, step_s)
    linear = not why_not_linear(dm, weights, v)
    # The MPC's stage and terminal value over the run and the day after it: the run's end is not the
    # world's end, so the oracle leaves the house as ready for tomorrow as a controller that plans on
    # would, instead of emptying slabs and battery in the run's last hours. The terminal value is
    # priced over the last day (the solvers price it over the whole table otherwise).
    day = min(N, int(round(86400 / step_s)))
    win = max(int(round(window_days * 86400 / step_s)), 1)
    commit = min(max(int(round(commit_days * 86400 / step_s)), 1), win)
    stats = {"solver": "ipopt (LP)" if linear else "ipopt (NLP, do-mpc)", "build_s": 0.0, "update_s": 0.0,
             "solve_s": 0.0, "iterations": 0, "windows": 0}
    t_all = time.perf_counter()
    solvers: dict[int, HorizonLP | NlpPlanner] = {}
    Z, committed_cost, x, k = [], 0.0, np.asarray(x0, dtype=float), 0
    while True:
        last = k + win >= N
        n = N - k if last else win
        rows = _rows(fc, k, k + n)
        t0 = time.perf_counter()
        if n not in solvers:
            solvers[n] = (HorizonLP(model, step_s, weights, v, Blocking.uniform(n)) if linear
                          else NlpPlanner(dm, weights, v, n, dict(NLP_OPTIONS)))
        solver = solvers[n]
        t1 = time.perf_counter()
        if linear:
            solver.update(x, rows, terminal_window=day)
            t2 = time.perf_counter()
            sol = solver.solve_interior()
            stats.update(columns=max(stats.get("columns", 0), solver.n_col), nonzeros=max(stats.get("nonzeros", 0),
                                                                                          solver.nnz))
        else:
            t2 = t1
            sol = solver.solve(x, rows, terminal_window=day)
        stats["build_s"] += t1 - t0
        stats["update_s"] += t2 - t1
        stats["solve_s"] += sol.wall_s
        stats["iterations"] += sol.iterations
        stats["windows"] += 1
        stats.update(status=sol.status, success=sol.optimal)
        if not sol.optimal:
            raise OracleFailed(f"IPOPT: {sol.status} (window from step {k})")
        if last:
            Z.append(sol.z)
            objective = committed_cost + sol.objective
            run_cost = committed_cost + float(stage_costs(dm, weights, v, sol.x[:n_run - k + 1],
                                                          sol.z[:n_run - k], rows).sum())
            break
        Z.append(sol.z[:commit])
        committed_cost += float(stage_costs(dm, weights, v, sol.x[:commit + 1], sol.z[:commit], rows).sum())
        x, k = sol.x[commit], k + commit
    stats["run_cost"] = run_cost
    stats["wall_s"] = time.perf_counter() - t_all
    return np.vstack(Z)[:n_run], objective, stats


class PerfectForesightOracle:
    """The ``oracle`` controller: solves once with the true future, then plays its plan back.

    The runner gives it (``full_horizon``) a perfect forecast of the whole remaining run and the
    plant's true state in ``forecast.extras["x_true"]``.
    """

    name = "oracle"
    full_horizon = True  # (Privileged) the whole true future, and the true state
    privileged = True

    def __init__(self, model: HouseModel, step_s: float = 900.0, weights: Weights | None = None) -> None:
        self.model = model
        self.step_s = float(step_s)
        self.weights = weights or Weights()
        self.v = decision_variables(model, self.weights)
        self.reset()

    def reset(self) -> None:
        self.plan: np.ndarray | None = None
        self.k = 0
        self.events: list[dict] = []
        self.objective = float("nan")
        self.stats: dict = {}
        self._ev_carry = np.zeros(len(self.model.cars))
        self._ev_expected = np.zeros(len(self.model.cars))  # the mean charging the last command should give [W]

    def act(self, observation: Observation, forecast: Forecast) -> Action:
        if self.plan is None:
            x0 = forecast.extras.get("x_true")
            if x0 is None:
                raise OracleFailed("the oracle needs the plant's true state (forecast.extras['x_true'])")
            self.plan, self.objective, self.stats = solve_plan(self.model, self.step_s, self.weights,
                                                               np.asarray(x0), forecast)
        z = self.plan[min(self.k, len(self.plan) - 1)]
        self.k += 1
        m = self.model
        u_w = z[: self.v.n_model_u] * 1000.0
        heat = np.clip(u_w[m.heat], 0.0, m.heater_w)
        bat = None
        if m.has_battery:
            bat = float(u_w[m.sym.u.index("P_ch")] - u_w[m.sym.u.index("P_dis")])
        ev = None
        if m.cars:  # the charger's currents, the plan's energy carried on
            h = self.step_s / 3600.0
            if observation.P_ev is not None:
                # what the plant did not give of the last command (its fuse's load management cut the car):
                # owed too, as a plan played open-loop would otherwise leave a departure short for it
                self._ev_carry += np.maximum(self._ev_expected - np.asarray(observation.P_ev, dtype=float), 0.0) * h
                if observation.ev_soc is not None:  # never more than the room left (a full car takes nothing)
                    room = [c.ac_wh(s, 1.0) for s, c in zip(observation.ev_soc, m.house.ev)]
                    self._ev_carry = np.minimum(self._ev_carry, room)
            share = plugged_share(m.house.ev, forecast)
            ev = car_commands(m.house.ev, u_w[m.i_ev], observation.ev_plugged, self._ev_carry, h,
                              leaving(m.house.ev, forecast), share)
            self._ev_expected = ev * share
        return Action(heat_w=heat, bat_w=bat, ev_w=ev)
