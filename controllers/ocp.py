"""The economic optimal-control problem, shared by the MPC and the perfect-foresight oracle.

Everything here is *generated* from the twin's one symbolic declaration: the discrete dynamics at
the control step are the exact zero-order-hold of its affine form (``x⁺ = Ad x + Γ w``, with
``w = B(d) u + c(d)`` kept symbolic in the disturbances, so a heat pump's COP follows the forecast
outdoor temperature), the step-mean room temperatures used for comfort come from the same
discretisation, and the grid power is the model's own ``P_grid`` output. The stage cost and
constraints are written once (:func:`stage`) and used by both the do-mpc MPC and the oracle.

Decision variables per step (powers in kW for the solver's sake):

- the model's inputs ``P_heat__<room>``, ``P_ch``, ``P_dis``;
- ``P_imp`` (grid import), ``P_curt`` (PV curtailment, where the export limit can bind), one
  comfort slack ``s__<room>`` per room [K] (distance outside the band on either side), and
  ``s_peak`` (import above the peak threshold, where the peak penalty is on).

Export is not a variable: ``P_exp = P_imp − P_grid ≥ 0``, so import and export are split exactly
and the asymmetric tariff is exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import casadi as ca
import numpy as np

from pems.twin.linear import affine_form, zoh
from pems.twin.model import HouseModel
from pems.twin.signals import Forecast


@dataclass(frozen=True)
class Weights:
    """Objective weights and comfort settings (scenario ``[controller]`` table or defaults).

    Attributes
    ----------
    comfort
        Cost of discomfort [currency per K·h per room]; an exact (L1) penalty: above the marginal
        cost of heat, the optimiser keeps every room in its band whenever it can.
    comfort_quadratic
        Cost of the square of the distance outside the band [currency per K²·h per room]: small
        excursions cost little, large ones much. 0 by default; any other value makes the OCP a
        nonlinear program (the MPC's NLP path, do-mpc with IPOPT).
    comfort_margin_k
        Back-off from the band's bounds [K], against the plant's relay timing and forecast errors.
    battery_wear
        Cost of battery throughput [currency per kWh charged plus discharged].
    peak
        Cost of import above ``peak_threshold_kw`` [currency per kW per hour]; 0 disables it.
    ev_shortfall
        Price of each kWh a car leaves without below its target [currency per kWh]: the departure
        target is a soft constraint (a slack per car), met whenever charging costs less.
    terminal_battery_value, terminal_heat_value
        Share of the horizon's mean import price at which energy left in the battery and heat left
        in the building are valued at the end of the horizon, so that a receding horizon does not
        keep draining them. The battery at its full replacement value (1.0: with a flat price it
        then never cycles for nothing); heat a little below (0.9), as it leaks away, and only the
        share of it the house will need (:func:`heat_need`: none when the rooms would stay in their
        bands unheated, as in summer, where heat stored at cheap hours would only overheat them).
    """

    comfort: float = 2.0
    comfort_quadratic: float = 0.0
    comfort_margin_k: float = 0.1
    battery_wear: float = 0.005
    peak: float = 0.0
    peak_threshold_kw: float = 15.0
    ev_shortfall: float = 1.0
    terminal_battery_value: float = 1.0
    terminal_heat_value: float = 0.9


@dataclass(frozen=True)
class DiscreteModel:
    """The control-step discretisation of a house model, as CasADi functions (SX inside)."""

    model: HouseModel
    step_s: float
    F: ca.Function  # (x, u_W, d) -> x_next, exact ZOH
    Xmean: ca.Function  # (x, u_W, d) -> step-mean state, exact ZOH
    Y: ca.Function  # (x, u_W, d) -> model outputs (P_grid, ...)
    R: ca.Function  # (x, x_next, u_W, d) -> implicit trapezoidal residual (sparse), = 0 on a trajectory
    Ad: np.ndarray
    Gamma: np.ndarray
    Gamma_mean: np.ndarray
    Phi_mean: np.ndarray
    heat_capacity: np.ndarray = field(repr=False)  # C of every thermal state [J/K], 0 for soc

    @property
    def n_x(self) -> int:
        return len(self.model.sym.x)


def _sparsify(M: np.ndarray, rel: float = 1e-9) -> ca.DM:
    """Drop entries below ``rel`` × the largest: ZOH matrices are dense in theory, sparse in practice."""
    M = M.copy()
    M[np.abs(M) < rel * np.abs(M).max()] = 0.0
    return ca.sparsify(ca.DM(M))


def discretise(model: HouseModel, step_s: float) -> DiscreteModel:
    """Exact ZOH of ``model`` at the control step, symbolic in inputs and disturbances."""
    key = ("discrete", step_s)
    if key in model._cache:
        return model._cache[key]
    s = model.sym
    form = affine_form(model)
    disc = zoh(form.A, step_s)
    x, u, d = s.x.sym, s.u.sym, s.d.sym
    p = ca.DM(model.p)
    B = ca.substitute(ca.jacobian(s.rhs, u), s.p.sym, p)
    xu = ca.vertcat(x, u)
    c = ca.substitute(ca.substitute(s.rhs, xu, ca.DM.zeros(xu.numel())), s.p.sym, p)
    w = ca.mtimes(B, u) + c
    Ad, G = _sparsify(disc.Ad), _sparsify(disc.Gamma)
    Pm, Gm = _sparsify(disc.Phi_mean), _sparsify(disc.Gamma_mean)
    x_next = ca.mtimes(Ad, x) + ca.mtimes(G, w)
    x_mean = ca.mtimes(Pm, x) + ca.mtimes(Gm, w)
    # Trapezoidal rule (Crank–Nicolson) on the sparse A: (I − hA/2) x⁺ − (I + hA/2) x − h w = 0.
    # As accurate for these time constants (fastest ≈ 18 min: 0.41 vs e^{hλ} = 0.43 per step), exact
    # in steady state, and ~7× sparser than the dense ZOH map, which is what the solvers pay for.
    h = step_s
    A = ca.sparsify(ca.DM(form.A))
    eye = ca.DM.eye(len(s.x))
    xn = ca.SX.sym("x_next", len(s.x))
    resid = ca.mtimes(eye - h / 2 * A, xn) - ca.mtimes(eye + h / 2 * A, x) - h * w
    y = ca.substitute(ca.vertcat(*s.outputs.values()), s.p.sym, p)
    caps = np.zeros(len(s.x))
    for i, r in enumerate(model.rooms):
        caps[i] = model.param(f"C_air__{r}")
        caps[model.n_rooms + i] = model.param(f"C_mass__{r}")
    dm = DiscreteModel(
        model=model, step_s=step_s,
        F=ca.Function("F", [x, u, d], [x_next], ["x", "u", "d"], ["x_next"]),
        Xmean=ca.Function("Xmean", [x, u, d], [x_mean], ["x", "u", "d"], ["x_mean"]),
        Y=ca.Function("Y", [x, u, d], [y], ["x", "u", "d"], ["y"]),
        R=ca.Function("R", [x, xn, u, d], [resid], ["x", "x_next", "u", "d"], ["residual"]),
        Ad=disc.Ad, Gamma=disc.Gamma, Gamma_mean=disc.Gamma_mean, Phi_mean=disc.Phi_mean,
        heat_capacity=caps,
    )
    model._cache[key] = dm
    return dm


@dataclass(frozen=True)
class OcpVariables:
    """Names and bounds of the per-step decision variables (kW, K)."""

    names: tuple[str, ...]
    lb: np.ndarray
    ub: np.ndarray
    n_model_u: int  # the first n entries are the model's inputs (kW)

    def index(self, name: str) -> int:
        return self.names.index(name)


def decision_variables(model: HouseModel, weights: Weights) -> OcpVariables:
    """The OCP's inputs per step: model inputs, import, (curtailment), comfort slacks, (peak slack).

    Curtailment is a variable only where the export limit can bind (it lies below the PV's AC
    potential) and the peak slack only where the peak penalty is on: every variable costs solve time.
    """
    nr = model.n_rooms
    names = list(model.sym.u.names) + ["P_imp"]
    inf = np.inf
    imp = model.limits.import_limit_w
    lb = list(model.u_min / 1000) + [0.0]
    ub = list(model.u_max / 1000) + [imp / 1000 if imp else inf]
    if export_limit_binds(model):
        names.append("P_curt")
        lb.append(0.0)
        ub.append(inf)
    names += [f"s__{r}" for r in model.rooms]  # distance outside the band [K]
    lb += [0.0] * nr
    ub += [inf] * nr
    if weights.peak > 0:
        names.append("s_peak")
        lb.append(0.0)
        ub.append(inf)
    for c in model.cars:  # energy a car would leave without, below its target [kWh]
        names.append(f"s_ev__{c}")
        lb.append(0.0)
        ub.append(inf)
    return OcpVariables(tuple(names), np.array(lb), np.array(ub), len(model.sym.u))


def export_limit_binds(model: HouseModel) -> bool:
    """Whether PV could ever exceed the export limit (then curtailment must be in the OCP)."""
    lim = model.limits
    if lim.export_limit_w is None or not model.house.pv:
        return False
    return lim.inverter_ac_w is None or lim.export_limit_w < lim.inverter_ac_w


@dataclass
class OcpSolution:
    """One solve of the OCP, by whichever solver (the LP path or the NLP path).

    Attributes
    ----------
    solver
        ``"highs"`` (the LP) or ``"ipopt"`` (the NLP).
    status
        The solver's own status string.
    optimal
        Whether the solution may be applied.
    objective
        Optimal objective [currency] (stage costs − terminal value).
    z
        Decision variables per stage (n_stages, n_z) [kW, K] (:func:`decision_variables` order).
    x
        States at the stage boundaries (n_stages + 1, n_x), the initial state first.
    starts
        First control step of every stage (move blocking: stages may hold several steps).
    n_steps
        Control steps the solution covers (the end of its last stage).
    iterations
        Simplex or interior-point iterations.
    wall_s
        Wall time of the solve [s].
    """

    solver: str
    status: str
    optimal: bool
    objective: float = float("nan")
    z: np.ndarray | None = None
    x: np.ndarray | None = None
    starts: np.ndarray | None = None
    n_steps: int = 0
    iterations: int = 0
    wall_s: float = 0.0


@dataclass(frozen=True)
class StageParameters:
    """The per-step parameters of the OCP (forecasts), as CasADi symbols or numbers."""

    d: ca.SX | ca.MX | np.ndarray  # model disturbances
    price_import: ca.SX | ca.MX | float  # [currency/kWh]
    price_export: ca.SX | ca.MX | float
    low: ca.SX | ca.MX | np.ndarray  # comfort band per room [°C]
    high: ca.SX | ca.MX | np.ndarray


def stage(dm: DiscreteModel, weights: Weights, v: OcpVariables, x, z, par: StageParameters,
          x_next=None):
    """Stage cost, inequality constraints ``g ≤ 0`` and dynamics of one step.

    Parameters
    ----------
    x
        State at the step's start (model order).
    z
        The step's decision variables (:func:`decision_variables` order, kW and K).
    x_next
        ``None``: explicit exact-ZOH dynamics, comfort on the step-mean air temperature (exact, as
        the KPI, but dense in the state). A symbol for the state at the step's end: implicit
        trapezoidal dynamics, comfort on the mean of the step's two ends (sparse: what the MPC and
        the oracle use).

    Returns
    -------
    cost
        [currency] for the step.
    g
        Inequality constraints, all ``≤ 0``.
    dynamics
        The state at the step's end (explicit), or the residual that must vanish (implicit).
    """
    model = dm.model
    nr, nu = model.n_rooms, v.n_model_u
    dt_h = dm.step_s / 3600.0
    names = v.names
    u_w = z[:nu] * 1000.0
    p_imp = z[names.index("P_imp")]
    p_curt = z[names.index("P_curt")] if "P_curt" in names else 0.0
    i_s = names.index(f"s__{model.rooms[0]}")
    s_comf = z[i_s:i_s + nr]
    i_pv = model.sym.d.index("P_pv")
    d = par.d
    d_eff = ca.vertcat(d[:i_pv], d[i_pv] - p_curt * 1000.0, d[i_pv + 1:]) if "P_curt" in names else d
    y = dm.Y(x, u_w, d_eff)
    p_grid = y[model.sym.output_names.index("P_grid")] / 1000.0  # kW
    p_exp = p_imp - p_grid
    if x_next is None:
        t_air = dm.Xmean(x, u_w, d_eff)[:nr]
    else:
        t_air = (x[:nr] + x_next[:nr]) / 2
    m = weights.comfort_margin_k
    g = [p_grid - p_imp,  # export ≥ 0
         par.low + m - t_air - s_comf,  # comfort, lower side
         t_air - (par.high - m) - s_comf]  # comfort, upper side
    if "P_curt" in names:
        g += [p_curt - d[i_pv] / 1000.0, p_exp - model.limits.export_limit_w / 1000.0]
    cost = dt_h * (par.price_import * p_imp - par.price_export * p_exp)
    cost += weights.comfort * dt_h * ca.sum1(s_comf)
    if weights.comfort_quadratic > 0:
        cost += weights.comfort_quadratic * dt_h * ca.sumsqr(s_comf)
    if "s_peak" in names:
        s_peak = z[names.index("s_peak")]
        g.append(p_imp - weights.peak_threshold_kw - s_peak)
        cost += weights.peak * dt_h * s_peak
    if model.has_battery:
        i_ch, i_dis = model.sym.u.index("P_ch"), model.sym.u.index("P_dis")
        cost += weights.battery_wear * dt_h * (z[i_ch] + z[i_dis])
        ac = model.limits.inverter_ac_w
        if ac is not None:
            p_inv = (d_eff[i_pv]) / 1000.0 - (z[i_ch] - z[i_dis])  # inverter AC output [kW]
            g += [p_inv - ac / 1000.0, -p_inv - ac / 1000.0]
    d_names = model.sym.d.names
    for car, i_u, i_x in zip(model.house.ev, model.i_ev, model.i_ev_soc):
        plugged = d[d_names.index(f"ev_plugged__{car.id}")]
        need_kwh = d[d_names.index(f"ev_need_wh__{car.id}")] / 1000.0
        s_ev = z[names.index(f"s_ev__{car.id}")]
        g.append(z[i_u] - plugged * car.charger.max_w / 1000.0)  # it charges only while plugged in
        g.append(need_kwh - x[i_x] * car.capacity_kwh - s_ev)  # on board at a departure: its target, or a slack
        cost += weights.ev_shortfall * s_ev
    dynamics = dm.F(x, u_w, d_eff) if x_next is None else dm.R(x, x_next, u_w, d_eff)
    return cost, ca.vertcat(*g), dynamics


def stage_costs(dm: DiscreteModel, weights: Weights, v: OcpVariables, x: np.ndarray, z: np.ndarray,
                fc: Forecast) -> np.ndarray:
    """Each step's cost [currency] of a plan: states ``x`` (n + 1, n_x), decisions ``z`` (n, n_z)
    [kW, K], on the first n rows of forecast ``fc`` (energy, comfort, wear; no terminal value)."""
    m = dm.model
    n, nx, nz, nd, nr = len(z), len(m.sym.x), len(v.names), len(m.sym.d), m.n_rooms
    xs, xn, zs, ds = ca.SX.sym("x", nx), ca.SX.sym("xn", nx), ca.SX.sym("z", nz), ca.SX.sym("d", nd)
    pi, pe, lo, hi = ca.SX.sym("pi"), ca.SX.sym("pe"), ca.SX.sym("lo", nr), ca.SX.sym("hi", nr)
    cost = stage(dm, weights, v, xs, zs, StageParameters(ds, pi, pe, lo, hi), x_next=xn)[0]
    F = ca.Function("stage_cost", [xs, xn, zs, ds, pi, pe, lo, hi], [cost]).map(n)
    out = F(x[:-1].T, x[1:].T, z.T, fc.d[:n].T, fc.price_import[:n][None, :], fc.price_export[:n][None, :],
            fc.low[:n].T, fc.high[:n].T)
    return np.asarray(out).ravel()


#: Width [K] of the ramp of a room's need for heat at a horizon's end: the heat left in a room is
#: worth nothing when the room, left unheated in the weather at the horizon's end, would settle at or
#: above its band's lower bound (no heating will be needed to keep it there), and its full value when
#: it would settle this far below or further (every kWh left saves one later).
HEAT_NEED_RAMP_K = 2.0


def _free_running(model: HouseModel) -> tuple[np.ndarray, np.ndarray | None]:
    """The thermal states and the inverse of their block of the affine form's ``A`` (None: singular),
    once per model: the unheated steady state under disturbances ``d`` is ``−A⁻¹ c(d)`` on them."""
    if "free_running" not in model._cache:
        states = np.arange(len(model.sym.x))
        th = np.r_[states[model.air], states[model.mass]]
        try:
            inv = np.linalg.inv(affine_form(model).A[np.ix_(th, th)])
        except np.linalg.LinAlgError:  # a room with no path to outdoors or ground has no steady state
            inv = None
        model._cache["free_running"] = (th, inv)
    return model._cache["free_running"]


def heat_need(dm: DiscreteModel, d: np.ndarray, low: np.ndarray) -> np.ndarray:
    """Share of each state's heat that will be needed after a horizon's end, 0 to 1 (0 for non-thermal states).

    A room needs heat when its free-running steady state (no heating, the mean disturbances ``d``
    over the window: outdoor and ground temperature, sun, gains) lies below the mean lower bound of
    its band ``low`` over the window [°C]; the need ramps from 0 at the bound to 1 at
    :data:`HEAT_NEED_RAMP_K` below it. A room's air and mass share its need. A room without a lower
    bound (``-inf`` or NaN) needs none. The steady state is the model's own affine form
    (``0 = A x + c(d)`` on the thermal states), so it holds for any house file.

    Parameters
    ----------
    d
        Disturbances over the window (rows × n_d, the model's order).
    low
        Lower comfort bounds over the window (rows × n_rooms) [°C].
    """
    m = dm.model
    th, inv = _free_running(m)
    need = np.zeros(dm.n_x)
    if inv is None:
        need[th] = 1.0
        return need
    c = np.asarray(affine_form(m).c_fn(np.mean(np.atleast_2d(d), axis=0))).ravel()
    T_air = -(inv @ c[th])[: m.n_rooms]  # th: every room's air, then every room's mass
    low = np.atleast_2d(np.asarray(low, dtype=float))
    lo = np.mean(np.where(np.isnan(low), -np.inf, low), axis=0)  # an hour without a bound: none needed
    room_need = np.clip((lo - T_air) / HEAT_NEED_RAMP_K, 0.0, 1.0)
    need[m.air] = need[m.mass] = room_need
    return need


def terminal_prices(dm: DiscreteModel, price_import: np.ndarray, d: np.ndarray,
                    low: np.ndarray) -> tuple[float, np.ndarray]:
    """Prices at which energy left at a horizon's end is valued [currency/kWh, currency/kWh_th per state].

    Electricity: the mean import price over the horizon. Heat: what making it costs, the
    electricity price divided by heat per electricity (efficiency × COP at the mean outdoor
    temperature for a heat pump), times each state's :func:`heat_need` over the window, given its
    comfort bands' lower bounds ``low``.
    """
    m = dm.model
    p_el = float(np.mean(price_import))
    eta = float(np.mean([m.param(f"eta_heat__{r}") for r in m.rooms]))
    if m.house.heating.kind == "heat_pump":
        y = np.asarray(dm.Y(np.zeros(len(m.sym.x)), np.zeros(len(m.sym.u)), np.mean(d, axis=0))).ravel()
        eta *= float(y[m.sym.output_names.index("COP")])
    return p_el, heat_need(dm, d, low) * (p_el / eta)


def terminal_value(dm: DiscreteModel, x, price_electricity, price_heat, weights: Weights):
    """Value [currency] of the energy left at the horizon's end: battery charge and building heat.

    Parameters
    ----------
    price_electricity
        Value of a kWh in the battery [currency/kWh] (e.g. the horizon's mean import price).
    price_heat
        Value of a kWh of heat in each state [currency/kWh_th], a vector over the states: what
        making it costs (electricity price / (heater efficiency × COP)), times
        the share of it that will be needed (:func:`terminal_prices`).

    Battery: stored kWh × discharge efficiency × price × ``terminal_battery_value``. Heat: Σ C·T
    (relative; only differences between plans matter) in kWh_th × ``terminal_heat_value``.
    """
    model = dm.model
    caps = dm.heat_capacity
    th = np.flatnonzero(caps > 0)
    th = th.tolist()
    value = weights.terminal_heat_value * ca.dot(price_heat[th] * ca.DM(caps[th] / 3.6e6), x[th])
    if model.has_battery:
        stored_kwh = model.param("bat_capacity_wh") / 1000.0
        value += (weights.terminal_battery_value * price_electricity * model.param("bat_eta_dis")
                  * stored_kwh * x[model.i_soc])
    return value
