"""What the home would have paid without PEMS: the rule-based home, run by the twin beside the live one.

Each control step the loop hands :class:`Counterfactual` what the home measured over the step that
just ended (PV, household load without heating, outdoor temperature, grid power, heating) and the
forecast the step was planned with. The twin of the house, driven by the rule-based controller (the
home's own thermostats and the inverter's "load first", :mod:`pems.controllers.rule_based`), lives
the same step on the same weather, load, PV and prices: solar and internal gains as the step's
forecast had them, the rest as measured. The live home's bill and the twin's are tallied alike (the
grid energy at the prices each step was planned with; discomfort against the same band, at the step
ends), so their difference is what PEMS saved, split as the bench splits it
(:func:`pems.scenarios.report_tables.cost_difference`): importing less, paying less per kWh,
earning more for export.

The twin starts from the controller's state estimate (or the measured rooms, each slab at its
room's air temperature) and from the measured state of charge. A gap in the steps (a restart, a
missed step) puts it back on the live home's state: each comparison is over steps both homes lived
from the same start. An override applies to both: a boosted room is warmer in the twin too, so a
boost is not counted as a loss of savings. The tallies are kept in the state folder
(``savings.json``) across restarts. Under a calibrated twin this is the honest counterfactual a
home can have; its bias is the twin's (see ``pems replay``'s comparison of the twin's own logic
against the measured bill).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, fields, replace
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pems.controllers.rule_based import RuleBasedController
from pems.live.state import write_atomic
from pems.scenarios.report_tables import cost_difference, why_sentence
from pems.twin.model import HouseModel
from pems.twin.plant import SimulatedHome
from pems.twin.signals import Action, Forecast, Observation

log = logging.getLogger(__name__)

SAVINGS_FILE = "savings.json"


@dataclass
class Tally:
    """One home's bill and comfort over the steps compared (sums)."""

    steps: int = 0
    import_wh: float = 0.0
    export_wh: float = 0.0
    heating_wh: float = 0.0
    cost: float = 0.0  # [currency]
    import_cost: float = 0.0  # what the imports cost [currency]
    discomfort_kh: float = 0.0  # summed over rooms [K·h]

    def add(self, grid_w: float, heat_w: float, prices: tuple[float, float], below_k: float, hours: float) -> None:
        """One step: mean grid power (import +) and heating [W], the step's prices, the rooms'
        summed distance outside their bands at its end [K], its length [h]."""
        imp, exp_ = max(grid_w, 0.0) * hours, max(-grid_w, 0.0) * hours
        self.steps += 1
        self.import_wh += imp
        self.export_wh += exp_
        self.heating_wh += max(heat_w, 0.0) * hours
        self.import_cost += imp * prices[0] / 1000.0
        self.cost += (imp * prices[0] - exp_ * prices[1]) / 1000.0
        self.discomfort_kh += below_k * hours

    def kpis(self, n_rooms: int) -> dict[str, float]:
        """The bench's KPI names (:mod:`pems.scenarios.kpis`) for :func:`cost_difference`."""
        return {"cost": self.cost, "energy_import_kWh": self.import_wh / 1000.0,
                "energy_export_kWh": self.export_wh / 1000.0, "heating_kWh": self.heating_wh / 1000.0,
                "import_price_avg": 1000.0 * self.import_cost / self.import_wh if self.import_wh > 0 else math.nan,
                "discomfort_Kh_per_room": self.discomfort_kh / max(n_rooms, 1)}


def _outside(T: np.ndarray, low: np.ndarray, high: np.ndarray) -> float:
    """Σ over rooms of how far each is outside its band [K] (missing readings count nothing)."""
    T = np.asarray(T, dtype=float)
    gap = np.maximum(low - T, 0.0) + np.maximum(T - high, 0.0)
    return float(np.nansum(gap))


