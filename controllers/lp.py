"""The economic OCP as one persistent linear program, built from :func:`pems.controllers.ocp.stage`.

For electric heating, and for a heat pump whose COP follows the *forecast* outdoor temperature,
every stage of the OCP is affine in its variables ``w = [x, x_next, z]``::

    out(w; P) = J(P) w + b(P),    out = [stage cost; g (≤ 0); dynamics residual (= 0)]

with ``P`` the stage's forecast (disturbances, prices, comfort band). :func:`linear_stage` derives
``J`` and ``b`` from the one stage of :mod:`pems.controllers.ocp` by CasADi differentiation (never
by hand), refuses a stage that is not affine (:class:`NotLinear`: a state-dependent COP, a
quadratic term), and marks which coefficients of ``J`` change with the forecast (the heat pump's
heater columns).

:class:`HorizonLP` lays the stages out as one compact LP (no duplicated "next state" variables,
unlike do-mpc's collocation of the same problem): per stage a block of columns ``[z_k, x_{k+1}]``
and a block of rows ``[g_k; r_k]``; the known initial state goes into the first block's row bounds.
Stages may be longer than the control step (move blocking on the far horizon: the inputs are held
for the stage, its forecast is the mean over the steps it covers), which is where most of the
speed comes from: simplex time grows much faster than the number of stages. :meth:`Blocking.aligned`
keeps the long stages on the clock's hours, so hourly prices are never averaged across two hours.

Each control step :meth:`HorizonLP.update` changes only costs, row bounds and the coefficients that
changed (a heat pump's COP, the one stage whose length follows the clock) in the one HiGHS model,
and :meth:`HorizonLP.solve` restarts the dual simplex from the basis and factorisation HiGHS kept
from the previous step. Measurements: ``docs/mpc.md``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import casadi as ca
import highspy
import numpy as np

from pems.controllers.ocp import (DiscreteModel, OcpSolution, OcpVariables, StageParameters, Weights, discretise,
                                  stage, terminal_prices, terminal_value)
from pems.twin.model import HouseModel
from pems.twin.signals import Forecast


class NotLinear(ValueError):
    """The OCP's stage is not affine in its variables: it needs the NLP path."""


# ---------------------------------------------------------------------------------------------- stage

