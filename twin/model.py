"""The one symbolic model of a house, declared once in CasADi.

States, inputs, disturbances and parameters are declared here by name, and the equations are
written here once. Everything else is generated from this declaration: the simulator's exact
discretisation (:mod:`pems.twin.linear`), the MPC's dynamics and calibration's residuals.

Per room ``r`` the thermal network has an air node and a floor/mass node::

    C_air  dT_air/dt  = H_am (T_mass − T_air) + H_out (T_out − T_air) + Σ_n H_rn (T_air,n − T_air)
                        + (1 − f_sol_mass) A_sol I_sol + Q_int + Q_prof + (1 − f_heat_mass) Q_heat
    C_mass dT_mass/dt = H_am (T_air − T_mass) + H_ground (T_ground − T_mass)
                        + f_sol_mass A_sol I_sol + f_heat_mass Q_heat
    Q_heat = eta_heat · COP(T_out) · P_heat            (COP ≡ 1 for electric heaters)
    Q_prof = g0 + g1c cos ωt + g1s sin ωt + g2c cos 2ωt + g2s sin 2ωt   (ω: one day, local time)

``Q_int`` are the internal gains the inputs know of (occupants, household electricity); ``Q_prof`` is a
daily profile of further gains that calibration fits to a home's history (zero in a new house).

Underfloor heating puts its heat into the slab (``f_heat_mass = 1``): the room air warms only
through the floor surface (``H_am``), which is the lag the controller has to anticipate.

The battery's state of charge integrates its AC-side charge/discharge powers with separate
efficiencies; the grid balance closes with the inverter's own consumption as ``P_loss``::

    dsoc/dt = (eta_ch P_ch − P_dis / eta_dis − P_self) / (3600 · capacity_wh)
    P_grid  = P_load + Σ P_heat + P_bat − P_pv + P_loss,     P_bat = P_ch − P_dis

PV AC power is a disturbance computed from the weather by pvlib (:mod:`pems.twin.pv`); it cannot be
written in CasADi and no input of the model changes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property

import casadi as ca
import numpy as np

from pems.twin import priors
from pems.twin.house import House, inverter_ac_limit

T_ZERO_K = 273.15


@dataclass(frozen=True)
class Variables:
    """An ordered vector of named CasADi symbols."""

    names: tuple[str, ...]
    sym: ca.SX

    def __len__(self) -> int:
        return len(self.names)

    @cached_property
    def _index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}

    def index(self, name: str) -> int:
        return self._index[name]

    def __contains__(self, name: str) -> bool:
        return name in self._index

    def __getitem__(self, name: str) -> ca.SX:
        return self.sym[self._index[name]]

    def indices(self, prefix: str) -> list[int]:
        """Indices of all names starting with ``prefix`` (e.g. ``"T_air__"``)."""
        return [i for i, n in enumerate(self.names) if n.startswith(prefix)]


class _Declarer:
    """Collects named symbols in declaration order."""

    def __init__(self) -> None:
        self._syms: dict[str, list[tuple[str, ca.SX]]] = {"x": [], "u": [], "d": [], "p": []}

    def add(self, kind: str, name: str) -> ca.SX:
        s = ca.SX.sym(name)
        self._syms[kind].append((name, s))
        return s

    def variables(self, kind: str) -> Variables:
        items = self._syms[kind]
        sym = ca.vertcat(*[s for _, s in items]) if items else ca.SX(0, 1)
        return Variables(tuple(n for n, _ in items), sym)


@dataclass(frozen=True)
class SymbolicModel:
    """The declaration: named variables, ``dx/dt`` and algebraic outputs, all CasADi SX."""

    x: Variables  # states: T_air__<room>, T_mass__<room> [°C], soc [-]
    u: Variables  # inputs: P_heat__<room>, P_ch, P_dis [W]
    d: Variables  # disturbances: T_out, T_ground [°C], I_sol__<room> [W m⁻²], Q_int__<room>, P_pv, P_load [W],
    #               day_cos, day_sin, day2_cos, day2_sin [-] (local time of day)
    p: Variables  # physical parameters (SI units; see :func:`parameter_values`)
    rhs: ca.SX
    outputs: dict[str, ca.SX]

    @cached_property
    def f(self) -> ca.Function:
        """``dxdt = f(x, u, d, p)``."""
        return ca.Function("f", [self.x.sym, self.u.sym, self.d.sym, self.p.sym], [self.rhs],
                           ["x", "u", "d", "p"], ["dxdt"])

    @cached_property
    def output_names(self) -> tuple[str, ...]:
        return tuple(self.outputs)

    @cached_property
    def g(self) -> ca.Function:
        """All algebraic outputs stacked in :attr:`output_names` order: ``y = g(x, u, d, p)``."""
        return ca.Function("g", [self.x.sym, self.u.sym, self.d.sym, self.p.sym],
                           [ca.vertcat(*self.outputs.values())], ["x", "u", "d", "p"], ["y"])


def declare(house: House) -> SymbolicModel:
    """Declare the symbolic model of ``house`` (structure only; values come from the house later)."""
    D = _Declarer()
    rooms = house.room_ids
    T_air = {r: D.add("x", f"T_air__{r}") for r in rooms}
    T_mass = {r: D.add("x", f"T_mass__{r}") for r in rooms}
    soc = D.add("x", "soc") if house.battery else None

    cars = [e.id for e in house.ev]
    for c in cars:  # (after soc: the indices before stay)
        D.add("x", f"ev_soc__{c}")

    P_heat = {r: D.add("u", f"P_heat__{r}") for r in rooms}
    P_ch = D.add("u", "P_ch") if house.battery else None
    P_dis = D.add("u", "P_dis") if house.battery else None
    P_ev = {c: D.add("u", f"P_ev__{c}") for c in cars}  # charging, AC side [W]

    T_out = D.add("d", "T_out")
    T_ground = D.add("d", "T_ground")
    I_sol = {r: D.add("d", f"I_sol__{r}") for r in rooms}
    Q_int = {r: D.add("d", f"Q_int__{r}") for r in rooms}
    P_pv = D.add("d", "P_pv")
    P_load = D.add("d", "P_load")
    tod = [D.add("d", n) for n in TIME_OF_DAY]
    ev_drive = {}
    for c in cars:
        D.add("d", f"ev_plugged__{c}")  # share of the step plugged in [0–1]: the charger's limit (plant, OCP)
        ev_drive[c] = D.add("d", f"ev_drive_w__{c}")  # energy driven, as a mean power over the arrival step [W]
        D.add("d", f"ev_need_wh__{c}")  # energy wanted on board at each departure [Wh] (the controllers')

    par = {}
    for r in rooms:
        for name in _ROOM_PARAMS:
            par[f"{name}__{r}"] = D.add("p", f"{name}__{r}")
    H_nb = {(a, b): D.add("p", f"H__{a}__{b}") for a, b in house.couplings()}

    if house.heating.kind == "heat_pump":
        eta_c = D.add("p", "hp_eta_carnot")
        t_sup = D.add("p", "hp_supply_c")
        cop_max = D.add("p", "hp_cop_max")
        lift = ca.fmax(t_sup - T_out, 1.0)
        cop = ca.fmin(cop_max, ca.fmax(1.0, eta_c * (t_sup + T_ZERO_K) / lift))
    else:
        cop = 1.0

    outputs: dict[str, ca.SX] = {}
    rhs_air, rhs_mass = {}, {}
    for r in rooms:
        p = {name: par[f"{name}__{r}"] for name in _ROOM_PARAMS}
        q_heat = p["eta_heat"] * cop * P_heat[r]
        q_sol = p["A_sol"] * I_sol[r]
        outputs[f"Q_heat__{r}"] = q_heat
        outputs[f"Q_sol__{r}"] = q_sol
        q_nb = 0
        for (a, b), h in H_nb.items():
            if r == a:
                q_nb += h * (T_air[b] - T_air[a])
            elif r == b:
                q_nb += h * (T_air[a] - T_air[b])
        q_am = p["H_am"] * (T_mass[r] - T_air[r])
        q_prof = p["g0"] + sum(p[g] * t for g, t in zip(_GAIN_HARMONICS, tod))
        outputs[f"Q_prof__{r}"] = q_prof
        rhs_air[r] = (q_am + p["H_out"] * (T_out - T_air[r]) + q_nb
                      + (1 - p["f_sol_mass"]) * q_sol + Q_int[r] + q_prof
                      + (1 - p["f_heat_mass"]) * q_heat) / p["C_air"]
        rhs_mass[r] = (-q_am + p["H_ground"] * (T_ground - T_mass[r])
                       + p["f_sol_mass"] * q_sol + p["f_heat_mass"] * q_heat) / p["C_mass"]

    rhs = [rhs_air[r] for r in rooms] + [rhs_mass[r] for r in rooms]
    p_bat = 0
    if house.battery:
        cap = D.add("p", "bat_capacity_wh")
        eta_ch = D.add("p", "bat_eta_ch")
        eta_dis = D.add("p", "bat_eta_dis")
        p_self = D.add("p", "bat_self_discharge_w")
        rhs.append((eta_ch * P_ch - P_dis / eta_dis - p_self) / (3600.0 * cap))
        p_bat = P_ch - P_dis
    p_loss = D.add("p", "inv_standby_w") if house.has_inverter else 0
    p_ev = 0
    for c in cars:
        cap_ev = D.add("p", f"ev_capacity_wh__{c}")
        eta_ev = D.add("p", f"ev_eta__{c}")
        rhs.append((eta_ev * P_ev[c] - ev_drive[c]) / (3600.0 * cap_ev))
        p_ev = p_ev + P_ev[c]

    p_heat_total = ca.sum1(ca.vertcat(*P_heat.values()))
    outputs["P_heat_total"] = p_heat_total
    outputs["P_bat"] = p_bat
    outputs["P_loss"] = p_loss
    if cars:
        outputs["P_ev"] = p_ev
    outputs["P_grid"] = P_load + p_heat_total + p_bat + p_ev - P_pv + p_loss
    outputs["COP"] = cop
    outputs = {k: ca.SX(v) for k, v in outputs.items()}

    return SymbolicModel(
        x=D.variables("x"), u=D.variables("u"), d=D.variables("d"), p=D.variables("p"),
        rhs=ca.vertcat(*rhs), outputs=outputs,
    )


_GAIN_HARMONICS = ("g1c", "g1s", "g2c", "g2s")
_ROOM_PARAMS = ("C_air", "C_mass", "H_am", "H_out", "H_ground", "A_sol", "f_sol_mass",
                "eta_heat", "f_heat_mass", "g0", *_GAIN_HARMONICS)
#: Disturbances giving the local time of day: cos/sin of one and two cycles a day.
TIME_OF_DAY = ("day_cos", "day_sin", "day2_cos", "day2_sin")


def parameter_values(house: House) -> dict[str, float]:
    """Values of every declared parameter: the house file's where given, priors otherwise."""
    values: dict[str, float] = {}
    for room in house.rooms:
        given = room.params.model_dump(exclude={"H_neighbour"})
        for name, prior in priors.room_priors(room, house).items():
            v = given.get(name)
            values[f"{name}__{room.id}"] = float(prior if v is None else v)
    for a, b in house.couplings():
        ra, rb = house.room(a), house.room(b)
        h = ra.params.H_neighbour.get(b, rb.params.H_neighbour.get(a))
        values[f"H__{a}__{b}"] = float(priors.coupling_prior(ra, rb) if h is None else h)
    if house.heating.kind == "heat_pump":
        values["hp_eta_carnot"] = house.heating.eta_carnot
        values["hp_supply_c"] = house.heating.supply_temp_c
        values["hp_cop_max"] = house.heating.cop_max
    if house.battery:
        b = house.battery
        values["bat_capacity_wh"] = b.capacity_kwh * 1000.0
        values["bat_eta_ch"] = b.eta_charge
        values["bat_eta_dis"] = b.eta_discharge
        values["bat_self_discharge_w"] = b.self_discharge_w
    if house.has_inverter:
        values["inv_standby_w"] = house.inverter.standby_w if house.inverter else 10.0
    for e in house.ev:
        values[f"ev_capacity_wh__{e.id}"] = e.capacity_kwh * 1000.0
        values[f"ev_eta__{e.id}"] = e.eta_charge
    return values