class Counterfactual:
    """The rule-based twin beside the live home (see the module notes).

    Parameters
    ----------
    model
        The house model (the twin).
    step_s
        Control step [s].
    path
        ``savings.json`` (None: kept in memory only).
    currency
        The tariff's currency, for the sentence.
    estimate
        The controller's state estimate now (model order), to start the twin from (None: the
        measured rooms, each slab at its room's air temperature).
    """

    def __init__(self, model: HouseModel, step_s: float, path: str | Path | None = None, currency: str = "",
                 estimate: Callable[[], np.ndarray | None] | None = None) -> None:
        self.model, self.step_s, self.currency, self.estimate = model, float(step_s), currency, estimate
        self.path = None if path is None else Path(path)
        self.controller = RuleBasedController(model)
        self.live, self.twin = Tally(), Tally()
        self.since: str | None = None  # the first step compared (ISO 8601 UTC)
        self.resyncs = 0  # times the twin was put back on the live home's state (gaps)
        self._home: SimulatedHome | None = None
        self._twin_obs: Observation | None = None  # what the twin's home measures now
        self._pending: tuple[pd.Timestamp, Forecast, Action, tuple[float, float]] | None = None
        self._load()

    # ------------------------------------------------------------------ the loop's step
    def on_step(self, obs: Observation, fc: Forecast | None) -> None:
        """The live home at the start of a step (``obs``; its powers: the step that just ended) and
        the forecast this step is planned with (overrides applied; its first prices are the step's)."""
        t = obs.time
        p = self._pending
        if p is not None and self._home is not None and t == p[0] + pd.Timedelta(seconds=self.step_s):
            self._compare(obs, *p)
        else:  # the first step, or the twin did not live the last one: it starts on the live home's state
            self._start(obs, fc)
        self._pending = None
        if self._home is None or fc is None or len(fc) == 0:
            return
        prices = (float(fc.price_import[0]), float(fc.price_export[0]))
        if not all(map(math.isfinite, prices)):
            return
        try:  # the forecast's row for now, with the last measured values (the step's own come next step)
            self._home.next_step(t, self._realised(fc.d[0].copy(), fc.d_names, obs))
        except ValueError:
            return
        twin_obs = self._twin_obs if self._twin_obs.time == t else replace(self._twin_obs, time=t)
        self._pending = (t, fc, self.controller.act(twin_obs, fc), prices)

    def _realised(self, d: np.ndarray, names: tuple[str, ...], obs: Observation) -> np.ndarray:
        """The forecast's row with what was measured put in where the home measures it.

        PV measured while the home exported at its export limit was curtailed: what the panels
        could have given is then the forecast's, if that is more (the twin curtails by itself)."""
        exp_lim = self.model.limits.export_limit_w
        curtailed = exp_lim is not None and math.isfinite(obs.P_grid) and -obs.P_grid >= 0.98 * exp_lim
        for name, v in (("P_pv", obs.P_pv), ("P_load", obs.P_load), ("T_out", obs.T_out)):
            if name in names and v is not None and math.isfinite(v):
                i = names.index(name)
                d[i] = max(v, d[i]) if name == "P_pv" and curtailed else v
        return d

    def _compare(self, obs: Observation, t0: pd.Timestamp, fc: Forecast, action: Action,
                 prices: tuple[float, float]) -> None:
        """Both homes over the step from ``t0`` that just ended: the twin lives it, both are tallied."""
        home, m = self._home, self.model
        # the step's disturbances as measured over it, on the forecast's row
        home.next_step(t0, self._realised(fc.d[0].copy(), m.sym.d.names, obs))
        self._twin_obs = home.step(action)
        hours = self.step_s / 3600.0
        low, high = fc.low[0], fc.high[0]
        heat_live = 0.0 if obs.P_heat is None else float(np.nansum(obs.P_heat))
        if math.isfinite(obs.P_grid):
            self.live.add(obs.P_grid, heat_live, prices, _outside(obs.T_room, low, high), hours)
            lg = home.log
            self.twin.add(float(lg.grid[0]), float(lg.u_mean[0][m.heat].sum()), prices,
                          _outside(self._twin_obs.T_room, low, high), hours)
            self.since = self.since or t0.isoformat()
            self._save()

    def _start(self, obs: Observation, fc: Forecast | None) -> None:
        """(Re)start the twin on the live home's state: the estimate, else the measured rooms."""
        m = self.model
        x_estimate = None
        if self.estimate is not None:
            try:
                x_estimate = self.estimate()
            except Exception:  # noqa: BLE001 - the measured rooms will do
                x_estimate = None
        if x_estimate is not None and np.isfinite(x_estimate).all() and len(x_estimate) == len(m.sym.x):
            x = np.asarray(x_estimate, dtype=float).copy()
        else:
            T = np.asarray(obs.T_room, dtype=float)
            T = np.where(np.isfinite(T), T, np.nanmean(T) if np.isfinite(T).any() else 20.0)
            x = np.zeros(len(m.sym.x))
            x[m.air], x[m.mass] = T, T
        if m.has_battery:
            x[m.i_soc] = min(max(obs.soc if obs.soc is not None and math.isfinite(obs.soc) else 0.5,
                                 m.limits.soc_min), m.limits.soc_max)
        names = tuple(m.sym.d.names)
        if fc is None or len(fc) == 0 or tuple(fc.d_names) != names:
            return
        if self._home is not None:  # put back on the home's state: no new twin (its set-up is the costly part)
            self.resyncs += 1
            self._home.next_step(obs.time, self._realised(fc.d[0].copy(), names, obs))
            self._twin_obs = self._home.restart(x)
            return
        row = pd.DataFrame([self._realised(fc.d[0].copy(), names, obs)], index=[obs.time], columns=list(names))
        self._home = SimulatedHome(m, row, x, step_s=self.step_s)
        self._twin_obs = self._home.reset()

    # ------------------------------------------------------------------ what the page shows
    @property
    def saved(self) -> float | None:
        """The rule-based twin's bill minus the live home's so far [currency] (None: nothing compared)."""
        return self.twin.cost - self.live.cost if self.live.steps else None

    def summary(self) -> dict[str, Any]:
        """The savings so far: both bills, their difference split three ways, and the sentence."""
        n = self.model.n_rooms
        if self.live.steps == 0:
            return {"steps": 0}
        live, twin = self.live.kpis(n), self.twin.kpis(n)
        d = cost_difference(twin, live)
        return {"steps": self.live.steps, "since": self.since, "currency": self.currency,
                "cost": round(live["cost"], 2), "cost_rule_based": round(twin["cost"], 2),
                "saved": round(d.saved, 2), "from_importing_less": round(d.volume, 2),
                "from_cheaper_kwh": round(d.price, 2), "from_export": round(d.export, 2),
                "heating_kWh": round(live["heating_kWh"], 1), "heating_kWh_rule_based": round(twin["heating_kWh"], 1),
                "discomfort_Kh_per_room": round(live["discomfort_Kh_per_room"], 2),
                "discomfort_Kh_per_room_rule_based": round(twin["discomfort_Kh_per_room"], 2),
                "resyncs": self.resyncs,
                "why": why_sentence("PEMS", d, self.currency, "the rule-based home (twin)")}

    # ------------------------------------------------------------------ across restarts
    def _save(self) -> None:
        if self.path is None:
            return
        try:  # (no fsync: a tally a step old after a power cut is no harm)
            write_atomic(self.path, json.dumps({"since": self.since, "live": asdict(self.live),
                                                "twin": asdict(self.twin), "rooms": list(self.model.rooms)}),
                         fsync=False)
        except OSError as exc:
            log.debug("savings not kept: %s", exc)

    def _load(self) -> None:
        if self.path is None or not self.path.is_file():
            return
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            if raw.get("rooms") != list(self.model.rooms):
                return
            keys = {f.name for f in fields(Tally)}
            self.live = Tally(**{k: v for k, v in raw["live"].items() if k in keys})
            self.twin = Tally(**{k: v for k, v in raw["twin"].items() if k in keys})
            self.since = raw.get("since")
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            log.warning("%s is unreadable: the savings start again", self.path)