@dataclass(frozen=True)
class LinearStage:
    """One OCP stage of length ``step_s`` as ``out = J(P) w + b(P)``.

    ``out`` is ``[cost; g; r]`` (1 + n_g + n_x rows), ``w = [x; x_next; z]``, ``P`` the stage
    parameters (:func:`parameter_vector`). ``J`` is sparse with a fixed pattern (``rows``, ``cols``).
    """

    step_s: float
    n_x: int
    n_z: int
    n_g: int
    rows: np.ndarray  # (nnz,) row of each nonzero of J in out
    cols: np.ndarray  # (nnz,) column of each nonzero of J in w
    varying: np.ndarray  # (nnz,) bool: the coefficient depends on P
    fn: ca.Function  # P -> (J nonzeros (nnz,), b (n_out,))

    @property
    def n_out(self) -> int:
        return 1 + self.n_g + self.n_x

    def evaluate(self, P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``J`` nonzeros (nnz, n) and ``b`` (n_out, n) for the parameter columns of ``P`` (n_p, n)."""
        n = P.shape[1]
        jv, bv = self.fn.map(n)(P) if n > 1 else self.fn(P)
        return np.asarray(jv).reshape(-1, n), np.asarray(bv).reshape(-1, n)


def n_parameters(model: HouseModel) -> int:
    return len(model.sym.d) + 2 + 2 * model.n_rooms


def _parameter_symbols(model: HouseModel) -> tuple[ca.SX, StageParameters]:
    nd, nr = len(model.sym.d), model.n_rooms
    P = ca.SX.sym("P", n_parameters(model))
    return P, StageParameters(P[:nd], P[nd], P[nd + 1], P[nd + 2:nd + 2 + nr], P[nd + 2 + nr:])


def linear_stage(dm: DiscreteModel, weights: Weights, v: OcpVariables) -> LinearStage:
    """Derive the affine form of one stage of :func:`~pems.controllers.ocp.stage` (cached on the model).

    Raises
    ------
    NotLinear
        When the Jacobian of the stage's cost, constraints or dynamics depends on the variables.
    """
    key = ("linear_stage", dm.step_s, weights, v.names)
    cache = dm.model._cache
    if key in cache:
        return cache[key]
    model = dm.model
    nx, nz = len(model.sym.x), len(v.names)
    x, xn, z = ca.SX.sym("x", nx), ca.SX.sym("xn", nx), ca.SX.sym("z", nz)
    P, par = _parameter_symbols(model)
    cost, g, r = stage(dm, weights, v, x, z, par, x_next=xn)
    out = ca.vertcat(cost, g, r)
    w = ca.vertcat(x, xn, z)
    J = ca.jacobian(out, w)
    if ca.depends_on(J, w):
        parts = [name for name, e in (("stage cost", cost), ("constraints", g), ("dynamics", r))
                 if ca.depends_on(ca.jacobian(e, w), w)]
        raise NotLinear(f"the OCP is not linear in its variables ({', '.join(parts)})")
    b = ca.substitute(out, w, ca.DM.zeros(w.numel()))
    rows, cols = J.sparsity().get_triplet()
    nzs = J.nonzeros()
    varying = np.array([not e.is_constant() for e in nzs], dtype=bool)
    fn = ca.Function("lp_stage", [P], [ca.vertcat(*nzs) if nzs else ca.SX(0, 1), b])
    ls = LinearStage(step_s=dm.step_s, n_x=nx, n_z=nz, n_g=int(g.numel()), rows=np.asarray(rows),
                     cols=np.asarray(cols), varying=varying, fn=fn)
    cache[key] = ls
    return ls


def why_not_linear(dm: DiscreteModel, weights: Weights, v: OcpVariables) -> str:
    """Why the OCP is not a linear program (empty when it is: :func:`linear_stage` succeeds)."""
    try:
        linear_stage(dm, weights, v)
    except NotLinear as exc:
        return str(exc)
    return ""


# ---------------------------------------------------------------------------------------------- blocking

@dataclass(frozen=True)
class Blocking:
    """Stage lengths over the horizon, in control steps: fine first, coarse (held inputs) after."""

    steps: tuple[int, ...]

    @classmethod
    def uniform(cls, n: int) -> Blocking:
        return cls((1,) * n)

    @classmethod
    def horizon(cls, n_steps: int, fine_steps: int, coarse: int) -> Blocking:
        """``fine_steps`` stages of one step, then stages of ``coarse`` steps up to ``n_steps`` (the
        last may be shorter)."""
        fine = min(n_steps, fine_steps)
        rest = n_steps - fine
        coarse = max(1, coarse)
        tail = [coarse] * (rest // coarse) + ([rest % coarse] if rest % coarse else [])
        return cls((1,) * fine + tuple(tail))

    @classmethod
    def aligned(cls, n_steps: int, fine_steps: int, coarse: int, offset: int) -> Blocking:
        """Fine stages, then one stage up to the next multiple of ``coarse`` steps since the epoch,
        then whole coarse stages: the coarse stages stay on the clock's hours as the horizon recedes
        (hourly prices are never averaged across two hours), and the stage count never changes.

        Parameters
        ----------
        n_steps
            At least this many steps are covered (up to ``coarse − 1`` more).
        fine_steps
            Stages of one step first.
        coarse
            Steps per coarse stage (e.g. 4 for an hour of 15-minute steps).
        offset
            The horizon's first step counted from the epoch (``t0 // step``).
        """
        fine, coarse = max(0, min(n_steps, fine_steps)), max(1, coarse)
        if fine >= n_steps or coarse == 1:
            return cls.horizon(n_steps, fine, coarse)
        first = coarse - (offset + fine) % coarse  # 1 … coarse steps to the next boundary
        n_coarse = max(0, -(-(n_steps - fine - 1) // coarse))  # the same count whatever ``first``
        return cls((1,) * fine + (first,) + (coarse,) * n_coarse)

    @property
    def n_stages(self) -> int:
        return len(self.steps)

    @property
    def n_steps(self) -> int:
        return int(sum(self.steps))

    @property
    def starts(self) -> np.ndarray:
        """First control step of every stage."""
        return np.concatenate([[0], np.cumsum(self.steps)[:-1]]).astype(int)

    @property
    def n_fine(self) -> int:
        n = 0
        for s in self.steps:
            if s != 1:
                break
            n += 1
        return n


def stage_parameters(fc: Forecast, blocking: Blocking) -> np.ndarray:
    """The stage parameter matrix (n_p, n_stages): each stage's forecast, averaged over its steps.

    Rows past the forecast's end hold its last row (a horizon that outruns the data).
    """
    n = blocking.n_steps
    idx = np.minimum(np.arange(n), len(fc) - 1)
    rows = np.hstack([fc.d[idx], fc.price_import[idx, None], fc.price_export[idx, None],
                      fc.low[idx], fc.high[idx]])
    if all(s == 1 for s in blocking.steps):
        return rows.T
    starts = blocking.starts
    sums = np.add.reduceat(rows, starts, axis=0)
    out = sums / np.asarray(blocking.steps, dtype=float)[:, None]
    # a car's departure is an event, not a rate: a stage holding one carries all of its need
    need = [i for i, name in enumerate(fc.d_names) if name.startswith("ev_need_wh__")]
    out[:, need] = sums[:, need]
    return out.T


# ---------------------------------------------------------------------------------------------- the LP

#: HiGHS settings for the receding-horizon LP: dual simplex restarted from the basis HiGHS keeps,
#: Devex pricing (measured on the winter week, 42 stages, idle machine: median 0.020 s against 0.022 s
#: with Dantzig's and 0.025 s with steepest edge; HiGHS' default chooser 0.027 s).
SIMPLEX_OPTIONS = {
    "solver": "simplex",
    "simplex_strategy": 1,  # dual
    "simplex_dual_edge_weight_strategy": 1,  # Devex
    "presolve": "off",  # presolve would discard the hot basis
    "threads": 1,
    "output_flag": False,
}


#: IPOPT on the LP (constant Jacobian, no Hessian; Mehrotra's predictor-corrector for LPs).
INTERIOR_OPTIONS = {
    "ipopt.mehrotra_algorithm": "yes",
    "ipopt.hessian_constant": "yes",
    "ipopt.jac_c_constant": "yes",
    "ipopt.jac_d_constant": "yes",
    "ipopt.mumps_pivot_order": 5,  # METIS: 5.8 s against 6.5 s (AMF) on the winter week's oracle
    "ipopt.tol": 1e-8,
    "ipopt.max_iter": 500,
    "ipopt.print_level": 0,
    "ipopt.sb": "yes",
    "print_time": 0,
}


def new_highs(options: dict) -> highspy.Highs:
    """A HiGHS instance with ``options``, without the licence banner HiGHS prints on the process's
    stdout the first time one is made (it would land in the middle of a command's table)."""
    import os
    import sys

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            h = highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    for k, val in options.items():
        h.setOptionValue(k, val)
    return h


class HorizonLP:
    """The OCP over a blocked horizon as one persistent HiGHS model.

    Parameters
    ----------
    model
        The house model.
    step_s
        Control step [s]; a stage of ``s`` steps lasts ``s · step_s``.
    weights, v
        Objective weights and the decision variables (:func:`~pems.controllers.ocp.decision_variables`).
    blocking
        Stage lengths (:class:`Blocking`); :meth:`update` may change them, not their number.
    options
        HiGHS options (:data:`SIMPLEX_OPTIONS` by default).
    max_stage_steps
        The longest stage an update may bring [control steps].
    """

    def __init__(self, model: HouseModel, step_s: float, weights: Weights, v: OcpVariables,
                 blocking: Blocking, options: dict | None = None, max_stage_steps: int | None = None) -> None:
        self.model, self.step_s, self.weights, self.v, self.blocking = model, float(step_s), weights, v, blocking
        self.nx, self.nz = len(model.sym.x), len(v.names)
        top = max(max(blocking.steps), max_stage_steps or 1)
        # every stage length an update may use (``max_stage_steps``: the longest)
        self.forms = {n: linear_stage(discretise(model, n * self.step_s), weights, v)
                      for n in sorted(set(blocking.steps) | set(range(1, top + 1)))}
        # one pattern for every stage length (the union of theirs, zeros where a form has none): the
        # LP's structure never changes, only its numbers
        pairs = np.unique(np.concatenate([np.c_[f.rows, f.cols] for f in self.forms.values()]), axis=0)
        key = pairs[:, 0] * (1 << 20) + pairs[:, 1]
        self._into = {n: np.searchsorted(key, f.rows * (1 << 20) + f.cols) for n, f in self.forms.items()}
        f0 = next(iter(self.forms.values()))
        if any(f.n_g != f0.n_g for f in self.forms.values()):
            raise NotLinear("stages of different lengths have different constraints")
        self._pattern_rows, self._pattern_cols = pairs[:, 0], pairs[:, 1]
        self.ng = f0.n_g
        self.nbc, self.nbr = self.nz + self.nx, self.ng + self.nx  # columns and rows per stage block
        K = blocking.n_stages
        self.n_col, self.n_row = K * self.nbc, K * self.nbr
        self._dm = discretise(model, self.step_s)
        self._terminal = self._terminal_gradient()
        self._layout(self._pattern_rows, self._pattern_cols)
        self.col_lower, self.col_upper = self._column_bounds()
        self.values = np.zeros(self._a_rows.size)  # matrix values as HiGHS has them, column-major
        self._all_cols = np.arange(self.n_col, dtype=np.int32)
        self._all_rows = np.arange(self.n_row, dtype=np.int32)
        self.options = dict(SIMPLEX_OPTIONS if options is None else options)
        self.highs = new_highs(self.options)
        self._passed = False
        # matrix coefficients that follow the forecast (a heat pump's COP)
        self.varying = bool(any(f.varying[f.rows > 0].any() for f in self.forms.values()))

    # ------------------------------------------------------------------ structure
    def _terminal_gradient(self) -> ca.Function:
        x = ca.SX.sym("x", self.nx)
        pe, ph = ca.SX.sym("p_el"), ca.SX.sym("p_heat", self.nx)  # heat: a price per state (its need)
        val = terminal_value(self._dm, x, pe, ph, self.weights)
        return ca.Function("terminal_grad", [pe, ph], [ca.jacobian(val, x).T])

    def _layout(self, r: np.ndarray, c: np.ndarray) -> None:
        """Where every nonzero of a stage's pattern (row ``r`` of out, column ``c`` of w) goes: a cost,
        a matrix entry, or a row bound (the x0 of the first stage). The same for every stage."""
        nx, nz, K = self.nx, self.nz, self.blocking.n_stages
        in_x, in_xn = c < nx, (c >= nx) & (c < 2 * nx)
        self._own_col = np.where(in_xn, nz + (c - nx), c - 2 * nx)  # column within the stage's own block
        self._prev_col = nz + c  # an x entry: the previous block's x_next column
        self._cost_own = np.flatnonzero((r == 0) & ~in_x)
        self._cost_x = np.flatnonzero((r == 0) & in_x)
        own, ax = np.flatnonzero((r > 0) & ~in_x), np.flatnonzero((r > 0) & in_x)
        self._a_x0 = ax
        ks, later = np.arange(K), np.arange(1, K)
        rows = np.concatenate([(ks[:, None] * self.nbr + (r[own] - 1)[None, :]).ravel(),
                               (later[:, None] * self.nbr + (r[ax] - 1)[None, :]).ravel()])
        cols = np.concatenate([(ks[:, None] * self.nbc + self._own_col[own][None, :]).ravel(),
                               ((later - 1)[:, None] * self.nbc + self._prev_col[ax][None, :]).ravel()])
        stage = np.concatenate([np.repeat(ks, own.size), np.repeat(later, ax.size)])
        nzi = np.concatenate([np.tile(own, K), np.tile(ax, K - 1)])
        order = np.lexsort((rows, cols))  # column-major, as HiGHS stores it
        self._a_rows, self._a_cols = rows[order], cols[order]
        self._a_stage, self._a_nz = stage[order], nzi[order]
        self._is_eq = np.tile(np.r_[np.zeros(self.ng, bool), np.ones(nx, bool)], K)

    def _column_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        v, m = self.v, self.model
        inf = highspy.kHighsInf
        zl, zu = v.lb.copy(), np.where(np.isfinite(v.ub), v.ub, inf)
        xl, xu = np.full(self.nx, -inf), np.full(self.nx, inf)
        if m.has_battery:
            lim = m.limits
            xl[m.i_soc], xu[m.i_soc] = lim.soc_min, lim.soc_max
        for i in m.i_ev_soc:  # a car holds no more than its battery (energy stored beyond it is not there)
            xu[i] = 1.0
        K = self.blocking.n_stages
        return np.tile(np.r_[zl, xl], K), np.tile(np.r_[zu, xu], K)

    def _pass_model(self) -> None:
        """Hand HiGHS the whole LP (at the first solve; later updates change it in place)."""
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = self.n_col, self.n_row
        lp.col_lower_, lp.col_upper_ = self.col_lower, self.col_upper
        lp.col_cost_ = self.cost
        lp.row_lower_, lp.row_upper_ = self.row_lower, self.row_upper
        lp.offset_ = self.offset
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_ = np.searchsorted(self._a_cols, np.arange(self.n_col + 1)).astype(np.int32)
        lp.a_matrix_.index_ = self._a_rows.astype(np.int32)
        lp.a_matrix_.value_ = self.values
        self.highs.passModel(lp)
        self._passed = True

    # ------------------------------------------------------------------ data of one step
    @property
    def nnz(self) -> int:
        """Nonzeros of the constraint matrix."""
        return int(self._a_rows.size)

    def update(self, x0: np.ndarray, fc: Forecast, terminal_window: int | None = None,
               blocking: Blocking | None = None) -> None:
        """Set the LP's costs, row bounds and coefficients for a solve from ``x0``.

        Parameters
        ----------
        x0
            State at the horizon's start (model order) [°C, -].
        fc
            Forecast from that time, one row per control step (held past its end).
        terminal_window
            Price the energy left at the end over the last this many steps (None: the whole
            horizon, as the MPC does).
        blocking
            New stage lengths (the same number of stages; lengths the LP was built for). The
            coefficients of the stages whose length changed are updated in place.
        """
        if blocking is not None:
            if blocking.n_stages != self.blocking.n_stages or not set(blocking.steps) <= set(self.forms):
                raise ValueError("a blocking with other stages than the LP was built for")
            self.blocking = blocking
        nx, K = self.nx, self.blocking.n_stages
        x0 = np.asarray(x0, dtype=float)
        P = stage_parameters(fc, self.blocking)
        steps = np.asarray(self.blocking.steps)
        f0 = next(iter(self.forms.values()))
        J = np.zeros((self._pattern_rows.size, K))  # each stage's J on the common pattern
        b = np.empty((f0.n_out, K))
        for n in np.unique(steps):
            ks = np.flatnonzero(steps == n)
            jv, b[:, ks] = self.forms[int(n)].evaluate(P[:, ks])
            J[self._into[int(n)][:, None], ks[None, :]] = jv
        cost = np.zeros(self.n_col)
        co, cx = self._cost_own, self._cost_x
        np.add.at(cost, (np.arange(K)[:, None] * self.nbc + self._own_col[co][None, :]).ravel(), J[co].T.ravel())
        if cx.size and K > 1:  # a cost on x_k lands on the previous stage's x_next column
            np.add.at(cost, (np.arange(K - 1)[:, None] * self.nbc + self._prev_col[cx][None, :]).ravel(),
                      J[cx, 1:].T.ravel())
        cols0 = self._pattern_cols
        offset = float(b[0].sum()) + float(J[cx, 0] @ x0[cols0[cx]])  # x0's cost is a constant
        rhs = -b[1:].T.ravel()  # rows [g; r] = J w + b  ⇒  J w ≤ −b (g), J w = −b (r)
        ax = self._a_x0  # the known initial state moves into the first stage's row bounds
        np.add.at(rhs, self._pattern_rows[ax] - 1, -J[ax, 0] * x0[cols0[ax]])
        values = J[self._a_nz, self._a_stage]
        # the value of the energy left at the horizon's end, on the last stage's x_next
        n = self.blocking.n_steps + 1
        idx = np.minimum(np.arange(n), len(fc) - 1)
        if terminal_window is not None:
            idx = idx[-terminal_window:]
        p_el, p_heat = terminal_prices(self._dm, fc.price_import[idx], fc.d[idx], fc.low[idx])
        cost[(K - 1) * self.nbc + self.nz + np.arange(nx)] -= np.asarray(self._terminal(p_el, p_heat)).ravel()
        changed = np.flatnonzero(values != self.values)
        self.cost, self.offset, self.x0, self.values = cost, offset, x0.copy(), values
        soc_bounds = self._soc_floor(x0, fc.extras.get("soc_floor"))
        self.row_lower = np.where(self._is_eq, rhs, -highspy.kHighsInf)
        self.row_upper = rhs
        if not self._passed:  # HiGHS gets the whole LP at the first solve
            return
        h = self.highs
        for i in changed:  # a heat pump's COP, a stage whose length changed
            h.changeCoeff(int(self._a_rows[i]), int(self._a_cols[i]), float(values[i]))
        h.changeColsCost(self.n_col, self._all_cols, cost)
        h.changeRowsBounds(self.n_row, self._all_rows, self.row_lower, self.row_upper)
        h.changeObjectiveOffset(offset)
        if soc_bounds is not None:
            cols, lower = soc_bounds
            h.changeColsBounds(cols.size, cols, lower, self.col_upper[cols])

    def _soc_floor(self, x0: np.ndarray, floor: float | None) -> tuple[np.ndarray, np.ndarray] | None:
        """The SOC's lower bound at every stage's end under a reserve ``floor`` [0–1] (None: the
        battery's own minimum): the reserve, or the SOC now when it is below the reserve (the plan
        may not discharge below either; it need not charge up to the reserve). Sets
        :attr:`col_lower`; returns the SOC columns and their bounds when they changed."""
        m = self.model
        if not m.has_battery:
            return None
        lim = m.limits
        lo = lim.soc_min if floor is None else min(max(lim.soc_min, min(float(floor), float(x0[m.i_soc]))), lim.soc_max)
        cols = (np.arange(self.blocking.n_stages) * self.nbc + self.nz + m.i_soc).astype(np.int32)
        if np.all(self.col_lower[cols] == lo):
            return None
        self.col_lower[cols] = lo
        return cols, self.col_lower[cols]

    # ------------------------------------------------------------------ solve
    def solve(self, time_limit: float | None = None, hot: bool = True) -> OcpSolution:
        """Solve from the data of the last :meth:`update`.

        Parameters
        ----------
        time_limit
            Wall-time limit of this solve [s] (None: none).
        hot
            Start from the previous solve's basis and factorisation (HiGHS keeps them across the
            in-place changes of :meth:`update`); otherwise from scratch (its state cleared first).
        """
        h = self.highs
        if not self._passed:
            self._pass_model()
        elif not hot:
            h.clearSolver()
        # HiGHS' time limit counts the object's whole run time, not this call's
        h.setOptionValue("time_limit", h.getRunTime() + float(time_limit) if time_limit else highspy.kHighsInf)
        t0 = time.perf_counter()
        h.run()
        wall = time.perf_counter() - t0
        status = h.getModelStatus()
        info = h.getInfo()
        optimal = status == highspy.HighsModelStatus.kOptimal
        its = int(info.simplex_iteration_count) + max(0, int(info.ipm_iteration_count))
        sol = OcpSolution("highs", h.modelStatusToString(status), optimal, starts=self.blocking.starts,
                          n_steps=self.blocking.n_steps, iterations=its, wall_s=wall)
        if optimal:
            cols = np.asarray(h.getSolution().col_value).reshape(self.blocking.n_stages, self.nbc)
            sol.z = cols[:, :self.nz]
            sol.x = np.vstack([self.x0[None, :], cols[:, self.nz:]])
            sol.objective = float(info.objective_function_value)
        return sol

    def solve_interior(self, options: dict | None = None) -> OcpSolution:
        """Solve the LP of the last :meth:`update` with IPOPT (an interior point on a sparse direct
        factorisation, MUMPS), for one large LP solved once: the oracle's.

        Measured on the winter week's oracle (55,296 columns and rows): 5.8 s, against 26 s for
        HiGHS' interior point (IPX, whose conjugate-gradient iterations struggle with this
        stage-wise structure) and 68 s for its dual simplex.
        """
        n, m = self.n_col, self.n_row
        starts = np.searchsorted(self._a_cols, np.arange(n + 1))
        A = ca.DM(ca.Sparsity(m, n, starts.tolist(), self._a_rows.tolist()), self.values)
        x = ca.MX.sym("x", n)
        opts = dict(INTERIOR_OPTIONS if options is None else options)
        S = ca.nlpsol("lp", "ipopt", {"x": x, "f": ca.dot(ca.DM(self.cost), x), "g": ca.mtimes(A, x)}, opts)
        t0 = time.perf_counter()
        r = S(lbx=self.col_lower, ubx=self.col_upper, lbg=self.row_lower, ubg=self.row_upper)
        wall = time.perf_counter() - t0
        st = S.stats()
        status = str(st.get("return_status", "?"))
        sol = OcpSolution("ipopt", status, bool(st.get("success", False)), starts=self.blocking.starts,
                          n_steps=self.blocking.n_steps, iterations=int(st.get("iter_count", 0)), wall_s=wall)
        if sol.optimal:
            cols = np.asarray(r["x"]).reshape(self.blocking.n_stages, self.nbc)
            sol.z = cols[:, :self.nz]
            sol.x = np.vstack([self.x0[None, :], cols[:, self.nz:]])
            sol.objective = float(r["f"]) + self.offset
        return sol
