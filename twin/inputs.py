"""The disturbance table of a run: weather, sun on windows and PV, internal gains, load and prices.

:func:`build_inputs` turns named inputs (built-in or CSV) into one table with a row per control
step and a column per disturbance of the symbolic model (``T_out``, ``T_ground``, ``I_sol__<room>``,
``Q_int__<room>``, ``P_pv``, ``P_load``), plus ``ghi``/``dni``/``dhi`` and the prices. Values are
means over each step (prices: in force at its start), so step energies are exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pems.errors import InputError
from pems.twin import priors
from pems.twin.ev import ev_signals, read_calendar
from pems.twin.house import House, Site
from pems.twin.load import BUILTIN_LOADS, h25, load_csv
from pems.twin.prices import BUILTIN_PRICES, Tariff, prices_at
from pems.twin.pv import pv_ac_power
from pems.twin.solar import complete_irradiance, plane_irradiance, solar_position
from pems.twin.tables import named_csv, resolve_csv
from pems.twin.weather import BUILTIN_WEATHER, Weather, aligned_to, load_weather, samples_for, step_means, weather_at_steps


@dataclass(frozen=True)
class InputSpec:
    """Which weather, prices and load a run uses (names as in a scenario file)."""

    weather: str = "amsterdam-iwec"
    prices: str = "cz-spot-2024"
    load: str = "h25"
    load_kwh_per_year: float = 4000.0
    tariff: Tariff = field(default_factory=Tariff)
    base_dir: Path | None = None  # where relative CSV paths resolve
    ev_seed: int = 0  # the cars' arrival states of charge, drawn reproducibly


def internal_gains(house: House, times: pd.DatetimeIndex, p_load: np.ndarray) -> dict[str, np.ndarray]:
    """Known internal gains per room [W]: occupants at home plus the share of the household's
    electricity that ends as heat, split by room type and floor area (:mod:`pems.twin.priors`)."""
    occ = house.occupancy
    gains = occ.persons * occ.sensible_w_per_person * presence(times, house.site.timezone) \
        + occ.electricity_to_heat * np.asarray(p_load, dtype=float)
    return {rid: share * gains for rid, share in priors.gain_weights(house).items()}


def internal_gain_columns(house: House, index: pd.DatetimeIndex, step: pd.Timedelta,
                          p_load: np.ndarray) -> dict[str, np.ndarray]:
    """``Q_int__<room>`` [W] over the steps starting at ``index``, from the household load ``p_load``
    [W] of each step (:func:`internal_gains` at the steps' midpoints)."""
    mid = pd.DatetimeIndex(index) + step / 2
    return {f"Q_int__{rid}": q for rid, q in internal_gains(house, mid, p_load).items()}


def measured_disturbances(house: House, measured: pd.DataFrame, step: pd.Timedelta) -> pd.DataFrame:
    """The model's disturbances from measurements (a history): weather (``T_out``, ``ghi`` [, ``dni``,
    ``dhi``]), ``P_pv`` and ``P_load`` where logged (else 0 and the occupancy prior alone), and
    ``T_ground`` where a temperature below the slabs is logged (else the site's ground temperature).

    Rows follow ``measured.index`` (step starts); the sun is computed at the house's own site.
    """
    index = pd.DatetimeIndex(measured.index)
    mid = index + step / 2
    sun = solar_position(mid, house.site)
    sun.index = index
    w = measured[[c for c in ("T_out", "ghi", "dni", "dhi", "wind_speed") if c in measured]].copy()
    w["ghi"] = w["ghi"].fillna(0.0) if "ghi" in w else 0.0
    w = complete_irradiance(w, sun)
    out = pd.DataFrame(index=index)
    out["T_out"] = measured["T_out"] if "T_out" in measured else np.nan
    # a measured boundary below the slabs (a cellar, a ground probe) where the history has one
    out["T_ground"] = measured["T_ground"].fillna(house.site.ground_temperature_c) if "T_ground" in measured \
        else house.site.ground_temperature_c
    for rid, irr in room_irradiance(house, w, sun).items():
        out[f"I_sol__{rid}"] = irr
    load = measured["P_load"].fillna(0.0).to_numpy() if "P_load" in measured else np.zeros(len(index))
    for col, q in internal_gain_columns(house, index, step, load).items():
        out[col] = q
    out["P_pv"] = measured["P_pv"].fillna(0.0) if "P_pv" in measured else 0.0
    out["P_load"] = load
    for name, v in time_of_day(mid, house.site.timezone).items():
        out[name] = v
    for k, ev in enumerate(house.ev):  # the cars' weeks: plugged in, driven, wanted at departure
        # (a house file's calendar is resolved beside the file when the house is loaded)
        cal = read_calendar(Path(ev.calendar)) if ev.calendar is not None else None
        sig = ev_signals(ev, index, step, house.site.timezone, seed=k, calendar=cal)
        out[f"ev_plugged__{ev.id}"] = sig["plugged"].to_numpy()
        out[f"ev_drive_w__{ev.id}"] = sig["drive_wh"].to_numpy() / (step / pd.Timedelta(hours=1))
        out[f"ev_need_wh__{ev.id}"] = sig["need_wh"].to_numpy()
    return out


def room_irradiance(house: House, weather: pd.DataFrame, sun: pd.DataFrame) -> dict[str, pd.Series]:
    """The solar driver of each room [W m⁻²]: the window-area-weighted irradiance on its windows'
    planes, or the global horizontal irradiance for a room without windows (its aperture is zero
    unless calibration finds one)."""
    planes: dict[tuple[float, float], pd.Series] = {}
    out = {}
    for room in house.rooms:
        if not room.windows:
            out[room.id] = weather["ghi"]
            continue
        total = sum(win.area_m2 for win in room.windows)
        irr = 0.0
        for win in room.windows:
            key = (win.tilt_deg, win.azimuth_deg)
            if key not in planes:
                planes[key] = plane_irradiance(weather, sun, *key)["poa_global"]
            irr = irr + planes[key] * (win.area_m2 / total)
        out[room.id] = irr
    return out


def time_of_day(times: pd.DatetimeIndex, tz: str) -> dict[str, np.ndarray]:
    """The model's time-of-day disturbances (cos/sin of one and two cycles a day, local time)."""
    local = times.tz_convert(tz)
    phase = 2 * np.pi * (local.hour + local.minute / 60 + local.second / 3600) / 24
    return {"day_cos": np.cos(phase), "day_sin": np.sin(phase),
            "day2_cos": np.cos(2 * phase), "day2_sin": np.sin(2 * phase)}


def presence(index: pd.DatetimeIndex, tz: str) -> np.ndarray:
    """Share of occupants at home [0–1]: all from 17:00 to 08:00 and at weekends, 30 % otherwise."""
    local = index.tz_convert(tz)
    workday_absence = (local.day_of_week < 5) & (local.hour >= 8) & (local.hour < 17)
    return np.where(workday_absence, 0.3, 1.0)


def check_sources(sources, base_dir: Path | None, file: str | Path, prefix: str = "",
                  must_exist: bool = True) -> None:
    """``sources.weather``, ``.prices`` and ``.load``: each a built-in name or a CSV file (that exists,
    with ``must_exist``); a problem is an :class:`InputError` of ``file`` and ``<prefix><key>``."""
    for key, builtins, what in (("weather", BUILTIN_WEATHER, "weather set"), ("prices", BUILTIN_PRICES, "prices"),
                                ("load", BUILTIN_LOADS, "load profile")):
        named_csv(getattr(sources, key), base_dir, tuple(builtins), file, f"{prefix}{key}", what,
                  must_exist=must_exist)


def build_inputs(house: House, spec: InputSpec, start: pd.Timestamp, n_steps: int,
                 step: pd.Timedelta, required_steps: int | None = None) -> pd.DataFrame:
    """One row per control step from ``start``: every model disturbance, irradiance and prices.

    Parameters
    ----------
    required_steps
        Steps that the data must cover (the run). Later steps (a forecast horizon beyond the run)
        repeat the last day where weather, load or price data end. Default: all.
    """
    required = required_steps or n_steps
    if required < n_steps:
        try:
            return _build(house, spec, start, n_steps, step, required)
        except InputError:  # the data end with the run: extend the horizon by the last day
            run = _build(house, spec, start, required, step, required)
            return repeat_last_day(run, n_steps, step)
    return _build(house, spec, start, n_steps, step, required)


def repeat_last_day(df: pd.DataFrame, n: int, step: pd.Timedelta) -> pd.DataFrame:
    """``df`` (one row per step) extended to ``n`` rows by repeating its last day."""
    day = int(round(pd.Timedelta(days=1) / step))
    rows = [df]
    total = len(df)
    while total < n:
        tail = df.iloc[-min(day, len(df)):]
        rows.append(tail)
        total += len(tail)
    out = pd.concat(rows).iloc[:n]
    out.index = pd.date_range(df.index[0], periods=n, freq=step, name="time")
    out.attrs = dict(df.attrs)
    return out


def _build(house: House, spec: InputSpec, start: pd.Timestamp, n_steps: int, step: pd.Timedelta,
           required: int) -> pd.DataFrame:
    index = pd.date_range(start, periods=n_steps, freq=step, name="time")
    weather = aligned_to(load_weather(spec.weather, spec.base_dir), house.site)
    w = weather_at_steps(weather, index, step)
    sun_site: Site = weather.site or house.site
    mid = index + step / 2
    sun = solar_position(mid, sun_site)
    sun.index = index
    w = complete_irradiance(w, sun)

    out = pd.DataFrame(index=index)
    out["T_out"] = w["T_out"]
    out["T_ground"] = house.site.ground_temperature_c
    for rid, irr in room_irradiance(house, w, sun).items():
        out[f"I_sol__{rid}"] = irr

    load = _load(spec, house, index, step)
    for col, q in internal_gain_columns(house, index, step, load.to_numpy()).items():
        out[col] = q
    out["P_pv"] = pv_ac_power(w, sun, house.pv, house.inverter).to_numpy()
    out["P_load"] = load.to_numpy()
    for name, v in time_of_day(mid, house.site.timezone).items():
        out[name] = v
    for k, ev in enumerate(house.ev):  # the cars' weeks: plugged in, driven, wanted at departure
        cal = None
        if ev.calendar is not None:
            path = Path(ev.calendar) if spec.base_dir is None else spec.base_dir / ev.calendar
            cal = read_calendar(path)
        sig = ev_signals(ev, index, step, house.site.timezone, seed=spec.ev_seed + k, calendar=cal)
        out[f"ev_plugged__{ev.id}"] = sig["plugged"].to_numpy()
        out[f"ev_drive_w__{ev.id}"] = sig["drive_wh"].to_numpy() / (step / pd.Timedelta(hours=1))
        out[f"ev_need_wh__{ev.id}"] = sig["need_wh"].to_numpy()
    for c in ("ghi", "dni", "dhi", "wind_speed"):
        out[c] = w[c]
    req = index[min(required, n_steps) - 1]
    out = out.join(prices_at(spec.prices, index, house.site, spec.tariff, spec.base_dir, required_until=req))
    # one block of floats, its columns in this order: the model's disturbances are then a view of it
    # (:func:`columns_array`), not a second table (a year of the reference house: 12 MB)
    out = pd.DataFrame({c: out[c].to_numpy() for c in out.columns}, index=out.index)
    out.attrs["sun_site"] = sun_site.model_dump()
    out.attrs["weather_source"] = weather.source
    out.attrs["weather_alignment"] = weather.alignment
    return out


def columns_array(frame: pd.DataFrame, names: Sequence[str]) -> np.ndarray:
    """``frame[names]`` as an array of floats (rows × names), read-only.

    A view of the frame's memory where its columns hold ``names`` side by side in one block of floats
    (as :func:`build_inputs` makes them), else a copy: the forecasts and the plant read a year of
    disturbances without holding them twice."""
    names = list(names)
    cols = list(frame.columns)
    i = cols.index(names[0]) if names and names[0] in cols else -1
    out = None
    if i >= 0 and cols[i:i + len(names)] == names:
        whole = frame.iloc[:, i:i + len(names)].to_numpy(dtype=float, copy=False)
        if np.shares_memory(whole, frame[names[0]].to_numpy(copy=False)):
            out = whole
    if out is None:
        out = frame[names].to_numpy(dtype=float)
    out = out.view()
    out.flags.writeable = False
    return out


def _load(spec: InputSpec, house: House, index: pd.DatetimeIndex, step: pd.Timedelta) -> pd.Series:
    if spec.load in BUILTIN_LOADS:
        return h25(index, step, house.site, spec.load_kwh_per_year)
    path = resolve_csv(spec.load, spec.base_dir, "load", BUILTIN_LOADS)
    df = load_csv(path)
    w = Weather(path.stem, df, None, False, str(path))
    return step_means(samples_for(w, index[0], index[-1] + step, "load"), index, step)["P_load"]
