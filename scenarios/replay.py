"""Replay: the home's own history as a scenario, every controller on its calibrated twin.

*What would a smarter controller have saved me last winter, on my own house?* ``pems replay``
takes a home's history (a file, or InfluxDB through a mapping, as ``pems history`` reads it) and
its calibrated house file. The measured weather (outdoor temperature and irradiance), household
load without the heating, PV and prices over the history's period become the scenario's
disturbances, step for step (:func:`pems.twin.inputs.measured_disturbances`, the calibration's
own); the calibrated twin is the plant; every controller runs on it, the oracle included.

Two comparisons keep it honest:

- against **what the home actually paid**, from its measured grid power and prices
  (:func:`actual_bill`);
- the twin's replay of **the home's own logic** (the rule-based thermostats and the inverter's load
  first) against that bill and the measured heating energy: the twin's own bias, to read every
  saving against.

The controllers plan on forecasts, not on the measured future. Where the history has archived
weather forecasts (the real home's ``weather_forecast`` bucket, through the mapping's
``[[forecast]]`` tables, or a file of them) they plan on those (:func:`archived_inputs`): the
weather, window gains and PV from the archive, the household load as the same time a day before.
Otherwise a forecast model stands in (``noisy`` by default: irradiance and load with the errors of a
day-ahead forecast); the report says which.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pems.errors import InputError

#: Columns a replay needs from the history (besides prices, which ``--prices`` may give).
NEEDED = ("T_out", "ghi", "P_load")
#: Longest gap bridged in a replay's disturbances; a longer one is refused (the week it is in could
#: not be replayed honestly) [steps].
MAX_FILL_STEPS = 16


#: The least share of a replay's steps an archive of forecasts must cover to be planned on [-].
ARCHIVE_COVERAGE = 0.9
#: The archive's weather, as point samples (radiation at the middle of the interval it is the mean of).
ARCHIVE_COLUMNS = ("T_out", "ghi", "dni", "dhi")


@dataclass
class Archive:
    """Weather forecasts a home archived: ``data`` (UTC index; ``T_out`` [°C], ``ghi`` [, ``dni``,
    ``dhi``] [W m⁻²] as point samples) and where they came from."""

    data: pd.DataFrame
    source: str
    lead: str = "the last forecast stored for each hour"


@dataclass
class Replay:
    """A history made a scenario: the prepared run, what the home paid, and what was filled in."""

    prep: Any  # pems.scenarios.runner.Prepared
    actual: dict[str, float]  # what the home paid and used over the run (measured)
    forecast_note: str
    filled: dict[str, int] = field(default_factory=dict)  # steps bridged per column


def actual_bill(data: pd.DataFrame, step: pd.Timedelta) -> dict[str, float]:
    """What the home paid and used, from the measured grid power and prices of ``data``.

    ``cost = Σ (max(P_grid, 0) · price_import − max(−P_grid, 0) · price_export) · Δt``; steps
    without a measured grid power count nothing and are counted in ``steps_without_grid``.
    """
    h = step / pd.Timedelta(hours=1)
    out: dict[str, float] = {"steps": float(len(data))}
    heat = [c for c in data.columns if c.startswith("P_heat__")]
    out["heating_kWh"] = float(data[heat].sum(axis=1, min_count=1).sum() * h / 1000) if heat else math.nan
    if "P_grid" not in data:
        out.update(cost=math.nan, energy_import_kWh=math.nan, energy_export_kWh=math.nan,
                   steps_without_grid=float(len(data)))
        return out
    g = data["P_grid"].astype(float)
    imp, exp_ = g.clip(lower=0.0), (-g).clip(lower=0.0)
    out["cost"] = float(((imp * data["price_import"] - exp_ * data["price_export"]) * h / 1000).sum())
    out["energy_import_kWh"] = float(imp.sum() * h / 1000)
    out["energy_export_kWh"] = float(exp_.sum() * h / 1000)
    out["steps_without_grid"] = float(g.isna().sum())
    return out


def _filled(data: pd.DataFrame, source: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """The disturbances' columns with short gaps bridged (linearly; held at the ends); a long gap or
    a column that is all missing is refused, named by the source and column."""
    out = data.copy()
    filled: dict[str, int] = {}
    # (dni and dhi are not bridged: where one is missing the irradiance is completed from the others,
    # row by row, as the sun stood then: twin.solar.complete_irradiance)
    cols = [c for c in ("T_out", "ghi", "P_load", "P_pv", "price_import", "price_export", "T_ground") if c in out]
    for c in cols:
        v = out[c].astype(float)
        miss = v.isna()
        if not miss.any():
            continue
        if miss.all():
            raise InputError(source, c, "no value in the whole period")
        run = miss.groupby((~miss).cumsum()).sum().max()
        if c == "P_pv":  # PV is not held across the evening: what the arrays give under the measured sun
            continue
        if run > MAX_FILL_STEPS:
            first = v.index[miss][0]
            raise InputError(source, c, f"a gap of {int(run)} steps (from {first:%Y-%m-%d %H:%M} UTC); a replay bridges "
                                        f"at most {MAX_FILL_STEPS}: choose a period without it (--start/--end)")
        held = c.startswith("price") or c == "P_load"
        out[c] = (v.ffill().bfill() if held else v.interpolate(limit_direction="both"))
        filled[c] = int(miss.sum())
    return out, filled


def _covered(stamps: pd.DatetimeIndex, index: pd.DatetimeIndex, step: pd.Timedelta) -> np.ndarray:
    """Which steps of ``index`` have an archived value within ``MAX_FILL_STEPS`` before and after them
    (a gap that short is bridged; a longer one is not the archive's)."""
    if not len(stamps):
        return np.zeros(len(index), dtype=bool)
    reach = MAX_FILL_STEPS * step
    before = stamps.searchsorted(index, side="right") - 1
    after = stamps.searchsorted(index, side="left")
    ok_b = (before >= 0) & (index - stamps[np.clip(before, 0, None)] <= reach)
    ok_a = (after < len(stamps)) & (stamps[np.clip(after, None, len(stamps) - 1)] - index <= reach)
    return np.asarray(ok_b & ok_a)


def archive_coverage(archive: Archive, index: pd.DatetimeIndex, step: pd.Timedelta) -> float:
    """The share of the steps of ``index`` with an archived temperature and global irradiance near them
    [-] (each at its own stamps: radiation at the middle of its hour; see :func:`_covered`)."""
    if not {"T_out", "ghi"} <= set(archive.data.columns):
        return 0.0
    return min(float(_covered(archive.data[c].dropna().index, index, step).mean()) for c in ("T_out", "ghi"))


def archived_inputs(archive: Archive, house: Any, data: pd.DataFrame, step: pd.Timedelta) -> pd.DataFrame:
    """The disturbances as the archived forecasts saw them, one row per step of ``data`` (the measured
    history): outdoor temperature, window gains and PV (pvlib under the forecast sky) from the archive,
    as step means of its point samples where it has values near the step; a step it lacks (a column it
    lacks there) takes the measurement a day before. The household load and its gains stay the measured
    ones here; the forecast model ``archived`` hands them out as the same time a day before
    (:class:`~pems.scenarios.forecast.ForecastProvider`)."""
    from pems.twin.inputs import measured_disturbances
    from pems.twin.weather import step_means

    index = pd.DatetimeIndex(data.index)
    cols = [c for c in ARCHIVE_COLUMNS if c in archive.data and archive.data[c].notna().any()]
    day = int(round(pd.Timedelta(days=1) / step))
    fc = data.drop(columns=[c for c in ("dni", "dhi", "P_pv") if c in data]).copy()
    for c in cols:
        samples = archive.data[[c]].astype(float).dropna()
        v = step_means(samples, index, step)[c].where(_covered(samples.index, index, step))
        measured = data[c] if c in data else pd.Series(np.nan, index=index)
        fc[c] = v.fillna(measured.shift(day)).fillna(measured)
    if {"dni", "dhi"} - set(cols):  # the beam and diffuse split from the forecast's global irradiance
        fc = fc.drop(columns=[c for c in ("dni", "dhi") if c in fc])
    d = measured_disturbances(house, fc, step)
    d["P_pv"] = _modelled_pv(fc, house, step).to_numpy()
    return d


def replay_prepared(history: Any, house: Any, forecast: Any = None, comfort: Any = None, mpc: Any = None,
                    prices: str | None = None, tariff: Any = None, base_dir: Path | None = None,
                    name: str | None = None, warm_up: pd.Timedelta = pd.Timedelta(days=1),
                    archive: Archive | None = None, fallback: Any = None) -> Replay:
    """The history as a prepared scenario on ``house`` (its calibrated twin).

    Parameters
    ----------
    history
        :class:`pems.calibration.history.History` on the model step, the run's period.
    forecast, comfort, mpc
        The scenario's :class:`~pems.scenarios.spec.ForecastSpec` (default ``noisy``),
        :class:`~pems.scenarios.spec.Comfort` and :class:`~pems.scenarios.spec.MpcSpec`.
    prices, tariff, base_dir
        Where prices come from when the history has none (a built-in name or a CSV).
    warm_up
        History before the replay's start from which the twin's state at the start is estimated (the
        slabs' temperatures are not measured: the calibration's Kalman filter runs over the measured
        rooms, heating and weather of this period); none when the history is too short for it.
    archive
        Archived weather forecasts, planned on with the forecast model ``archived``.
    fallback
        The forecast model that stands in when ``archived`` was asked for and the archive covers less
        than ``ARCHIVE_COVERAGE`` of the replay's steps (the note says why); without one that is refused.
    """
    from pems.scenarios.comfort import comfort_bands
    from pems.scenarios.runner import Prepared, _cars_at_target
    from pems.scenarios.spec import Comfort, ForecastSpec, LoadedScenario, MpcSpec, Scenario
    from pems.twin.inputs import measured_disturbances, repeat_last_day
    from pems.twin.model import build_model
    from pems.twin.prices import Tariff, prices_at
    from pems.twin.steady import steady_state

    data, step, source = history.data, history.step, history.source
    if len(data) < 2:
        raise InputError(source, "time", "a replay needs at least two steps of history")
    for c in NEEDED:
        if c not in data:
            raise InputError(source, c, f"a replay needs the measured {c} (see docs/reference/history.md)")
    tariff = tariff or Tariff()
    has_prices = {"price_import", "price_export"} <= set(data.columns)
    one = [c for c in ("price_import", "price_export") if c in data.columns]
    if one and not has_prices:
        missing = "price_export" if one == ["price_import"] else "price_import"
        raise InputError(source, missing, f"the history has {one[0]} but no {missing}: give both, or neither "
                                          "and --prices")
    if not has_prices:
        if prices is None:
            raise InputError(source, "price_import", "the history has no prices: give them with --prices "
                                                     "(a built-in name or a CSV of time, price_import, price_export)")
        data = data.join(prices_at(prices, data.index, house.site, tariff, base_dir), how="left")
    data, filled = _filled(data, source)
    data, curtailed = _available_pv(data, house, step)
    if "P_pv" in data and data["P_pv"].isna().any():
        filled["P_pv"] = int(data["P_pv"].isna().sum())
        data = data.assign(P_pv=data["P_pv"].fillna(_modelled_pv(data, house, step)))
    model = build_model(house)
    k0 = int(round(warm_up / step))
    if len(data) < k0 + max(2, int(pd.Timedelta(days=1) / step)):  # too short to warm up and replay a day
        k0 = 0
    x_warm = _state_after(model, data, step, k0) if k0 else None
    relay0 = None
    if k0:  # a heater that ran through the warm-up's last step was on at the start (the thermostat's memory)
        last = data.iloc[k0 - 1]
        relay0 = np.array([float(last.get(f"P_heat__{r}", 0.0) or 0.0) >= 0.5 * house.room(r).heater_w
                           for r in model.rooms])
    data = data.iloc[k0:]
    forecast = forecast or ForecastSpec(model="noisy")
    why = ""
    if forecast.model == "archived":  # over the replay's own steps (not the warm-up)
        cover = archive_coverage(archive, data.index, step) if archive is not None else 0.0
        if cover < ARCHIVE_COVERAGE:
            why = ("there are none" if archive is None else
                   f"they cover {cover:.0%} of the replay's steps, at least {ARCHIVE_COVERAGE:.0%} is needed")
            if fallback is None:
                raise InputError(archive.source if archive is not None else source, "archived forecasts", why)
            forecast = fallback
    days = len(data) * step / pd.Timedelta(days=1)
    spec = Scenario(name=name or f"replay of {house.name}", house=house.name, start=data.index[0].to_pydatetime(),
                    days=days, step_minutes=int(step / pd.Timedelta(minutes=1)), comfort=comfort or Comfort(),
                    forecast=forecast, mpc=mpc or MpcSpec(), tariff=tariff,
                    description=f"the history of {source} as a scenario")
    sc = LoadedScenario(spec, house, Path(base_dir or ".") / "replay.toml")
    run = measured_disturbances(house, data, step)
    for c in ("ghi", "dni", "dhi"):
        if c in data:
            run[c] = data[c]
    run["price_import"], run["price_export"] = data["price_import"], data["price_export"]
    inputs = repeat_last_day(run, sc.n_steps + sc.horizon_steps, step)
    low, high = comfort_bands(spec.comfort, house, inputs.index)
    if x_warm is not None:  # the state estimated over the warm-up
        x0 = x_warm
    else:  # the rooms as measured, the slabs settled to them under the first day's weather
        first = data.iloc[0]
        t_room = np.array([first.get(f"T_room__{r}", np.nan) for r in model.rooms], dtype=float)
        t_room = np.where(np.isfinite(t_room), t_room, low.iloc[0].to_numpy() + 0.5)
        day = inputs.iloc[: max(1, int(pd.Timedelta(days=1) / step))]
        soc = float(first["soc"]) if "soc" in data and np.isfinite(first["soc"]) else None
        x0, _ = steady_state(model, day[list(model.sym.d.names)].mean().to_numpy(), t_room, soc=soc)
    fc_inputs = None
    if forecast.model == "archived":
        fc = archived_inputs(archive, house, data, step)
        fc_inputs = repeat_last_day(fc.reindex(columns=run.columns).fillna(run), len(inputs), step)
        fc_inputs = fc_inputs[list(model.sym.d.names)]
    prep = Prepared(sc, model, inputs, low, high, _cars_at_target(model, x0), relay0=relay0,
                    forecast_inputs=fc_inputs)
    note = {"perfect": "the measured future itself (perfect forecasts: an upper bound on what planning can save)",
            "persistence": "persistence: each hour as the same hour a day before",
            "noisy": (f"noisy forecasts standing in for archived ones: irradiance ±{forecast.sigma_irradiance:.0%} and "
                      f"load ±{forecast.sigma_load:.0%}, correlated over {forecast.correlation_hours:g} h (seed "
                      f"{forecast.seed})"),
            "learned": "the learned forecasters, fitted on the weeks before the replay"}.get(forecast.model, "")
    if forecast.model == "archived":
        note = (f"archived forecasts from {archive.source} ({archive.lead}: weather, window gains and PV from "
                "them; the household load as the same time a day before)")
    if why:
        note += f" (no archived forecasts: {why})"
    rep = Replay(prep, actual_bill(data.iloc[: sc.n_steps], step), note, filled)
    rep.actual["pv_curtailed_steps"] = float(curtailed)
    return rep


def _state_after(model: Any, data: pd.DataFrame, step: pd.Timedelta, k: int) -> np.ndarray | None:
    """The twin's state at step ``k`` of ``data`` estimated from the steps before it (the calibration's
    filter: the measured rooms' step means, heating, battery power and weather); None without a room
    temperature for every room of the model."""
    from pems.calibration.predict import HistoryFilter

    if any(f"T_room__{r}" not in data for r in model.rooms):
        return None
    f = HistoryFilter(model, step)
    filt = f.run(data.iloc[: k + 1])
    x = filt.x_prior[k].copy()
    if model.has_battery:
        x[model.i_soc] = float(np.clip(x[model.i_soc], 0.0, 1.0))
    return x


def _modelled_pv(data: pd.DataFrame, house: Any, step: pd.Timedelta) -> pd.Series:
    """The PV the house's arrays give under the measured weather [W] (pvlib; 0 without arrays)."""
    if not house.pv:
        return pd.Series(0.0, index=data.index)
    from pems.twin.pv import pv_ac_power
    from pems.twin.solar import complete_irradiance, solar_position

    sun = solar_position(data.index + step / 2, house.site)
    sun.index = data.index
    w = complete_irradiance(data[[c for c in ("T_out", "ghi", "dni", "dhi", "wind_speed") if c in data]].copy(), sun)
    return pd.Series(np.asarray(pv_ac_power(w, sun, house.pv, house.inverter), dtype=float), index=data.index)


def _available_pv(data: pd.DataFrame, house: Any, step: pd.Timedelta) -> tuple[pd.DataFrame, int]:
    """The PV the panels could have given: measured PV is what was delivered, and while the home
    exported at its export limit the inverter curtailed the rest. In those steps the PV the house's
    arrays give under the measured irradiance (pvlib), where that is more. Returns the table and the
    number of such steps."""
    lim = house.grid.export_limit_w
    if lim is None or "P_grid" not in data or "P_pv" not in data or not house.pv:
        return data, 0
    at_limit = (-data["P_grid"].astype(float) >= 0.98 * lim).to_numpy()
    if not at_limit.any():
        return data, 0
    model_pv = _modelled_pv(data, house, step).to_numpy()
    out = data.copy()
    pv = out["P_pv"].to_numpy(dtype=float)
    out["P_pv"] = np.where(at_limit, np.maximum(pv, model_pv), pv)
    return out, int(at_limit.sum())


def replay_frame(replay: Replay, frame: pd.DataFrame) -> pd.DataFrame:
    """Each controller's run against what the home paid: ``vs_paid`` (its cost minus the bill),
    ``saving`` (the bill minus its cost, settled with the day after as the bench settles it),
    and the twin's bias (rule-based: the home's own logic on the twin) in cost and heating."""
    paid = replay.actual.get("cost", math.nan)
    df = frame[["controller", "cost", "day_after_cost", "heating_kWh", "discomfort_Kh_per_room",
                "cost_gap_to_oracle"]].copy()
    df["vs_paid"] = df["cost"] - paid
    df["vs_paid_pct"] = 100.0 * df["vs_paid"] / abs(paid) if paid else np.nan
    base = df[df["controller"] == "rule-based"]
    if len(base):  # savings against the home's own logic on the same twin (the twin's bias cancels)
        b = base.iloc[0]
        settled_b = b["cost"] + (b["day_after_cost"] if np.isfinite(b["day_after_cost"]) else 0.0)
        settled = df["cost"] + df["day_after_cost"].where(np.isfinite(df["day_after_cost"]), 0.0)
        df["saving_vs_own_logic"] = settled_b - settled
    return df