@dataclass(frozen=True)
class Limits:
    """The home's physical limits, declared once beside the equations [W, 0–1].

    Every user reads them here and nowhere else: the simulated plant enforces them, the OCP and
    the oracle obey them, the emulated inverter and the live loop's safety layer clip to them.
    ``None`` means no limit (no battery, no fuse given, ...).

    Attributes
    ----------
    heater_w
        Electric rating of each room's heater circuit, room order [W]; 0 with the heating off.
    max_charge_w, max_discharge_w
        Battery power on its AC side [W].
    soc_min, soc_max
        Battery state-of-charge window [0–1].
    import_limit_w
        Main fuse: the most the home may draw from the grid [W].
    export_limit_w
        Feed-in limit [W]: beyond it the inverter curtails PV.
    inverter_ac_w
        AC rating of the hybrid inverter shared by PV and battery [W]: ``|P_pv − P_bat| ≤`` it.
        The inverter's own rating, else the PV arrays' DC rating; ``None`` without PV or inverter.
    """

    heater_w: tuple[float, ...]
    max_charge_w: float | None = None
    max_discharge_w: float | None = None
    soc_min: float | None = None
    soc_max: float | None = None
    import_limit_w: float | None = None
    export_limit_w: float | None = None
    inverter_ac_w: float | None = None
    ev_max_w: tuple[float, ...] = ()

    @classmethod
    def of(cls, house: House) -> Limits:
        """The limits a house file declares (ratings, battery, grid connection, inverter)."""
        b, inv = house.battery, house.inverter
        ac = inverter_ac_limit(house.pv, inv) or None  # None: no PV and no inverter rating
        return cls(
            heater_w=tuple(float(r.heater_w) for r in house.rooms),
            max_charge_w=b.max_charge_w if b else None, max_discharge_w=b.max_discharge_w if b else None,
            soc_min=b.soc_min if b else None, soc_max=b.soc_max if b else None,
            import_limit_w=house.grid.import_limit_w, export_limit_w=house.grid.export_limit_w,
            inverter_ac_w=ac, ev_max_w=tuple(e.charger.max_w for e in house.ev),
        )


