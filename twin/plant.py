"""The simulated home: the twin as a plant with the ``reset``/``step`` protocol of a real one.

The controller acts once per control step (15 minutes by default); inside the step the plant runs
at a fine step (1 minute) where the home's own devices act: relays realise duty cycles or follow
the room thermostats' hysteresis, the inverter runs its "load first" logic, and every physical
limit is enforced (heater ratings, battery power, SOC and inverter limits, the main fuse and the
export limit). Disturbances (weather, PV, load) are held at their step average.

Each fine step uses the exact discretisation of the model's linear part (:mod:`pems.twin.linear`):
one matrix–vector product per fine step for the whole house, the same for 2 rooms or 40.
Everything the plant does to a command (clipping, load shedding, PV curtailment) is logged.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd

from pems.twin.linear import MAP_CHUNK, ModelStructureError, affine_form, chunked, zoh
from pems.twin.model import HouseModel
from pems.twin.signals import Action, Forecast, Observation
from pems.twin.thermostat import Thermostat


@runtime_checkable
class Plant(Protocol):
    """A home, simulated or real: ``reset`` then ``step`` once per control step."""

    def reset(self) -> Observation: ...

    def step(self, action: Action) -> Observation: ...


@dataclass(frozen=True)
class Turn:
    """One control step of a closed loop, as the driver saw it."""

    k: int  # step number
    observation: Observation
    forecast: Forecast | None
    action: Action
    compute_s: float  # wall time the decision took [s]


Decide = Callable[[int, Observation], tuple["Forecast | None", Action]]


def closed_loop(plant: Plant, decide: Decide, n_steps: int | None, after: Callable[[Turn], None] | None = None,
                stop: threading.Event | None = None) -> int:
    """The one closed loop of every run: observe, decide, act, for ``n_steps`` (None: until ``stop``).

    ``pems simulate`` runs it on a :class:`SimulatedHome`; ``pems live`` on a live home wrapped in its
    safety and logging layers (:mod:`pems.live.home`): only the plant differs.

    Parameters
    ----------
    plant
        The home.
    decide
        ``(k, observation) → (forecast, action)``: the controller's turn.
    n_steps
        Steps to run (None: until ``stop`` is set).
    after
        Called with each :class:`Turn` before its action goes to the plant.
    stop
        Ends the loop after the current step.

    Returns
    -------
    int
        Steps run.
    """
    obs = plant.reset()
    k = 0
    while (n_steps is None or k < n_steps) and not (stop is not None and stop.is_set()):
        t0 = time.perf_counter()
        fc, action = decide(k, obs)
        turn = Turn(k, obs, fc, action, time.perf_counter() - t0)
        if after is not None:
            after(turn)
        obs = plant.step(action)
        k += 1
    return k


@dataclass
class StepLog:
    """Per-step records, preallocated for the whole run (averages over each step)."""

    x_mean: np.ndarray  # (N, n_x)
    x_end: np.ndarray  # (N, n_x)
    u_mean: np.ndarray  # (N, n_u) [W]
    heat_cmd: np.ndarray  # (N, n_rooms) [W] what was asked (thermostats: what they asked)
    bat_cmd: np.ndarray  # (N,) [W]
    pv: np.ndarray  # (N,) PV actually used, after curtailment [W]
    grid: np.ndarray  # (N,) [W]
    setpoint: np.ndarray  # (N, n_rooms) thermostat set-point in force, NaN in power mode [°C]
    curtailed_wh: np.ndarray  # (N,)
    shed_wh: np.ndarray  # (N,)
    relay_switches: np.ndarray  # (N,)
    events: list[dict] = field(default_factory=list)

    def clear(self) -> None:
        """Back to empty, in place (a year's log is 35 MB: not made twice for a reset)."""
        for f in fields(self):
            a = getattr(self, f.name)
            if isinstance(a, np.ndarray):
                a.fill(0 if f.name in ("curtailed_wh", "shed_wh", "relay_switches") else np.nan)
        self.events.clear()

    @classmethod
    def empty(cls, n: int, n_x: int, n_u: int, n_rooms: int) -> StepLog:
        nan = np.full
        return cls(
            x_mean=nan((n, n_x), np.nan), x_end=nan((n, n_x), np.nan), u_mean=nan((n, n_u), np.nan),
            heat_cmd=nan((n, n_rooms), np.nan), bat_cmd=nan(n, np.nan), pv=nan(n, np.nan),
            grid=nan(n, np.nan), setpoint=nan((n, n_rooms), np.nan), curtailed_wh=np.zeros(n),
            shed_wh=np.zeros(n), relay_switches=np.zeros(n, dtype=np.int64),
        )


#: Steps whose disturbance terms the plant makes at once (:meth:`SimulatedHome._mc`).
MC_CHUNK = MAP_CHUNK


class SimulatedHome:
    """The twin of a house driven by a disturbance table.

    Parameters
    ----------
    model
        The house model (parameters, bounds).
    disturbances
        One row per control step (index: step start, UTC) with every name in
        ``model.sym.d.names`` as a column; rows beyond the run are ignored.
    x0
        Initial state in ``model.sym.x.names`` order [°C, soc].
    step_s, substep_s
        Control step and plant step [s]; the first must be a multiple of the second.
    relay0
        The thermostats' relays at the start (default open).
    d_table
        ``disturbances`` as an array in model order, when the caller holds it already (a year of
        the reference house is 12 MB; the plant only reads it).
    """

    def __init__(self, model: HouseModel, disturbances: pd.DataFrame, x0: np.ndarray,
                 step_s: float = 900.0, substep_s: float = 60.0, relay0: np.ndarray | None = None,
                 d_table: np.ndarray | None = None) -> None:
        n_sub = step_s / substep_s
        if abs(n_sub - round(n_sub)) > 1e-9 or n_sub < 1:
            raise ValueError(f"control step {step_s} s is not a multiple of the plant step {substep_s} s")
        self.model = model
        self.step_s, self.substep_s, self.n_sub = float(step_s), float(substep_s), int(round(n_sub))
        self.index = pd.DatetimeIndex(disturbances.index)
        self._shared = d_table is not None and d_table.shape == (len(disturbances), len(model.sym.d.names))
        if self._shared:
            self.D = d_table  # the same table a forecast already holds as an array: shared, not copied
        else:
            self.D = disturbances[list(model.sym.d.names)].to_numpy(dtype=float)
        if not np.isfinite(self.D).all():
            bad = [c for c in model.sym.d.names if not np.isfinite(disturbances[c]).all()]
            raise ValueError(f"disturbances contain NaN/inf in {bad}")
        self.x0 = np.asarray(x0, dtype=float).copy()
        # the thermostats' relays at the start (their hysteresis remembers them; default open)
        self.relay0 = np.zeros(model.n_rooms, dtype=bool) if relay0 is None else np.asarray(relay0, dtype=bool).copy()
        self._prepare()
        self.reset()

    # ------------------------------------------------------------------ set-up
    def _prepare(self) -> None:
        m, form = self.model, affine_form(self.model)
        nx = len(m.sym.x)
        self.nx = nx
        disc = zoh(form.A, self.substep_s)
        # Stacked maps: y = [x_next; x_mean] = Mx x + Mw w
        self._Mx = np.vstack([disc.Ad, disc.Phi_mean])
        self._Mw = np.vstack([disc.Gamma, disc.Gamma_mean])
        self._form = form
        self._B_const = None if form.B_depends_on_d else form.B(self.D[:1])[0]
        self._i_grid = m.sym.output_names.index("P_grid")
        self._G_const = None if form.G_depends_on_d else form.G(self.D[:1])[0]
        self._grid0 = self._form.y0(self.D, [self._i_grid])[:, 0]
        self._mc_from = -1  # the disturbances' part of each step, made a chunk of steps at a time
        # Sensitivity of the grid to PV (for curtailment), from the model's affine output map.
        d1 = self.D[:1].copy()
        d1[0, m.sym.d.index("P_pv")] += 1.0
        self._dgrid_dpv = float(form.y0(d1)[0, self._i_grid] - self._grid0[0])
        self._i_pv = m.sym.d.index("P_pv")
        self._rating = m.u_max[m.heat].copy()
        self._thermostat = Thermostat(m.house.heating.thermostat_hysteresis_k)
        bat = m.house.battery
        self._bat = bat
        self._M_const = None
        if bat is not None:
            self._i_ch, self._i_dis = m.sym.u.index("P_ch"), m.sym.u.index("P_dis")
            self._i_soc = m.sym.x.index("soc")
            g = self._step_maps(0)[1]
            if abs(g[self._i_ch] - 1.0) > 1e-12 or abs(g[self._i_dis] + 1.0) > 1e-12:
                raise ModelStructureError("battery powers must enter P_grid one to one (AC side)")
        lim = m.limits
        self._limits = lim
        self._inv_ac, self._imp_lim, self._exp_lim = lim.inverter_ac_w, lim.import_limit_w, lim.export_limit_w
        # the cars: their chargers, states, inputs and the disturbances that say when they are home
        self._cars = list(m.house.ev)
        if self._cars:
            dn = m.sym.d.names
            self._i_ev_u = [len(m.sym.x) + i for i in m.i_ev]  # in z = [x; u]
            self._i_ev_x = m.i_ev_soc
            self._i_plug = [dn.index(f"ev_plugged__{c}") for c in m.cars]
            g = self._step_maps(0)[1]
            if any(abs(g[i] - 1.0) > 1e-12 for i in m.i_ev):
                raise ModelStructureError("a car's charging power must enter P_grid one to one")
            # AC energy that fills a car from empty [Wh], from the one model's SOC rate per watt charged
            B = np.asarray(self._form.B(self.D[:1]))[0]
            self._ev_wh_per_w = [1.0 / (3600.0 * B[ix, iu]) for ix, iu in zip(m.i_ev_soc, m.i_ev)]

    def _mc(self, k: int) -> np.ndarray:
        """The disturbances' part of ``[x_next; x_mean]`` at step ``k`` (2 n_x,), from ``c(d)``.

        Made for :data:`MC_CHUNK` steps at a time as the run reaches them: a year's table of it would
        be 20 MB per run held for nothing but the step at hand."""
        a = self._mc_from
        if a < 0 or not 0 <= k - a < len(self._Mc_chunk):
            a = k
            self._Mc_chunk = self._form.c(self.D[a:a + MC_CHUNK]) @ self._Mw.T
            self._mc_from = a
        return self._Mc_chunk[k - a]

    def _step_maps(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(M_k = [Mx | Mw B_k], grid row of G_k) for step ``k``: ``[x_next; x_mean] = M_k [x; u] + Mc_k``."""
        const = self._B_const is not None and self._G_const is not None
        if const and getattr(self, "_M_const", None) is not None:
            return self._M_const, self._g_const
        B = self._B_const if self._B_const is not None else self._form.B(self.D[k:k + 1])[0]
        G = self._G_const if self._G_const is not None else self._form.G(self.D[k:k + 1])[0]
        M = np.hstack([self._Mx, self._Mw @ B])
        g = G[self._i_grid].copy()
        if const:
            self._M_const, self._g_const = M, g
        return M, g

    def next_step(self, time: pd.Timestamp, d: np.ndarray) -> None:
        """Give the next step's disturbances as the step comes, for a home driven by what is measured
        as it happens rather than by a table known ahead (the live loop's counterfactual twin).

        Only for a home built on a one-row table: that row (and the step's start) is replaced and
        reused; the state carries on. The per-step log keeps the last step only.
        """
        if len(self.D) != 1:
            raise RuntimeError("next_step drives a home built on a one-row disturbance table")
        d = np.asarray(d, dtype=float)
        if d.shape != (self.D.shape[1],) or not np.isfinite(d).all():
            raise ValueError(f"a step's disturbances must be {self.D.shape[1]} finite numbers")
        if self._shared or not self.D.flags.writeable:  # (the caller's table, or a view of it)
            self.D = self.D.copy()
            self._shared = False
        self.D[0] = d
        self.index = pd.DatetimeIndex([time])
        self._grid0 = self._form.y0(self.D, [self._i_grid])[:, 0]
        self._mc_from = -1
        self.log.events.clear()
        self.k = 0

    def restart(self, x: np.ndarray) -> Observation:
        """Put the home in state ``x`` (model order; relays open) at its current step, without a new
        set-up; returns what it measures then (the live loop's counterfactual after a gap)."""
        self.x = np.asarray(x, dtype=float).copy()
        self.relay[:] = False
        self.k = 0
        return self._observe(None)

    # ------------------------------------------------------------------ protocol
    def reset(self) -> Observation:
        self.k = 0
        self.x = self.x0.copy()
        self.relay = self.relay0.copy()
        lg = getattr(self, "log", None)
        if lg is not None and lg.x_mean is not None and len(lg.x_mean) == len(self.D):
            lg.clear()
        else:
            self.log = StepLog.empty(len(self.D), self.nx, len(self.model.sym.u), self.model.n_rooms)
        return self._observe(None)

    @property
    def done(self) -> bool:
        return self.k >= len(self.D)

    def _observe(self, k_done: int | None) -> Observation:
        m = self.model
        t = self.index[self.k] if self.k < len(self.index) else self.index[-1] + pd.Timedelta(seconds=self.step_s)
        soc = float(self.x[m.i_soc]) if m.has_battery else None
        if k_done is None:
            return Observation(time=t, T_room=self.x[m.air].copy(), soc=soc,
                               T_out=float(self.D[0, m.sym.d.index("T_out")]),
                               P_heat=np.zeros(m.n_rooms), **self._cars_now(None))
        lg, u = self.log, self.log.u_mean[k_done]
        p_bat = float(u[self._i_ch] - u[self._i_dis]) if m.has_battery else 0.0
        return Observation(
            time=t, T_room=self.x[m.air].copy(), soc=soc,
            T_out=float(self.D[k_done, m.sym.d.index("T_out")]),
            P_pv=float(lg.pv[k_done]), P_load=float(self.D[k_done, m.sym.d.index("P_load")]),
            P_grid=float(lg.grid[k_done]), P_bat=p_bat, P_heat=u[m.heat].copy(), **self._cars_now(u),
        )

    def _cars_now(self, u: np.ndarray | None) -> dict:
        """What the cars report at the coming step's start (none without a car)."""
        m = self.model
        if not self._cars:
            return {}
        k = min(self.k, len(self.D) - 1)
        return {"ev_soc": self.x[self._i_ev_x].copy(),
                "ev_plugged": np.array([self.D[k, i] > 0.5 for i in self._i_plug]),
                "P_ev": np.zeros(len(self._cars)) if u is None else u[m.i_ev].copy()}

    def _heating_plan(self, action: Action, t0: pd.Timestamp) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Thermostat set-points, or the per-fine-step heater powers of a power command."""
        lg, m, nr, n, k = self.log, self.model, self.model.n_rooms, self.n_sub, self.k
        if action.heat_setpoint_c is not None:
            sp = np.asarray(action.heat_setpoint_c, dtype=float)
            if not np.isfinite(sp).all():
                lg.events.append({"time": t0, "kind": "nan_command", "what": "heat_setpoint_c"})
                sp = np.where(np.isfinite(sp), sp, -np.inf)  # a NaN set-point leaves the room unheated
            lg.setpoint[k] = sp
            return sp, None
        cmd = np.zeros(nr) if action.heat_w is None else np.asarray(action.heat_w, dtype=float)
        lg.heat_cmd[k] = cmd
        if not np.isfinite(cmd).all():
            lg.events.append({"time": t0, "kind": "nan_command", "what": "heat_w"})
        safe = np.where(np.isfinite(cmd), cmd, 0.0)
        rating = self._rating
        clipped = np.clip(safe, 0.0, rating)
        over = np.flatnonzero(np.abs(clipped - safe) > 1e-9)
        if over.size:
            lg.events.append({"time": t0, "kind": "clip_heat", "rooms": [m.rooms[i] for i in over],
                              "requested_w": safe[over].round(1).tolist(),
                              "applied_w": clipped[over].round(1).tolist()})
        duty = np.divide(clipped, rating, out=np.zeros(nr), where=rating > 0)
        # Relay closed for duty × step from the start of the step; a partial fine step carries its
        # mean power so that the energy is exact.
        frac = np.clip(duty[None, :] * n - np.arange(n)[:, None], 0.0, 1.0)
        return None, frac * rating[None, :]

    def step(self, action: Action) -> Observation:
        """Advance one control step under ``action``; returns what the home measures next."""
        if self.done:
            raise RuntimeError("the simulation has reached the end of its disturbance table")
        k, m, n, nr, nx = self.k, self.model, self.n_sub, self.model.n_rooms, self.nx
        lg, t0 = self.log, self.index[k]
        M, g_u = self._step_maps(k)
        mc = self._mc(k)
        g_heat = g_u[m.heat]
        rating = self._rating
        sp, H = self._heating_plan(action, t0)
        thermostat = sp is not None
        if thermostat:
            on_below, off_above = self._thermostat.bounds(sp)

        bat = self._bat
        bat_cmd = action.bat_w
        if bat_cmd is not None and not math.isfinite(bat_cmd):
            lg.events.append({"time": t0, "kind": "nan_command", "what": "bat_w"})
            bat_cmd = 0.0
        if bat is not None:
            i_soc, i_ch, i_dis = self._i_soc, nx + self._i_ch, nx + self._i_dis
            soc_row = M[i_soc]
            s_ch, s_dis = M[i_soc, i_ch], -M[i_soc, i_dis]
            lim = self._limits
            soc_min, soc_max = lim.soc_min, lim.soc_max
            max_ch, max_dis = lim.max_charge_w, lim.max_discharge_w
            mc_soc = mc[i_soc]

        pv_avail = self.D[k, self._i_pv]
        inv_ac, imp_lim, exp_lim = self._inv_ac, self._imp_lim, self._exp_lim
        dgdpv = self._dgrid_dpv
        grid0 = self._grid0[k]
        # z = [x; u]: one matrix–vector product per fine step advances the whole house.
        z = np.zeros(nx + len(m.sym.u))
        z[:nx] = self.x
        # the cars charge at a power held over the step (their chargers' limits applied), unless the
        # main fuse needs it: the wallbox's load management cuts it first, then the heating is shed
        ev_req = self._ev_powers(action, k, t0) if self._cars else []
        ev_total = float(sum(ev_req))
        ev_w = ev_total
        zh = z[nx:nx + nr]  # heater powers (a view)
        T = z[:nr]  # room air temperatures (a view)
        relay = self.relay.copy()
        new, upper, flipped = np.empty(nr, bool), np.empty(nr, bool), np.empty(nr, bool)
        y = np.empty(2 * nx)
        x_sum = np.zeros(nx)
        u_sum = np.zeros(len(m.sym.u))
        shed_rooms = np.zeros(nr)
        pv_sum = grid_sum = req_sum = curt = shed = bat_clipped = 0.0
        switches = 0
        if not thermostat:  # commanded powers: the relays follow the plan, known before the loop
            closed = H > 0.0  # a relay closed for any part of the fine step
            switches = int(np.count_nonzero(closed[0] != relay) + np.count_nonzero(closed[1:] != closed[:-1]))
            relay = closed[-1].copy()

        for j in range(n):
            if thermostat:
                Thermostat.switch(T, relay, on_below, off_above, out=new, scratch=upper)
                np.not_equal(new, relay, out=flipped)
                switches += int(np.count_nonzero(flipped))
                relay, new = new, relay
                np.multiply(relay, rating, out=zh)
            else:
                zh[:] = H[j]
            if ev_req:
                for i, p_req in zip(self._i_ev_u, ev_req):
                    z[i] = p_req
                ev_w = ev_total
            g_nb = grid0 + float(g_heat @ zh) + ev_w  # grid without battery, PV available
            pv = pv_avail
            if bat is not None:
                z[i_ch] = z[i_dis] = 0.0
                soc_base = float(soc_row @ z) + mc_soc
                lo, hi = -max_dis, max_ch
                if inv_ac is not None:
                    lo, hi = max(lo, pv - inv_ac), min(hi, pv + inv_ac)
                lo = max(lo, -(soc_base - soc_min) / s_dis if soc_base >= soc_min else (soc_min - soc_base) / s_ch)
                hi = min(hi, (soc_max - soc_base) / s_ch if soc_base <= soc_max else -(soc_base - soc_max) / s_dis)
                req = -g_nb if bat_cmd is None else bat_cmd
            else:
                lo = hi = req = 0.0
            # Main fuse: if even the least battery charging overloads it, cut the cars, then shed heating.
            if ev_req and imp_lim is not None and g_nb + lo > imp_lim and ev_w > 0:
                ev_w = self._ev_within_fuse(z, ev_req, g_nb + lo - imp_lim)
                g_nb = grid0 + float(g_heat @ zh) + ev_w
            if imp_lim is not None and g_nb + lo > imp_lim + (1e-6 if ev_req else 0.0):  # (the cut's rounding)
                tot = float(zh.sum())
                cut = min(g_nb + lo - imp_lim, tot)
                if cut > 0:
                    before = zh.copy()
                    zh *= 1.0 - cut / tot
                    shed_rooms += before - zh
                    shed += cut
                    g_nb = grid0 + float(g_heat @ zh) + ev_w
            if imp_lim is not None:
                hi = min(hi, imp_lim - g_nb)
            # Export limit: if even the most battery charging over-exports, curtail PV.
            if exp_lim is not None and g_nb + hi < -exp_lim:
                c = min(-exp_lim - (g_nb + hi), pv)
                pv -= c
                curt += c
                g_nb -= dgdpv * c
            if exp_lim is not None:
                lo = max(lo, -exp_lim - g_nb)
            if hi < lo:  # only when a limit cannot be met at all; the SOC bound wins
                hi = lo
            p = min(max(req, lo), hi)
            if bat is not None:
                req_sum += req
                if bat_cmd is not None:
                    bat_clipped = max(bat_clipped, abs(p - req))
                if p >= 0:
                    z[i_ch] = p
                else:
                    z[i_dis] = -p
            np.dot(M, z, out=y)
            y += mc
            z[:nx] = y[:nx]
            x_sum += y[nx:]
            u_sum += z[nx:]
            pv_sum += pv
            grid_sum += g_nb + p  # the battery's AC power enters the grid one to one

        self.x = z[:nx].copy()
        for j, car in enumerate(self._cars):  # a trip that took more than the car had: it came back empty
            i = self._i_ev_x[j]
            if self.x[i] < 0.0:
                lg.events.append({"time": t0, "kind": "ev_empty", "car": car.id,
                                  "missing_kwh": round(-float(self.x[i]) * car.capacity_kwh, 3)})
                self.x[i] = 0.0
        self.relay = relay
        inv_n = 1.0 / n
        lg.x_mean[k] = x_sum * inv_n
        lg.x_end[k] = self.x
        u = u_sum * inv_n
        lg.u_mean[k] = u
        if thermostat:
            lg.heat_cmd[k] = u[m.heat] + shed_rooms * inv_n
        lg.bat_cmd[k] = req_sum * inv_n if bat is not None else np.nan
        lg.pv[k] = pv_sum * inv_n
        lg.grid[k] = grid_sum * inv_n
        h = self.substep_s / 3600.0
        lg.curtailed_wh[k] = curt * h
        lg.shed_wh[k] = shed * h
        lg.relay_switches[k] = switches
        if bat_clipped > 1.0:
            lg.events.append({"time": t0, "kind": "clip_battery", "requested_w": round(bat_cmd, 1),
                              "applied_w": round(float(u[self._i_ch] - u[self._i_dis]), 1)})
        if shed > 0:
            lg.events.append({"time": t0, "kind": "shed_heat", "energy_wh": round(shed * h, 2)})
        if curt > 0:
            lg.events.append({"time": t0, "kind": "curtail_pv", "energy_wh": round(curt * h, 2)})
        self.k += 1
        return self._observe(k)

    def _ev_within_fuse(self, z: np.ndarray, ev_req: list[float], over_w: float) -> float:
        """Cut the cars' charging by ``over_w`` (the last car first), each to a power its charger can
        give (0 below its minimum); sets them in ``z`` and returns their total [W]."""
        for j in range(len(ev_req) - 1, -1, -1):
            if over_w <= 0:
                break
            i, car = self._i_ev_u[j], self._cars[j]
            before = z[i]
            z[i] = car.charger.feasible(max(before - over_w, 0.0))
            over_w -= before - z[i]
        return float(sum(z[i] for i in self._i_ev_u))

    def ev_charging(self, ev_w: np.ndarray | None) -> np.ndarray:
        """What each car would take of ``ev_w`` over the coming step [W] (the charger's feasible power,
        plugged share, room left; before the main fuse's load management): for an inverter that sees
        the wallbox behind its meter (the emulator's)."""
        if not self._cars:
            return np.zeros(0)
        k = min(self.k, len(self.D) - 1)
        return np.asarray(self._ev_powers(Action(ev_w=ev_w), k, self.index[k]), dtype=float)

    def _ev_powers(self, action: Action, k: int, t0: pd.Timestamp) -> list[float]:
        """Each car's charging power over step ``k`` [W, AC]: what was asked (a plain wallbox's full
        power up to the car's target when nothing was), made feasible by the charger (0 below its
        minimum current, never above its maximum), while plugged in (the step's plugged share), and
        no more than the battery takes before it is full."""
        out = []
        h = self.step_s / 3600.0
        for j, car in enumerate(self._cars):
            soc = float(self.x[self._i_ev_x[j]])
            asked = None if action.ev_w is None else float(np.asarray(action.ev_w, dtype=float)[j])
            if asked is not None and not math.isfinite(asked):
                self.log.events.append({"time": t0, "kind": "nan_command", "what": f"ev_w[{car.id}]"})
                asked = 0.0
            if asked is None:  # a plain wallbox: full power until the car's own limit (its target)
                asked = car.charger.max_w if soc < car.target_soc else 0.0
            p = car.charger.feasible(asked) * float(self.D[k, self._i_plug[j]])
            room = max(0.0, (1.0 - soc) * self._ev_wh_per_w[j] / h)  # [W] until full
            out.append(min(p, room))
        return out

    # ------------------------------------------------------------------ results
    def outputs(self, names: Sequence[str] | None = None) -> pd.DataFrame:
        """Model outputs for every finished step, from the one output map of the declaration.

        Parameters
        ----------
        names
            The outputs wanted (default all, ``model.sym.output_names``); a year of the reference
            house's 56 is 16 MB.
        """
        m, lg, N = self.model, self.log, self.k
        all_names = m.sym.output_names
        names = tuple(all_names) if names is None else tuple(names)
        cols = [all_names.index(c) for c in names]
        y = np.empty((N, len(cols)))
        # By chunks: CasADi's map over every step at once holds its work buffers for all of them (a year
        # of the reference house: 450 MB for a 40 MB table).
        for a, b, f in chunked(m.sym.g, N):
            D = self.D[a:b].copy()
            D[:, self._i_pv] = lg.pv[a:b]
            y[a:b] = f(lg.x_mean[a:b].T, lg.u_mean[a:b].T, D.T, m.p).full().T[:, cols]
        return pd.DataFrame(y, index=self.index[:N], columns=list(names), copy=False)
