"""EMHASS as a peer controller, at its best: its MILP plans the rooms and the battery.

EMHASS (Energy Management for Home Assistant) optimises a battery and deferrable loads with a
mixed-integer linear program over PV, load, price and outdoor-temperature forecasts. It pins
libraries that conflict with ours, so it runs in its own virtual environment (``make bench-peers``
creates ``.venv-peers``) as a worker process (``bench/peers/emhass_worker.py``) that this controller
talks to over JSON lines.

``emhass`` gives each heated room to EMHASS as a **thermal deferrable load** (its ``thermal_config``:
one node per room, a heating rate and a cooling constant), with the parameters taken from the
calibrated twin (:func:`single_node_rooms`), the comfort band as EMHASS's hard band, and replans every
hour (EMHASS's MPC use, as Home Assistant automations run it), playing the plan's
heating powers and battery power step by step. Where EMHASS finds no plan (its hard band cannot be
met), the home's thermostats heat until the next plan, and the event says so.

``emhass-battery`` is EMHASS as the bench first ran it: the battery alone, planned once a day at
local midnight, with yesterday's heating at the same time as its load forecast, while the rule-based
thermostats heat.

What EMHASS is given is what an EMHASS user has: the scenario's PV, household-load, price and
outdoor-temperature forecasts and the rooms' measured temperatures; the plant enforces every limit. The
plans reach over the scenario's MPC horizon (24 h by default), as the MPC's do.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pems.controllers.rule_based import RuleBasedController
from pems.twin.model import HouseModel
from pems.twin.signals import Action, Forecast, Observation

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "bench" / "peers" / "emhass_worker.py"


def peers_python() -> Path | None:
    """The interpreter of the EMHASS environment (``$PEMS_EMHASS_PYTHON`` or ``.venv-peers``)."""
    env = os.environ.get("PEMS_EMHASS_PYTHON")
    for p in ([Path(env)] if env else []) + [REPO / ".venv-peers" / "bin" / "python",
                                             Path.cwd() / ".venv-peers" / "bin" / "python"]:
        if p.is_file() and WORKER.is_file():
            return p
    return None


@dataclass(frozen=True)
class SingleNodeRoom:
    """One room as EMHASS models a thermal load: ``dT/dt = heating_rate·P/P_nom − cooling·(T − T_out)``.

    Attributes
    ----------
    heating_rate
        Warming with the heater at its rating and no loss [K h⁻¹].
    cooling_constant
        Loss rate towards the outdoor temperature [h⁻¹].
    """

    room: str
    nominal_w: float
    heating_rate: float
    cooling_constant: float


def single_node_rooms(model: HouseModel, t_out: float, t_room: np.ndarray | None = None) -> list[SingleNodeRoom]:
    """The twin's rooms as single nodes, each from the one model: its air and slab capacities together;
    the heat a watt of heating delivers (``B`` of the model: efficiency, a heat pump's COP at ``t_out``);
    and the loss that holds the twin's steady state at ``t_out`` without sun or internal gains (through
    the envelope, to the ground and to the neighbours, as the whole house settles), per kelvin above
    ``t_out``. The long time constant and the steady heating need of each room are the twin's; the slab's
    lag between heater and air, which one node cannot have, is not.

    Parameters
    ----------
    t_out
        Outdoor temperature the loss is taken at [°C] (a plan's mean).
    t_room
        The rooms' temperatures the steady state holds [°C] (default 21).
    """
    from pems.twin.linear import affine_form
    from pems.twin.steady import steady_state

    names, n = model.sym.d.names, model.n_rooms
    d = np.zeros(len(names))
    d[names.index("T_out")] = t_out
    if "T_ground" in names:
        d[names.index("T_ground")] = model.house.site.ground_temperature_c
    target = np.full(n, 21.0) if t_room is None else np.asarray(t_room, dtype=float)
    _, u = steady_state(model, d, target)
    B = affine_form(model).B(d[None, :])[0]
    out = []
    for i, r in enumerate(model.rooms):
        c_air, c_mass = model.param(f"C_air__{r}"), model.param(f"C_mass__{r}")
        ia, im, j = model.air.start + i, model.mass.start + i, model.heat.start + i
        heat_per_w = B[ia, j] * c_air + B[im, j] * c_mass  # thermal W per electric W
        c = c_air + c_mass
        p_nom = float(model.u_max[j])
        loss_per_k = heat_per_w * max(float(u[i]), 0.0) / max(target[i] - t_out, 1.0)  # [W K⁻¹]
        out.append(SingleNodeRoom(r, p_nom, heat_per_w * p_nom * 3600.0 / c, max(loss_per_k, 0.0) * 3600.0 / c))
    return out


class EmhassPeer:
    """The ``emhass`` and ``emhass-battery`` controllers (available where the EMHASS environment exists).

    Parameters
    ----------
    rooms
        Give the rooms to EMHASS as thermal loads (``emhass``); else only the battery, the thermostats
        heating (``emhass-battery``).
    replan_minutes
        How often EMHASS plans again (with the rooms; default hourly). The battery alone is planned
        once a day at local midnight.
    """

    name = "emhass"

    def __init__(self, model: HouseModel, step_s: float = 900.0, rooms: bool = True,
                 replan_minutes: float = 60.0, horizon_hours: float = 24.0) -> None:
        python = peers_python()
        if python is None:
            raise RuntimeError("EMHASS is not installed: run `make bench-peers` (creates .venv-peers)")
        self.model = model
        self.step_s = float(step_s)
        self.python = python
        self.rooms = bool(rooms) and model.n_rooms > 0 and model.house.heating.kind is not None
        self.name = "emhass" if self.rooms else "emhass-battery"
        self.replan_steps = max(1, int(round(replan_minutes * 60.0 / self.step_s)))
        self.horizon_steps = max(2, int(round(horizon_hours * 3600.0 / self.step_s)))
        self.thermostats = RuleBasedController(model)
        self._proc: subprocess.Popen | None = None
        self.events: list[dict] = []
        self.solve_s: list[float] = []
        self.reset()

    # ------------------------------------------------------------------ worker process
    def _worker(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen([str(self.python), str(WORKER)], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            atexit.register(self.close)
        return self._proc

    def close(self) -> None:
        """End the worker process (a run ends it; one is started again when asked)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.stdin.close()
            self._proc.wait(timeout=10)
        self._proc = None
        atexit.unregister(self.close)

    def _ask(self, request: dict) -> dict:
        proc = self._worker()
        proc.stdin.write(json.dumps(request) + "\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the EMHASS worker exited")
        return json.loads(line)

    # ------------------------------------------------------------------ protocol
    def reset(self) -> None:
        self.thermostats.reset()
        self.plan: np.ndarray | None = None  # battery AC power per step, charge positive [W]
        self.heat_plan: np.ndarray | None = None  # (steps, rooms) heating power [W]
        self.plan_start = None
        self.heat_seen: dict[tuple[int, int], float] = {}  # (hour, minute) local -> heating [W]
        self.events = []
        self.solve_s = []
        self.k = 0

    def act(self, observation: Observation, forecast: Forecast) -> Action:
        if self.rooms:
            return self._act_rooms(observation, forecast)
        m = self.model
        tz = m.house.site.timezone
        now = observation.time.tz_convert(tz)
        if observation.P_heat is not None and self.k > 0:
            prev = now - pd.Timedelta(seconds=self.step_s)
            self.heat_seen[(prev.hour, prev.minute)] = float(np.sum(observation.P_heat))
        if self.k == 0 or (now.hour == 0 and now.minute == 0):  # day-ahead: once a day
            self._replan(observation, forecast)
        heating = self.thermostats.act(observation, forecast)
        j = self.k - self.plan_start
        bat = float(self.plan[j]) if self.plan is not None and j < len(self.plan) else None
        self.k += 1
        return Action(heat_setpoint_c=heating.heat_setpoint_c, bat_w=bat if m.has_battery else None)

    def _replan(self, obs: Observation, fc: Forecast) -> None:
        m = self.model
        # to the end of the next local day (EMHASS plans whole days), at most the forecast
        now = obs.time.tz_convert(m.house.site.timezone)
        end = (now + pd.Timedelta(days=1)).normalize() + pd.Timedelta(days=1) if now.hour >= 12 else \
            (now + pd.Timedelta(days=1)).normalize()
        n = min(int(round((end - now).total_seconds() / self.step_s)), len(fc))
        local = fc.index[:n].tz_convert(m.house.site.timezone)
        now_heat = float(np.sum(obs.P_heat)) if obs.P_heat is not None else 0.0
        heat = np.asarray([self.heat_seen.get((t.hour, t.minute), now_heat) for t in local])
        reply = self._plan_with(self._request(obs, fc, n, fc.column("P_load")[:n] + heat), obs)
        if not reply.get("ok"):  # the inverter's own "load first" until the next plan
            print(f"emhass: {reply.get('error')}", file=sys.stderr)

    def _request(self, obs: Observation, fc: Forecast, n: int, load_w: np.ndarray) -> dict:
        """The worker's request for the next ``n`` steps of ``fc`` (see ``bench/peers/emhass_worker.py``):
        times, PV, ``load_w``, prices, the battery from its SOC now back to it, the grid and inverter."""
        m = self.model
        b, lim = m.house.battery, m.limits
        return {
            "times": [t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in fc.index[:n].tz_convert("UTC")],
            "step_minutes": self.step_s / 60, "timezone": m.house.site.timezone,
            "pv_w": fc.column("P_pv")[:n].tolist(), "load_w": np.asarray(load_w, dtype=float).tolist(),
            "price_import": fc.price_import[:n].tolist(), "price_export": fc.price_export[:n].tolist(),
            "battery": None if b is None else {
                "capacity_kwh": b.capacity_kwh, "max_charge_w": lim.max_charge_w,
                "max_discharge_w": lim.max_discharge_w, "soc_min": lim.soc_min, "soc_max": lim.soc_max,
                "eta_charge": b.eta_charge, "eta_discharge": b.eta_discharge},
            "soc_init": obs.soc if b is not None else None, "soc_final": obs.soc if b is not None else None,
            "grid": {"import_limit_w": lim.import_limit_w, "export_limit_w": lim.export_limit_w},
            "inverter_ac_w": lim.inverter_ac_w,
        }

    def _plan_with(self, request: dict, obs: Observation) -> dict:
        """Ask the worker for a plan (timed) starting at this step; its battery plan, or none and a
        ``fallback`` event. Returns the reply."""
        t0 = time.perf_counter()
        try:
            reply = self._ask(request)
        except (OSError, RuntimeError, json.JSONDecodeError) as exc:
            reply = {"ok": False, "error": str(exc)}
        self.solve_s.append(time.perf_counter() - t0)
        self.plan_start = self.k
        if reply.get("ok"):
            self.plan = -np.asarray(reply["p_batt_w"], dtype=float)  # EMHASS: discharge positive
        else:
            self.plan = None
            self.events.append({"time": obs.time, "kind": "fallback", "controller": self.name,
                                "reason": f"EMHASS: {reply.get('error', '?')}"})
        return reply

    # ------------------------------------------------------------------ the rooms as thermal loads
    def _act_rooms(self, obs: Observation, fc: Forecast) -> Action:
        m = self.model
        if self.k == 0 or self.k - self.plan_start >= self.replan_steps:
            self._replan_rooms(obs, fc)
        j = self.k - self.plan_start
        self.k += 1
        bat = float(self.plan[j]) if self.plan is not None and j < len(self.plan) and m.has_battery else None
        if self.heat_plan is not None and j < len(self.heat_plan):
            return Action(heat_w=self.heat_plan[j].copy(), bat_w=bat)
        heating = self.thermostats.act(obs, fc)  # no plan: the home's thermostats
        return Action(heat_setpoint_c=heating.heat_setpoint_c, bat_w=bat)

    def _replan_rooms(self, obs: Observation, fc: Forecast) -> None:
        m = self.model
        n = min(self.horizon_steps, len(fc))
        t_out = np.asarray(fc.column("T_out")[:n], dtype=float)
        t_now = np.asarray(obs.T_room, dtype=float)
        # the loss at the plan's mean outdoor temperature, to the kelvin (EMHASS keeps a built problem
        # while its structure is unchanged)
        nodes = single_node_rooms(m, float(np.round(t_out.mean())))
        dt_h = self.step_s / 3600.0
        steps = np.arange(n)
        rooms, heated = [], []
        for i, node in enumerate(nodes):
            if node.nominal_w <= 0:  # a room without a heater is no load of EMHASS's
                continue
            heated.append(i)
            low, high = np.asarray(fc.low[:n, i], dtype=float), np.asarray(fc.high[:n, i], dtype=float)
            # EMHASS's band is hard: a room below it may climb at most at what its heater gives (with a margin:
            # at the very limit the solver calls it infeasible), one above it may stay
            climb = 0.8 * max(node.heating_rate - node.cooling_constant * max(t_now[i] - t_out.min(), 0.0), 0.0) * dt_h
            rooms.append({"id": node.room, "nominal_w": node.nominal_w, "heating_rate": node.heating_rate,
                          "cooling_constant": node.cooling_constant, "start_c": float(t_now[i]),
                          "min_c": np.minimum(low, t_now[i] + climb * steps).round(3).tolist(),
                          "max_c": np.maximum(high, t_now[i]).round(3).tolist()})
        request = self._request(obs, fc, n, fc.column("P_load")[:n])
        request.update(rooms=rooms, t_out=t_out.round(3).tolist())
        reply = self._plan_with(request, obs)
        if reply.get("ok"):
            self.heat_plan = np.zeros((n, m.n_rooms))
            self.heat_plan[:, heated] = np.clip(np.asarray(reply["p_heat_w"], dtype=float).T, 0.0, m.heater_w[heated])
        else:  # the thermostats and the inverter's own logic until the next plan
            self.heat_plan = None