@dataclass(frozen=True)
class HouseModel:
    """The symbolic model of one house with numeric parameter values and input bounds.

    This is what the simulator, controllers and calibration receive. ``p`` follows
    ``sym.p.names``; bounds follow ``sym.u.names``.
    """

    house: House
    sym: SymbolicModel
    p: np.ndarray
    limits: Limits
    heating_enabled: bool = True
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def u_min(self) -> np.ndarray:
        """Lower bounds of the inputs (``sym.u`` order) [W]: every input is a non-negative power."""
        return np.zeros(len(self.sym.u))

    @property
    def u_max(self) -> np.ndarray:
        """Upper bounds of the inputs (``sym.u`` order) [W]: heater ratings, battery powers."""
        lim = self.limits
        bat = [lim.max_charge_w, lim.max_discharge_w] if self.has_battery else []
        return np.array([*lim.heater_w, *bat, *lim.ev_max_w], dtype=float)

    @property
    def rooms(self) -> tuple[str, ...]:
        return self.house.room_ids

    @property
    def n_rooms(self) -> int:
        return len(self.house.rooms)

    @property
    def has_battery(self) -> bool:
        return self.house.battery is not None

    # Index helpers: states are ordered [T_air (rooms), T_mass (rooms), soc], inputs [P_heat (rooms), P_ch, P_dis].
    @property
    def air(self) -> slice:
        return slice(0, self.n_rooms)

    @property
    def mass(self) -> slice:
        return slice(self.n_rooms, 2 * self.n_rooms)

    @property
    def heat(self) -> slice:
        return slice(0, self.n_rooms)

    @property
    def i_soc(self) -> int | None:
        return self.sym.x.index("soc") if self.has_battery else None

    @property
    def cars(self) -> tuple[str, ...]:
        return tuple(e.id for e in self.house.ev)

    @property
    def i_ev_soc(self) -> list[int]:
        """The cars' state-of-charge states (house order)."""
        return [self.sym.x.index(f"ev_soc__{c}") for c in self.cars]

    @property
    def i_ev(self) -> list[int]:
        """The cars' charging inputs (house order)."""
        return [self.sym.u.index(f"P_ev__{c}") for c in self.cars]

    @property
    def heater_w(self) -> np.ndarray:
        return self.u_max[self.heat].copy()

    def param(self, name: str) -> float:
        return float(self.p[self.sym.p.index(name)])

    def params(self) -> dict[str, float]:
        return dict(zip(self.sym.p.names, self.p.tolist()))

    def with_parameters(self, values: Mapping[str, float]) -> HouseModel:
        """A copy with some parameters replaced (unknown names raise ``KeyError``)."""
        p = self.p.copy()
        for k, v in values.items():
            p[self.sym.p.index(k)] = float(v)
        return replace(self, p=p, _cache={})

    def with_limits(self, **changes: float | None) -> HouseModel:
        """A copy with some limits replaced (names of :class:`Limits`), e.g. ``soc_max=0.8``."""
        return replace(self, limits=replace(self.limits, **changes), _cache={})

    def without_heating(self) -> HouseModel:
        """A copy whose heaters cannot be switched on (heating season over)."""
        off = replace(self.limits, heater_w=(0.0,) * self.n_rooms)
        return replace(self, limits=off, heating_enabled=False, _cache={})


def build_model(house: House) -> HouseModel:
    """Declare the model of ``house`` and attach its parameter values and input bounds."""
    sym = declare(house)
    values = parameter_values(house)
    p = np.array([values[n] for n in sym.p.names], dtype=float)
    return HouseModel(house=house, sym=sym, p=p, limits=Limits.of(house))
