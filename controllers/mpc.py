"""Economic MPC built from the twin's one symbolic model: a hot-started LP, or do-mpc where it is not one.

Every control step the controller estimates the full state (Kalman filter: the slabs are not
measured) and solves the economic OCP of :mod:`pems.controllers.ocp` over its horizon: energy cost
with import and export split exactly, an exact L1 penalty on leaving each room's comfort band,
battery wear, an optional peak penalty, and the value of energy left in the battery and the
building at the horizon's end. Heater powers are continuous; the plant realises them as relay duty
cycles.

**Two paths, one problem.** When the OCP is a linear program (electric heating; a heat pump whose
COP follows the forecast outdoor temperature) — checked when the controller is built — it is solved
by HiGHS' dual simplex on one persistent LP (:mod:`pems.controllers.lp`): each step changes only
costs, bounds and the forecast-dependent coefficients and restarts from the previous basis. The
first ``fine_hours`` are planned per control step, the rest of the horizon in stages of
``coarse_minutes`` (prices are hourly and the slabs' time constants many hours). Anything else (a
quadratic comfort term, a state-dependent COP) takes the NLP path: do-mpc with IPOPT
(:mod:`pems.controllers.mpc_nlp`).

**Fallback chain.** A hot start that does not end optimal is solved again from scratch, then by
IPOPT (built on first need), then the step is handed to the rule-based action. Each link is
logged in :attr:`EconomicMPC.events` with its reason (``solver_retry``, and ``fallback`` for the
hand-over to rule-based), and each has a time limit: the LP links share ``deadline_s / 2``, IPOPT
has ``deadline_s / 2`` of its own, so no step takes longer than the deadline (half a control step by
default) plus the one-off build of the IPOPT fallback.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from pems.controllers.base import EstimatorState
from pems.controllers.estimator import KalmanEstimator, NoiseModel
from pems.controllers.lp import Blocking, HorizonLP, NotLinear, why_not_linear
from pems.controllers.mpc_nlp import IPOPT_OPTIONS, NLP_OPTIONS, NlpPlanner
from pems.controllers.ocp import OcpSolution, Weights, decision_variables, discretise
from pems.controllers.rule_based import RuleBasedController
from pems.twin.ev import car_commands, leaving, plugged_share
from pems.twin.model import HouseModel
from pems.twin.signals import Action, Forecast, Observation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MpcConfig:
    """Settings of the economic MPC (documented defaults).

    Attributes
    ----------
    horizon_hours
        Look-ahead [h].
    solver
        ``"auto"``: the LP path where the OCP is linear, IPOPT otherwise; ``"lp"``: the LP path or an
        error; ``"ipopt"``: always do-mpc with IPOPT (one stage per control step).
    fine_hours, coarse_minutes
        LP path: the first ``fine_hours`` in stages of one control step, the rest of the horizon in
        stages of ``coarse_minutes`` with the inputs held and the forecast averaged. Set
        ``fine_hours`` to the horizon for no move blocking.
    deadline_s
        Wall time a step may take [s] (None: half a control step). The LP links share half of it,
        IPOPT's ``max_wall_time`` is the other half.
    use_true_state
        Skip the estimator where the plant offers its true state (the bench's privileged runs).
    scheme
        NLP path's dynamics: ``"trapezoidal"`` (sparse, implicit: the LP's) or ``"zoh"`` (exact, dense).
    """

    horizon_hours: float = 24.0
    weights: Weights = field(default_factory=Weights)
    noise: NoiseModel = field(default_factory=NoiseModel)
    solver: Literal["auto", "lp", "ipopt"] = "auto"
    fine_hours: float = 6.0
    coarse_minutes: float = 60.0
    deadline_s: float | None = None
    ipopt: dict = field(default_factory=lambda: dict(IPOPT_OPTIONS))
    use_true_state: bool = False
    scheme: str = "trapezoidal"


class EconomicMPC:
    """The ``mpc`` controller.

    Attributes
    ----------
    path
        ``"lp"`` or ``"nlp"``: how the OCP is solved (decided when the controller is built).
    why_nlp
        Why the NLP path was taken (empty on the LP path).
    build_s
        Wall time of building the controller [s].
    events
        Solver retries (``solver_retry``) and hand-overs to the rule-based action (``fallback``).
    solve_s
        Wall time of each step's solve chain [s].
    """

    name = "mpc"
    full_horizon = False  # (Privileged) a forecast of its horizon only; the true state with use_true_state

    def __init__(self, model: HouseModel, step_s: float = 900.0, config: MpcConfig | None = None) -> None:
        t0 = time.perf_counter()
        self.model = model
        self.step_s = float(step_s)
        self.config = cfg = config or MpcConfig()
        self.privileged = cfg.use_true_state
        self.N = int(round(cfg.horizon_hours * 3600 / self.step_s))
        self.deadline_s = float(cfg.deadline_s) if cfg.deadline_s is not None else self.step_s / 2
        self.dm = discretise(model, self.step_s)
        self.vars = decision_variables(model, cfg.weights)
        self.fallback = RuleBasedController(model)
        self.estimator = KalmanEstimator(model, self.step_s, cfg.noise)
        self.lp: HorizonLP | None = None
        self._nlp: NlpPlanner | None = None
        not_linear = why_not_linear(self.dm, cfg.weights, self.vars)
        if not_linear and cfg.solver == "lp":
            raise NotLinear(not_linear)
        self.linear = not not_linear
        if cfg.solver == "ipopt" or cfg.scheme != "trapezoidal":
            self.why_nlp = f"solver = {cfg.solver!r}" if cfg.solver == "ipopt" else f"scheme = {cfg.scheme!r}"
        else:
            self.why_nlp = not_linear
        self.path = "nlp" if self.why_nlp else "lp"
        if self.path == "lp":
            self._fine = int(round(cfg.fine_hours * 3600 / self.step_s))
            self._coarse = max(1, int(round(cfg.coarse_minutes * 60 / self.step_s)))
            self.blocking = Blocking.aligned(self.N, self._fine, self._coarse, 0)
            self.lp = HorizonLP(model, self.step_s, cfg.weights, self.vars, self.blocking,
                                max_stage_steps=self._coarse)
        else:
            log.info("mpc: the NLP path (%s)", self.why_nlp)
            self.blocking = Blocking.uniform(self.N)
            self._nlp = self._build_nlp()
        self.build_s = time.perf_counter() - t0
        self._fc: Forecast | None = None
        self.reset()

    def _build_nlp(self) -> NlpPlanner:
        """do-mpc with IPOPT; Mehrotra's predictor-corrector only where the OCP is an LP."""
        ipopt = dict(self.config.ipopt)
        if not self.linear:
            ipopt = dict(NLP_OPTIONS, **{k: v for k, v in ipopt.items() if k != "ipopt.mehrotra_algorithm"})
        ipopt.setdefault("ipopt.max_wall_time", self.deadline_s / 2)
        return NlpPlanner(self.dm, self.config.weights, self.vars, self.N, ipopt, self.config.scheme)

    # ------------------------------------------------------------------ protocol
    def reset(self) -> None:
        self.fallback.reset()
        self.estimator.x = None
        self.events: list[dict] = []
        self.solve_s: list[float] = []
        self._last_d: np.ndarray | None = None
        self._sol: OcpSolution | None = None
        self._ev_carry = np.zeros(len(self.model.cars))  # planned car energy not yet given [Wh]
        if self._nlp is not None:
            self._nlp.reset()
        if self.lp is not None:
            self.lp.highs.clearSolver()  # a new run starts cold

    def _estimate(self, obs: Observation, fc: Forecast) -> np.ndarray:
        if self.config.use_true_state and "x_true" in fc.extras:
            return np.asarray(fc.extras["x_true"], dtype=float)
        est, m = self.estimator, self.model
        if est.x is None or self._last_d is None:
            est.reset(est.initial_guess(obs.T_room, obs.soc, obs.ev_soc))
        else:
            u = np.zeros(len(m.sym.u))
            u[m.heat] = obs.P_heat if obs.P_heat is not None else 0.0
            if m.has_battery:
                u[m.sym.u.index("P_ch")] = max(obs.P_bat, 0.0)
                u[m.sym.u.index("P_dis")] = max(-obs.P_bat, 0.0)
            if m.cars and obs.P_ev is not None:
                u[m.i_ev] = obs.P_ev
            d = self._last_d.copy()
            names = m.sym.d.names
            d[names.index("T_out")] = obs.T_out
            d[names.index("P_pv")] = obs.P_pv
            d[names.index("P_load")] = obs.P_load
            est.predict(u, d)
        return est.correct(est.measurement(obs.T_room, obs.soc, obs.ev_soc))

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
        m = self.model
        if m.has_battery:  # an estimate a hair outside the SOC window would make the OCP infeasible
            x0 = x0.copy()
            x0[m.i_soc] = np.clip(x0[m.i_soc], m.limits.soc_min, m.limits.soc_max)
        t0 = time.perf_counter()
        sol, failures = self._solve(observation.time, x0, forecast)
        self.solve_s.append(time.perf_counter() - t0)
        if sol is None:
            return self._fall_back(observation, forecast, "; ".join(failures))
        self._sol, self._fc = sol, forecast
        u_w = sol.z[0, : self.vars.n_model_u] * 1000.0
        heat = np.clip(u_w[m.heat], 0.0, m.heater_w)
        bat = None
        if m.has_battery:
            bat = float(u_w[m.sym.u.index("P_ch")] - u_w[m.sym.u.index("P_dis")])
        ev = None
        if m.cars:  # the charger's currents: a plan below its minimum waits, its energy carried on
            ev = car_commands(m.house.ev, u_w[m.i_ev], observation.ev_plugged, self._ev_carry, self.step_s / 3600.0,
                              leaving(m.house.ev, forecast), plugged_share(m.house.ev, forecast))
        return Action(heat_w=heat, bat_w=bat, ev_w=ev)

    # ------------------------------------------------------------------ the solver chain
    def _solve(self, t: pd.Timestamp, x0: np.ndarray, fc: Forecast) -> tuple[OcpSolution | None, list[str]]:
        """Hot LP → cold LP → IPOPT; the first optimal solution, and what failed before it."""
        failures: list[str] = []
        start = time.perf_counter()
        lp_budget = self.deadline_s / 2
        if self.lp is not None:
            # coarse stages on the clock's hours: the stage before them ends at the next full hour
            offset = int(fc.index[0].value // int(round(self.step_s * 1e9)))
            self.blocking = Blocking.aligned(self.N, self._fine, self._coarse, offset)
            self.lp.update(x0, fc, blocking=self.blocking)
            for link, hot in (("lp-hot", True), ("lp-cold", False)):
                left = lp_budget - (time.perf_counter() - start)
                if left > 0:
                    sol = self.lp.solve(time_limit=left, hot=hot)
                    if sol.optimal:
                        return sol, failures
                    failures.append(f"{link}: HiGHS {sol.status}")
                else:
                    failures.append(f"{link}: no time left")
                self._retry(t, link, "lp-cold" if hot else "ipopt", failures[-1])
            if self._nlp is None:
                try:
                    self._nlp = self._build_nlp()
                except Exception as exc:  # noqa: BLE001 - a fallback that cannot be built is a failed link
                    failures.append(f"ipopt: could not be built ({exc})")
                    return None, failures
        sol = self._nlp.solve(x0, fc)
        if sol.optimal:
            return sol, failures
        failures.append(f"ipopt: {sol.status}")
        return None, failures

    def _retry(self, t: pd.Timestamp, link: str, to: str, reason: str) -> None:
        log.warning("mpc at %s: %s, trying %s", t, reason, to)
        self.events.append({"time": t, "kind": "solver_retry", "controller": self.name, "failed": link,
                            "next": to, "reason": reason})

    def _fall_back(self, obs: Observation, fc: Forecast, reason: str) -> Action:
        log.warning("mpc falls back to rule-based at %s: %s", obs.time, reason)
        self.events.append({"time": obs.time, "kind": "fallback", "controller": self.name, "reason": reason})
        self._sol = None
        if self._nlp is not None:
            self._nlp.reset()  # the next solve starts from a fresh initial guess
        return self.fallback.act(obs, fc)

    # ------------------------------------------------------------------ the estimate across restarts
    def snapshot(self) -> EstimatorState | None:
        """The Kalman estimate and the disturbances it predicts from (None before the first step)."""
        x = self.estimator.x
        if x is None or self._last_d is None:
            return None
        return EstimatorState(np.array(x, dtype=float), np.array(self._last_d, dtype=float))

    def resume(self, state: EstimatorState) -> bool:
        """Continue the estimate from ``state`` (a saved one: same model sizes, finite values)."""
        x, d = np.asarray(state.x, dtype=float), np.asarray(state.last_d, dtype=float)
        if x.shape != (len(self.model.sym.x),) or d.shape != (len(self.model.sym.d),) \
                or not (np.isfinite(x).all() and np.isfinite(d).all()):
            return False
        self.estimator.x, self._last_d = x, d
        return True

    # ------------------------------------------------------------------ the plan
    @property
    def last_solution(self) -> OcpSolution | None:
        """The last step's solution (None before the first solve or after a fallback)."""
        return self._sol

    def plan(self) -> pd.DataFrame | None:
        """The last solve's plan over the horizon (None before the first solve or after a fallback).

        One row per control step from the solve's time: the planned inputs (``P_heat__<room>``, and
        ``P_bat`` [W, AC, charge +] with a battery) and the predicted states at the step's start
        (``T_room__<room>``, ``T_mass__<room>`` [°C], ``soc`` [-]) — what the live loop logs as
        "planned". On the LP path's blocked far horizon the inputs are held over each stage and the
        states interpolated linearly between the stage boundaries the LP computes.
        """
        sol, fc = self._sol, self._fc
        if sol is None or fc is None:
            return None
        m = self.model
        starts = np.asarray(sol.starts)
        n = sol.n_steps  # the solution's own horizon (an IPOPT fallback of the LP path plans per step)
        k = np.arange(n)
        stage = np.searchsorted(starts, k, side="right") - 1  # the stage each step belongs to
        u = sol.z[stage, : self.vars.n_model_u] * 1000.0  # [W], held over the stage
        bounds = np.r_[starts, n]  # the step at which each state of sol.x holds
        x = np.column_stack([np.interp(k, bounds, sol.x[:, j]) for j in range(sol.x.shape[1])])
        out = {f"P_heat__{r}": u[:, j] for j, r in enumerate(m.rooms)}
        out |= {f"P_ev__{c}": u[:, i] for c, i in zip(m.cars, m.i_ev)}
        if m.has_battery:
            names = self.vars.names
            out["P_bat"] = u[:, names.index("P_ch")] - u[:, names.index("P_dis")]
            out["soc"] = x[:, m.i_soc]
        out |= {f"T_room__{r}": x[:, j] for j, r in enumerate(m.rooms)}
        out |= {f"T_mass__{r}": x[:, m.n_rooms + j] for j, r in enumerate(m.rooms)}
        index = fc.index[0] + pd.to_timedelta(k * self.step_s, unit="s")
        return pd.DataFrame(out, index=pd.DatetimeIndex(index))
