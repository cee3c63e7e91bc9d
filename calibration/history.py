"""The canonical history table from CSV or Parquet, on the model's step.

A history has a UTC time index and the columns of :data:`COLUMNS` (``T_out``, ``ghi``,
``T_room__<room>``, ``P_heat__<room>``, ``P_pv``, ``P_load``, ``P_grid``, ``P_bat``, ``soc``, prices;
``docs/reference/history.md`` is rendered from it). Where only relay states are logged,
``relay__<room>`` (0/1, or a duty fraction) is turned into heating power with the room's nominal
rating from the house file; a whole-house meter ``P_load_total`` becomes ``P_load`` once the
heating is subtracted.

Loading never silently invents data: values outside physical ranges and isolated spikes become NaN
(and are counted for the quality report), gaps up to ``max_gap`` are bridged, longer gaps stay NaN,
and everything lands on a regular grid of means over each step.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pems.errors import InputError, Problem
from pems.twin.house import House

#: Physical ranges per column kind (inclusive); outside is an outlier.
RANGES = {
    "T_out": (-45.0, 50.0), "T_ground": (-20.0, 40.0), "T_room": (-10.0, 45.0), "ghi": (0.0, 1400.0), "dni": (0.0, 1200.0),
    "dhi": (0.0, 800.0), "P_heat": (0.0, 1e5), "P_pv": (0.0, 1e5), "P_load": (0.0, 1e5),
    "P_grid": (-1e5, 1e5), "P_bat": (-1e5, 1e5), "soc": (0.0, 1.0), "relay": (0.0, 1.0),
    "price_import": (-5.0, 20.0), "price_export": (-5.0, 20.0), "P_load_total": (0.0, 1e5),
}
HELD = ("P_heat", "P_pv", "P_load", "P_grid", "P_bat", "relay", "price_import", "price_export", "P_load_total")
#: Column kinds that are one column per room: ``<kind>__<room>``.
PER_ROOM = ("T_room", "P_heat", "relay")

#: Every column kind a history may have: its unit and meaning (the ranges are :data:`RANGES`).
COLUMNS: dict[str, tuple[str, str]] = {
    "T_out": ("°C", "outdoor air temperature"),
    "ghi": ("W/m²", "global horizontal irradiance, measured or from a weather service"),
    "dni": ("W/m²", "direct normal irradiance (optional)"),
    "dhi": ("W/m²", "diffuse horizontal irradiance (optional)"),
    "T_room": ("°C", "room air temperature, one column per room id"),
    "P_heat": ("W", "electric heating power of the room"),
    "relay": ("0–1", "heating relay state (or duty fraction) of the room: becomes `P_heat` with the room's "
                     "`heater_w` from the house file (needs `--house`); a `P_heat` column of the room wins"),
    "T_ground": ("°C", "temperature below the slabs (e.g. a cellar), where logged; else the site's `ground_temperature_c`"),
    "P_pv": ("W", "PV AC power"),
    "P_load": ("W", "household load that is not heating or battery"),
    "P_load_total": ("W", "a whole-house meter: becomes `P_load` = `P_load_total` − Σ `P_heat` (clipped at 0) "
                          "where `P_load` is missing"),
    "P_grid": ("W", "grid power, import positive, export negative"),
    "P_bat": ("W", "battery power, charge positive"),
    "soc": ("0–1", "battery state of charge"),
    "price_import": ("currency/kWh", "import price"),
    "price_export": ("currency/kWh", "export price"),
}


def kind(column: str) -> str:
    """``T_room__obyvak`` → ``T_room``."""
    return column.split("__", 1)[0]


@dataclass
class History:
    """A history on a regular grid, with what cleaning did to it."""

    data: pd.DataFrame  # index: step starts (UTC); means over each step
    step: pd.Timedelta
    source: str
    rooms: tuple[str, ...]
    outliers: dict[str, int] = field(default_factory=dict)  # values removed per column
    raw_step: pd.Timedelta | None = None  # median spacing of the source
    sources: dict[str, str] = field(default_factory=dict)  # column -> source series (InfluxDB)

    def room_columns(self, prefix: str) -> list[str]:
        return [f"{prefix}__{r}" for r in self.rooms]

    def between(self, start: pd.Timestamp | None, end: pd.Timestamp | None) -> History:
        d = self.data
        if start is not None:
            d = d[d.index >= start]
        if end is not None:
            d = d[d.index < end]
        return History(d, self.step, self.source, self.rooms, dict(self.outliers), self.raw_step, dict(self.sources))


def read_table(path: Path) -> pd.DataFrame:
    """A CSV or Parquet file with a ``time`` column or a datetime index, UTC."""
    if not path.is_file():
        raise InputError(path, "", "history file not found")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path)
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad input file
        raise InputError(path, "", f"cannot read the history ({exc.__class__.__name__}: {exc})") from None
    if "time" in df.columns:
        t = pd.to_datetime(df.pop("time"), utc=True, errors="coerce")
    elif isinstance(df.index, pd.DatetimeIndex):
        t = df.index.tz_localize("UTC") if df.index.tz is None else df.index.tz_convert("UTC")
    else:
        raise InputError(path, "time", "expected a 'time' column (ISO 8601) or a datetime index")
    t = pd.DatetimeIndex(t)
    if t.isna().all():
        raise InputError(path, "time", "no readable times")
    df.index = t
    df = df[~df.index.isna()].sort_index()
    df = df[~df.index.duplicated(keep="last")]
    return df.apply(pd.to_numeric, errors="coerce")


def load_history(source: str | Path, house: House | None = None, step: pd.Timedelta = pd.Timedelta(minutes=15),
                 max_gap: pd.Timedelta = pd.Timedelta(hours=1), require_rooms: bool = True) -> History:
    """Load, clean and resample a history file onto ``step``.

    ``require_rooms=False`` accepts a history without room temperatures (what the PV and load
    forecasters learn from).

    Raises
    ------
    InputError
        Unreadable file, no time column, no room temperature column, relays without a house.
    """
    path = Path(source)
    raw = read_table(path)
    return prepare_history(raw, str(path), house, step, max_gap, require_rooms)


def prepare_history(raw: pd.DataFrame, source: str, house: House | None = None,
                    step: pd.Timedelta = pd.Timedelta(minutes=15),
                    max_gap: pd.Timedelta = pd.Timedelta(hours=1), require_rooms: bool = True) -> History:
    """Clean and resample an already-read table (UTC index); see :func:`load_history`."""
    rooms = tuple(c.split("__", 1)[1] for c in raw.columns if c.startswith("T_room__"))
    if not rooms and require_rooms:
        raise InputError(source, "T_room__<room>", "no room temperature column; expected e.g. T_room__living")
    if house is not None:
        unknown = [r for r in rooms if r not in house.room_ids]
        if unknown:
            raise InputError(source, f"T_room__{unknown[0]}", f"room {unknown[0]!r} is not in the house "
                                                              f"{house.name!r} ({', '.join(house.room_ids)})")
        rooms = tuple(r for r in house.room_ids if r in rooms)
    relays = [c for c in raw.columns if c.startswith("relay__")]
    if relays and house is None:
        raise InputError(source, relays[0], "relay states need the house file for the heaters' ratings (--house)")
    raw_step = raw.index.to_series().diff().median() if len(raw) > 1 else step
    outliers: dict[str, int] = {}
    clean = pd.DataFrame(index=raw.index)
    for c in raw.columns:
        k = kind(c)
        if k not in RANGES:
            continue
        v = raw[c].astype(float)
        lo, hi = RANGES[k]
        bad = (v < lo) | (v > hi)
        if k in ("T_room", "T_out"):  # isolated spikes: far from the rolling median of their neighbours
            med = v.rolling(5, center=True, min_periods=3).median()
            bad |= (v - med).abs() > 5.0
        outliers[c] = int(bad.sum())
        clean[c] = v.mask(bad)
    for c in relays:
        room = c.split("__", 1)[1]
        if room in house.room_ids:
            p = clean[c] * house.room(room).heater_w
            col = f"P_heat__{room}"
            clean[col] = p if col not in clean else clean[col].fillna(p)
        clean = clean.drop(columns=c)
    data = _resample(clean, step, max_gap)
    if "P_load_total" in data:  # a whole-house meter: the household load is what heating leaves
        heat = data[[c for c in data if c.startswith("P_heat__")]].sum(axis=1, min_count=1)
        load = (data["P_load_total"] - heat.fillna(0.0)).clip(lower=0.0)
        data["P_load"] = data["P_load"].fillna(load) if "P_load" in data else load
        data = data.drop(columns="P_load_total")
    return History(data, step, source, rooms, outliers, raw_step)


def check_rooms(history: History, house: House) -> None:
    """Refuse a history that lacks a room of the house: no ``T_room__<room>`` column, or one without
    a single value (what calibration and prediction need of every room).

    Raises
    ------
    InputError
        One problem per such room, naming the history and the column.
    """
    problems = []
    for r in house.room_ids:
        col = f"T_room__{r}"
        if col not in history.data:
            problems.append(Problem(history.source, col, f"the house {house.name!r} has room {r!r}, but the "
                                                         f"history has no column {col}"))
        elif not history.data[col].notna().any():
            problems.append(Problem(history.source, col, f"room {r!r} has no values in the history (all empty "
                                                         "or removed as out of range)"))
    if problems:
        raise InputError.many(problems)


def _resample(df: pd.DataFrame, step: pd.Timedelta, max_gap: pd.Timedelta) -> pd.DataFrame:
    """Means over each step: temperatures and irradiance as the mean of their linear interpolant,
    powers and states as time-weighted means of held values; nothing across gaps > ``max_gap``."""
    start = df.index[0].floor(step)
    end = df.index[-1].floor(step) + step  # the last sample's step is included
    grid = pd.date_range(start, end, freq=step, inclusive="left")
    if df.index.isin(grid).all():  # already on the grid (each value a step mean): bridge short gaps only
        out = df.reindex(grid)
        limit = int(max_gap / step)
        for c in out.columns:
            if limit > 0:
                filled = out[c].ffill(limit=limit, limit_area="inside") if kind(c) in HELD else \
                    out[c].interpolate(limit=limit, limit_area="inside")
                # never across a gap longer than max_gap
                run = out[c].isna().groupby(out[c].notna().cumsum()).transform("sum")
                out[c] = out[c].where(out[c].notna() | (run > limit), filled)
        out.index.name = "time"
        return out
    fine_step = min(step / 5, pd.Timedelta(minutes=1))
    fine = pd.date_range(start, end, freq=fine_step, inclusive="left")
    per = int(round(step / fine_step))
    out = {}
    for c in df.columns:
        s = df[c].dropna()
        if s.empty:
            out[c] = np.full(len(grid), np.nan)
            continue
        # a fine point is covered if the nearest samples around it are no more than max_gap apart
        idx = s.index.union(fine)
        if kind(c) in HELD:
            v = s.reindex(idx).ffill(limit_area="inside")
        else:
            v = s.reindex(idx).interpolate(method="time", limit_area="inside")
        prev_t = pd.Series(s.index, index=s.index).reindex(idx).ffill()
        next_t = pd.Series(s.index, index=s.index).reindex(idx).bfill()
        gap = (next_t - prev_t) > max_gap
        v = v.mask(gap).reindex(fine)
        vals = v.to_numpy().reshape(len(grid), per)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN steps are expected in gaps
            m = np.nanmean(vals, axis=1)
        # a step needs most of its fine points to be trusted
        ok = np.isfinite(vals).sum(axis=1) >= 0.6 * per
        out[c] = np.where(ok, m, np.nan)
    return pd.DataFrame(out, index=pd.DatetimeIndex(grid, name="time"))
