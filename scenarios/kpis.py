"""KPIs of a run, computed by the harness from the trajectory alone (BOPTEST-aligned).

Grid import and export are netted per control step (as a quarter-hour settlement meter does):
``import = max(P_grid, 0)`` and ``export = max(−P_grid, 0)`` of each step's mean grid power.
:data:`KPIS` defines each KPI with its unit; ``docs/reference/kpis.md`` is rendered from it
(``python -m pems.docs``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Kpi:
    """What a KPI means: its unit and its definition over the control steps ``k`` of length ``Δt``."""

    unit: str
    definition: str


#: Every KPI of a run, in the order of ``kpis.csv``. Notation: ``P_imp = max(P_grid, 0)``,
#: ``P_exp = max(−P_grid, 0)`` of each step's mean power; sums run over the control steps ``k`` of
#: length ``Δt`` and over the rooms ``r``; ``T_low``/``T_high`` is the comfort band in force.
KPIS: dict[str, Kpi] = {
    "cost": Kpi("currency", "Energy bill: Σ_k (P_imp · price_import − P_exp · price_export) · Δt."),
    "discomfort_Kh": Kpi("K·h", "Σ_r Σ_k (max(0, T_low − T_room) + max(0, T_room − T_high)) · Δt, with each "
                                "step's mean air temperature: BOPTEST's tdis_tot summed over the rooms."),
    "discomfort_Kh_per_room": Kpi("K·h", "discomfort_Kh / number of rooms (BOPTEST's tdis_tot)."),
    "energy_import_kWh": Kpi("kWh", "Σ_k P_imp · Δt."),
    "energy_export_kWh": Kpi("kWh", "Σ_k P_exp · Δt."),
    "heating_kWh": Kpi("kWh", "Electricity of every heater: Σ_r Σ_k P_heat · Δt."),
    "self_consumption": Kpi("–", "PV used on site / PV produced: Σ_k max(0, P_pv − P_exp) / Σ_k P_pv (empty without PV)."),
    "self_sufficiency": Kpi("–", "Consumption covered on site / consumption: 1 − import / Σ_k (P_load + Σ_r P_heat + "
                                 "P_loss) · Δt, clipped to [0, 1]."),
    "peak_import_kW": Kpi("kW", "max_k P_imp: the largest import averaged over a control step."),
    "battery_cycles": Kpi("–", "Discharged energy / usable capacity: Σ_k max(0, −P_bat) · Δt / (capacity_kwh · "
                               "(soc_max − soc_min)); 0 without a battery."),
    "compute_s_per_step": Kpi("s", "Median wall time of the controller's act per control step."),
    "compute_s_per_step_max": Kpi("s", "Maximum wall time of the controller's act per control step."),
    "compute_s_mean": Kpi("s", "Mean wall time of the controller's act per control step: what a controller that "
                               "plans now and then (the oracle once, EMHASS hourly) costs a step on average."),
    "pv_kWh": Kpi("kWh", "PV delivered (after curtailment): Σ_k P_pv · Δt."),
    "load_kWh": Kpi("kWh", "Household load without heating (and without the cars): Σ_k P_load_household · Δt "
                           "(P_load without cars)."),
    "curtailed_kWh": Kpi("kWh", "PV curtailed to respect the export limit or the inverter's AC rating."),
    "relay_switches": Kpi("–", "Heating relay switchings of every room."),
    "import_price_avg": Kpi("currency/kWh", "Mean price of an imported kWh: Σ_k P_imp · price_import / Σ_k P_imp "
                                            "(how well imports moved into cheap hours)."),
}

#: The cars' KPIs, in runs of a house with ``[[ev]]`` (after :data:`KPIS` in ``kpis.csv``).
EV_KPIS: dict[str, Kpi] = {
    "ev_energy_kWh": Kpi("kWh", "Charged into the cars, AC side: Σ_cars Σ_k P_ev · Δt."),
    "ev_shortfall_kWh": Kpi("kWh", "Energy missing at departures: Σ_departures max(0, target · capacity − the "
                                   "energy on board at the departure step's start)."),
    "ev_departures_missed": Kpi("–", "Departures that left more than 1 Wh below their target."),
    "ev_departures": Kpi("–", "Departures in the run."),
    "ev_pv_share": Kpi("–", "Share of the cars' charging that was PV surplus (PV beyond the household, the heating, "
                            "the battery's charging and the inverter's standby)."),
    "ev_stored_kWh": Kpi("kWh", "Change of the energy in the cars over the run (end − start): compare bills with it, as "
                                "a run that leaves the cars fuller paid for energy the next days use."),
}

KPI_UNITS = {k: v.unit for k, v in KPIS.items()}


def step_hours(index: pd.DatetimeIndex) -> float:
    """The (regular) step of a trajectory [h]."""
    if len(index) < 2:
        raise ValueError("a trajectory needs at least two steps")
    return pd.Series(index).diff().median().total_seconds() / 3600.0


def ev_kpis(traj: pd.DataFrame, cars: Sequence) -> dict[str, float]:
    """The cars' KPIs (none without a car): energy delivered [kWh], the shortfall at departures
    [kWh] and the departures that left below their target, the share of the cars' energy that was
    PV surplus (PV beyond the household, the heating and the battery's charging)."""
    if not cars:
        return {}
    dt = step_hours(pd.DatetimeIndex(traj.index))
    heat = traj[[c for c in traj.columns if c.startswith("P_heat__")]].sum(axis=1).to_numpy()
    surplus = (traj["P_pv"].to_numpy() - traj["P_load_household"].to_numpy() - heat
               - np.clip(traj["P_bat"].to_numpy(), 0, None) - traj["P_loss"].to_numpy())
    delivered = short = pv = stored = 0.0
    missed = departures = 0
    left = np.clip(surplus, 0, None)
    for car in cars:
        p = traj[f"P_ev__{car.id}"].to_numpy()
        need = traj[f"ev_need_wh__{car.id}"].to_numpy()
        have = traj[f"ev_soc__{car.id}"].to_numpy() * car.capacity_kwh * 1000.0
        gap = np.clip(need - have, 0, None)[need > 0] / 1000.0
        delivered += p.sum() * dt / 1000.0
        short += float(gap.sum())
        missed += int((gap > 1e-3).sum())
        departures += int((need > 0).sum())
        soc = traj[f"ev_soc__{car.id}"].to_numpy()
        if "ev_soc_end__" + car.id in traj:
            stored += (traj[f"ev_soc_end__{car.id}"].to_numpy()[-1] - soc[0]) * car.capacity_kwh
        from_pv = np.minimum(p, left)
        left = left - from_pv
        pv += from_pv.sum() * dt / 1000.0
    return {"ev_energy_kWh": float(delivered), "ev_shortfall_kWh": float(short),
            "ev_departures_missed": float(missed), "ev_departures": float(departures),
            "ev_pv_share": float(pv / delivered) if delivered > 0 else float("nan"),
            "ev_stored_kWh": float(stored)}


def compute_kpis(traj: pd.DataFrame, rooms: Sequence[str], usable_battery_kwh: float | None) -> dict[str, float]:
    """Every KPI of :data:`KPIS` from a trajectory (one row per control step).

    Parameters
    ----------
    traj
        Columns ``P_grid``, ``P_pv``, ``P_load``, ``P_bat``, ``P_loss``, ``price_import``,
        ``price_export``, ``compute_s`` and per room ``T_room__``, ``P_heat__``, ``T_set_low__``,
        ``T_set_high__`` [W, °C, currency/kWh, s].
    usable_battery_kwh
        Capacity between the SOC limits [kWh]; ``None`` without a battery.
    """
    dt = step_hours(pd.DatetimeIndex(traj.index))
    grid = traj["P_grid"].to_numpy()
    imp, exp_ = np.clip(grid, 0, None), np.clip(-grid, 0, None)
    # room by room: a column of the table is a view, a list of them a copy (a year of 17 rooms: 5 MB
    # each, and as much again for every temporary made from them)
    dis_k, heat = 0.0, np.zeros(len(traj))
    for r in rooms:
        T = traj[f"T_room__{r}"].to_numpy()
        dis_k += float(np.clip(traj[f"T_set_low__{r}"].to_numpy() - T, 0, None).sum()
                       + np.clip(T - traj[f"T_set_high__{r}"].to_numpy(), 0, None).sum())
        heat += traj[f"P_heat__{r}"].to_numpy()
    dis = dis_k * dt
    pv = traj["P_pv"].to_numpy()
    consumption = traj["P_load"].to_numpy() + heat + traj["P_loss"].to_numpy()
    pv_e, imp_e, exp_e = pv.sum() * dt / 1000, imp.sum() * dt / 1000, exp_.sum() * dt / 1000
    cons_e = consumption.sum() * dt / 1000
    pv_on_site = np.clip(pv - exp_, 0, None).sum() * dt / 1000
    discharge = np.clip(-traj["P_bat"].to_numpy(), 0, None).sum() * dt / 1000
    compute = traj["compute_s"].to_numpy() if "compute_s" in traj else np.zeros(len(traj))
    return {
        "cost": float((imp * traj["price_import"] - exp_ * traj["price_export"]).sum() * dt / 1000),
        "discomfort_Kh": dis,
        "discomfort_Kh_per_room": dis / len(rooms),
        "energy_import_kWh": float(imp_e),
        "energy_export_kWh": float(exp_e),
        "heating_kWh": float(heat.sum() * dt / 1000),
        "self_consumption": float(pv_on_site / pv_e) if pv_e > 0 else float("nan"),
        "self_sufficiency": float(np.clip(1 - imp_e / cons_e, 0, 1)) if cons_e > 0 else float("nan"),
        "peak_import_kW": float(imp.max() / 1000),
        "battery_cycles": float(discharge / usable_battery_kwh) if usable_battery_kwh else 0.0,
        "compute_s_per_step": float(np.median(compute)),
        "compute_s_per_step_max": float(compute.max()),
        "compute_s_mean": float(compute.mean()),
        "pv_kWh": float(pv_e),
        # the household's own (P_load also holds the cars' charging where a house has cars)
        "load_kWh": float(traj.get("P_load_household", traj["P_load"]).sum() * dt / 1000),
        "curtailed_kWh": float(traj["curtailed_wh"].sum() / 1000) if "curtailed_wh" in traj else 0.0,
        "relay_switches": float(traj["relay_switches"].sum()) if "relay_switches" in traj else 0.0,
        # what a kWh bought cost on average: how well imports were moved into cheap hours
        "import_price_avg": float((imp * traj["price_import"]).sum() / imp.sum()) if imp.sum() > 0 else float("nan"),
    }
