"""EMHASS as a peer controller: its LP schedules the battery, the home's thermostats heat.

EMHASS (Energy Management for Home Assistant) optimises a battery (and deferrable loads) with a
linear program over PV, load and price forecasts, once a day ("day-ahead"). It pins libraries that
conflict with ours, so it runs in its own virtual environment (``make bench-peers`` creates
``.venv-peers``) as a worker process (``bench/peers/emhass_worker.py``) that this controller talks
to over JSON lines.

What EMHASS is given is what an EMHASS user has: the scenario's PV, household-load and price
forecasts, and a "naive" forecast of the house's heating (the heating measured at the same time
the day before; on the first day, the heating measured now). Heating itself stays with the
rule-based thermostats: EMHASS has no thermal model of the rooms. Its plan is re-made every day
at local midnight and played back step by step; the plant enforces every limit.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import time
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


class EmhassPeer:
    """The ``emhass`` controller (available where the EMHASS environment exists)."""

    name = "emhass"

    def __init__(self, model: HouseModel, step_s: float = 900.0) -> None:
        python = peers_python()
        if python is None:
            raise RuntimeError("EMHASS is not installed: run `make bench-peers` (creates .venv-peers)")
        self.model = model
        self.step_s = float(step_s)
        self.python = python
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
        if self._proc is not None and self._proc.poll() is None:
            self._proc.stdin.close()
            self._proc.wait(timeout=10)
        self._proc = None

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
        self.plan_start = None
        self.heat_seen: dict[tuple[int, int], float] = {}  # (hour, minute) local -> heating [W]
        self.events = []
        self.solve_s = []
        self.k = 0

    def act(self, observation: Observation, forecast: Forecast) -> Action:
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
        b, lim = m.house.battery, m.limits
        # to the end of the next local day (EMHASS plans whole days), at most the forecast
        now = obs.time.tz_convert(m.house.site.timezone)
        end = (now + pd.Timedelta(days=1)).normalize() + pd.Timedelta(days=1) if now.hour >= 12 else \
            (now + pd.Timedelta(days=1)).normalize()
        n = min(int(round((end - now).total_seconds() / self.step_s)), len(fc))
        times = fc.index[:n]
        local = times.tz_convert(m.house.site.timezone)
        now_heat = float(np.sum(obs.P_heat)) if obs.P_heat is not None else 0.0
        heat = [self.heat_seen.get((t.hour, t.minute), now_heat) for t in local]
        request = {
            "times": [t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in times.tz_convert("UTC")],
            "step_minutes": self.step_s / 60, "timezone": m.house.site.timezone,
            "pv_w": fc.column("P_pv")[:n].tolist(),
            "load_w": (fc.column("P_load")[:n] + np.asarray(heat)).tolist(),
            "price_import": fc.price_import[:n].tolist(), "price_export": fc.price_export[:n].tolist(),
            "battery": None if b is None else {
                "capacity_kwh": b.capacity_kwh, "max_charge_w": lim.max_charge_w,
                "max_discharge_w": lim.max_discharge_w, "soc_min": lim.soc_min, "soc_max": lim.soc_max,
                "eta_charge": b.eta_charge,
                "eta_discharge": b.eta_discharge},
            "soc_init": obs.soc, "soc_final": obs.soc,
            "grid": {"import_limit_w": lim.import_limit_w, "export_limit_w": lim.export_limit_w},
            "inverter_ac_w": lim.inverter_ac_w,
        }
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
            self.plan = None  # the inverter's own "load first" until the next plan
            self.events.append({"time": obs.time, "kind": "fallback", "controller": self.name,
                                "reason": f"EMHASS: {reply.get('error', '?')}"})
            print(f"emhass: {reply.get('error')}", file=sys.stderr)
