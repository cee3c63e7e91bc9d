"""Weather: built-in real measured weather and CSV files, brought onto the model's steps.

Built-in names (all real measurements):

``amsterdam-iwec``
    ASHRAE IWEC typical year of Amsterdam Schiphol (52.3 N, 4.8 E): Central European maritime
    weather. Each month is a real month of 1982–1999; its coldest week (8–14 February, daily means
    to −4 °C, −8.4 °C at night) is the built-in cold week.
``piedmont-pvgis-tmy``
    PVGIS typical meteorological year at 45.0 N, 8.0 E, 250 m (Piedmont, Italy; months from
    2005–2023, satellite irradiance and ERA5 temperature): sunnier and milder than Central Europe.
``holzkirchen-2014-spring`` / ``holzkirchen-2014-autumn``
    10-minute measurements of the IEA EBC Annex 58 Twin Houses experiment at Fraunhofer IBP,
    Holzkirchen (47.9 N, 11.7 E, 680 m): Central European weather for 2014-04-09..05-19 and
    2014-08-21..10-01.
``sand-point-tmy3`` / ``greensboro-tmy3``
    NREL TMY3 of Sand Point, Alaska (55.3 N, 160.5 W: a cold maritime year) and of Greensboro,
    North Carolina (36.1 N, 80.0 W: mild winters, hot summers), from the pvlib wheel.

**How a built-in set is replayed at a house elsewhere.** Its days are replayed in the scenario's
calendar (a typical year onto any year, a measured season onto the same dates of any year;
29 February repeats 28 February), and its clock is aligned by *local solar time*, never by UTC
stamps: every sample is moved by the difference in longitude (4 minutes a degree), so the
weather's solar noon falls on the house's solar noon and its mornings on the house's mornings.
Amsterdam's weather at a house at 16.6° E arrives 47 minutes earlier in UTC; Sand Point's 11.8
hours earlier. The weather is then used *at the house*, as building simulation programs use a
nearby weather file (EnergyPlus computes the sun at the building's site): the sun, the split of
global into beam and diffuse, the PV and the windows are computed at the house's latitude and
longitude, so a simulated trajectory is consistent with its own house file (calibrating the house
from it finds the house's PV and windows). Each interval's irradiation is kept, except what falls
while the sun is below the house's horizon (minutes of twilight where days differ in length).

A CSV file is used as given, at the house's own site.

CSV columns: ``time`` (ISO 8601; without a zone it is read as UTC), ``T_out`` [°C], ``ghi``
[W m⁻²], optional ``dni``, ``dhi`` [W m⁻²] (else decomposed from ``ghi`` with Erbs) and
``wind_speed`` [m s⁻¹] (else 1 m/s). Values are point samples, interpolated in time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from pems.errors import InputError
from pems.twin.house import Site
from pems.twin.tables import read_time_csv, resolve_csv

REQUIRED = ("T_out", "ghi")
OPTIONAL = ("dni", "dhi", "wind_speed")


@dataclass(frozen=True)
class Weather:
    """Weather samples and where they were measured."""

    name: str
    data: pd.DataFrame  # UTC index, point samples: T_out, ghi [, dni, dhi, wind_speed]
    site: Site | None  # where measured (None: at the house)
    replay: bool  # replayed onto the scenario's calendar (built-in sets)
    source: str
    # Irradiance given as means over the interval *ending* at each stamp (TMY3, EPW: 1 h); None when
    # every column is a point sample.
    irradiance_interval: pd.Timedelta | None = None
    # How the samples were brought to the house (empty: used as given).
    alignment: str = ""


_HOLZKIRCHEN = Site(latitude=47.874, longitude=11.728, altitude_m=680, timezone="Europe/Berlin", country="DE")

BUILTIN_WEATHER = {
    "amsterdam-iwec": "ASHRAE IWEC typical year, Amsterdam Schiphol (WMO 062400), as redistributed with "
                      "EnergyPlus and pvlib",
    "piedmont-pvgis-tmy": "PVGIS typical meteorological year 2005-2023 at 45.0 N 8.0 E, 250 m "
                          "(c) European Union, JRC",
    "holzkirchen-2014-spring": "IEA EBC Annex 58 Twin Houses, Fraunhofer IBP Holzkirchen, 2014-04-09..05-19",
    "holzkirchen-2014-autumn": "IEA EBC Annex 58 Twin Houses, Fraunhofer IBP Holzkirchen, 2014-08-21..10-01",
    "sand-point-tmy3": "NREL TMY3 Sand Point, AK (USAF 703165), from the pvlib wheel",
    "greensboro-tmy3": "NREL TMY3 Greensboro, NC (USAF 723170), from the pvlib wheel",
}
_TMY_FILES = {"sand-point-tmy3": ("703165TY.csv", "America/Anchorage"),
              "greensboro-tmy3": ("723170TYA.CSV", "America/New_York")}
_EPW_FILES = {"amsterdam-iwec": ("NLD_Amsterdam062400_IWEC.epw.gz", "Europe/Amsterdam", "NL")}
_PVGIS_FILES = {"piedmont-pvgis-tmy": ("tmy_45.000_8.000_2005_2023.csv.gz", "Europe/Rome", "IT")}
_REF_YEAR = 2023  # typical years are anchored to a non-leap year before replay
_HOUR = pd.Timedelta(hours=1)


def load_weather(spec: str, base_dir: Path | None = None) -> Weather:
    """A built-in weather set by name, or a CSV file (relative to ``base_dir``)."""
    if spec in _TMY_FILES:
        return _read_tmy3(spec)
    if spec in _EPW_FILES:
        return _read_epw(spec)
    if spec in _PVGIS_FILES:
        return _read_pvgis(spec)
    if spec in BUILTIN_WEATHER:
        df = pd.read_csv(_carried(f"{spec}.csv.gz"), index_col="time", parse_dates=True)
        data = _dark_at_night(df[["T_out", "ghi", "dhi", "wind_speed"]], _HOLZKIRCHEN, pd.Timedelta(minutes=10))
        return Weather(spec, data, _HOLZKIRCHEN, True, BUILTIN_WEATHER[spec])
    path = resolve_csv(spec, base_dir, "weather", BUILTIN_WEATHER)
    df = read_time_csv(path, REQUIRED, OPTIONAL)
    return Weather(path.stem, df, None, False, str(path))


def aligned_to(weather: Weather, house: Site) -> Weather:
    """``weather`` as replayed at ``house``: moved by local solar time, used at the house's site.

    A built-in set measured at another longitude has every stamp moved by the difference in
    longitude (4 minutes a degree, east earlier in UTC), so its solar noon falls on the house's;
    its sun is then the house's (see the module's notes). Sets measured at the house, and CSV
    files, are returned unchanged.
    """
    if not weather.replay or weather.site is None:
        return weather
    shift = pd.Timedelta(hours=(house.longitude - weather.site.longitude) / 15.0).round("s")
    minutes = shift.total_seconds() / 60
    note = (f"{weather.name} ({weather.site.latitude:.2f}° N, {weather.site.longitude:.2f}° E) aligned by local "
            f"solar time to the house at {house.latitude:.2f}° N, {house.longitude:.2f}° E: samples "
            f"{abs(minutes):.0f} min {'earlier' if minutes > 0 else 'later'} in UTC, sun at the house")
    data = weather.data.set_axis(weather.data.index - shift)
    return Weather(weather.name, data, house, weather.replay, weather.source, weather.irradiance_interval, note)


def _dark_at_night(df: pd.DataFrame, site: Site, interval: pd.Timedelta) -> pd.DataFrame:
    """Measured irradiance with the pyranometers' night offsets removed.

    Thermal offsets leave a few tenths of W/m² (either sign) in the dark; an interval-mean sample
    whose interval has the sun below the horizon throughout is set to zero, and negative values to
    zero, as in the usual quality control of radiation data.
    """
    from pems.twin.solar import solar_position

    elev = np.max([90.0 - solar_position(df.index + f * interval, site)["zenith"].to_numpy()
                   for f in (-0.5, 0.0, 0.5)], axis=0)
    out = df.copy()
    for col in ("ghi", "dni", "dhi"):
        if col in out:
            out[col] = out[col].clip(lower=0.0).where(elev > 0.0, 0.0)
    return out


def _carried(fname: str) -> Path:
    return Path(str(resources.files("pems.twin") / "data" / fname))


def _typical_year(df: pd.DataFrame) -> pd.DataFrame:
    """A typical year's months (each from its own real year) on one non-leap reference year, in UTC."""
    idx = df.index.tz_convert("UTC")
    stamps = pd.DatetimeIndex([t.replace(year=_REF_YEAR) for t in idx])
    return df.set_axis(stamps).sort_index()


def _read_epw(name: str) -> Weather:
    import gzip
    import io

    import pvlib

    fname, tz, country = _EPW_FILES[name]
    with gzip.open(_carried(fname), "rt", encoding="utf-8") as f:
        df, meta = pvlib.iotools.read_epw(io.StringIO(f.read()), coerce_year=_REF_YEAR)
    # pvlib stamps an EPW row at the start of its hour (local standard time); irradiance is the
    # mean over that hour and temperature is instantaneous at its end. Stamp both at the hour's end.
    df = df.set_axis(df.index + _HOUR)
    data = _typical_year(df[["temp_air", "ghi", "dni", "dhi", "wind_speed"]].rename(columns={"temp_air": "T_out"})
                         .astype(float))
    site = Site(latitude=meta["latitude"], longitude=meta["longitude"], altitude_m=meta["altitude"],
                timezone=tz, country=country)
    return Weather(name, data, site, True, BUILTIN_WEATHER[name], irradiance_interval=_HOUR)


def _read_pvgis(name: str) -> Weather:
    import gzip
    import io

    import pvlib

    fname, tz, country = _PVGIS_FILES[name]
    with gzip.open(_carried(fname), "rb") as f:
        df, meta = pvlib.iotools.read_pvgis_tmy(io.BytesIO(f.read()), pvgis_format="csv", map_variables=True)
    inputs = meta["inputs"]
    # PVGIS irradiance is an hourly value observed ``irradiance time offset`` hours after the
    # stamp; taken as the mean of the hour centred there. Temperature is at the stamp.
    offset = pd.Timedelta(hours=float(inputs.get("irradiance time offset", 0.0))).round("s")
    df = _typical_year(df)
    irr = df[["ghi", "dni", "dhi"]].clip(lower=0.0)
    irr = irr.set_axis(irr.index + offset + _HOUR / 2)
    other = df[["temp_air", "wind_speed"]].rename(columns={"temp_air": "T_out"})
    data = pd.concat([other, irr], axis=1, sort=True).astype(float)
    site = Site(latitude=inputs["latitude"], longitude=inputs["longitude"], altitude_m=inputs["elevation"],
                timezone=tz, country=country)
    return Weather(name, data, site, True, BUILTIN_WEATHER[name], irradiance_interval=_HOUR)


def _read_tmy3(name: str) -> Weather:
    import pvlib

    fname, tz = _TMY_FILES[name]
    path = os.path.join(os.path.dirname(pvlib.__file__), "data", fname)
    df, meta = pvlib.iotools.read_tmy3(path, coerce_year=_REF_YEAR, map_variables=True)
    df = df.tz_convert("UTC")
    # TMY3 irradiance is the mean of the hour *ending* at the stamp; temperature and wind are
    # instantaneous at the stamp (see weather_at_steps for how each is brought onto steps).
    data = df[["temp_air", "ghi", "dni", "dhi", "wind_speed"]].rename(columns={"temp_air": "T_out"}).astype(float)
    site = Site(latitude=meta["latitude"], longitude=meta["longitude"], altitude_m=meta["altitude"],
                timezone=tz, country="US")
    return Weather(name, data, site, True, BUILTIN_WEATHER[name], irradiance_interval=pd.Timedelta(hours=1))


def _shift_to_year(data: pd.DataFrame, year: int) -> pd.DataFrame:
    """Move a (non-leap) reference year of samples onto ``year`` by calendar date."""
    ref = data.index[len(data) // 2].year
    off = data.index - pd.Timestamp(f"{ref}-01-01", tz="UTC")
    base = pd.Timestamp(f"{year}-01-01", tz="UTC")
    ref_leap, tgt_leap = _leap(ref), _leap(year)
    day = pd.Timedelta(days=1)
    mar1 = pd.Timedelta(days=59)  # offset of 1 March in a non-leap year
    if ref_leap:  # drop 29 February, then treat as non-leap
        feb29 = (off >= mar1) & (off < mar1 + day)
        data, off = data[~feb29], off[~feb29]
        off = off.where(off < mar1, off - day)
    if tgt_leap:
        after = off >= mar1
        shifted = data.set_axis(base + off.where(~after, off + day))
        feb28 = (off >= mar1 - day) & (off < mar1)
        dup = data[feb28].set_axis(base + off[feb28] + day)
        return pd.concat([shifted, dup]).sort_index()
    return data.set_axis(base + off)


def _leap(y: int) -> bool:
    return y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)


def samples_for(weather: Weather, start: pd.Timestamp, end: pd.Timestamp, key: str = "weather") -> pd.DataFrame:
    """Weather samples covering [start, end] (with a margin), replayed where the set allows."""
    margin = pd.Timedelta(days=1)
    if weather.replay:
        years = range((start - margin).year - 1, (end + margin).year + 2)
        parts = [_shift_to_year(weather.data, y) for y in years]
        data = pd.concat(parts).sort_index()
        data = data[~data.index.duplicated(keep="last")]
    else:
        data = weather.data
    sel = data[(data.index >= start - margin) & (data.index <= end + margin)]
    first, last = (sel.index[0], sel.index[-1]) if len(sel) else (None, None)
    if first is None or first > start or last < end:
        cover = f"{weather.data.index[0]:%Y-%m-%d %H:%M} .. {weather.data.index[-1]:%Y-%m-%d %H:%M} UTC"
        if weather.replay:
            cover = f"{weather.data.index[0]:%m-%d} .. {weather.data.index[-1]:%m-%d} of any year"
        raise InputError(weather.source, key,
                         f"covers {cover}; the scenario needs {start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M} UTC")
    return sel


def step_means(samples: pd.DataFrame, index: pd.DatetimeIndex, step: pd.Timedelta) -> pd.DataFrame:
    """Exact mean over each step ``[t, t + step)`` of the piecewise-linear interpolant of point samples.

    Gaps (NaN) are bridged linearly; before the first and after the last sample the value is held.
    """
    t0 = index[0]
    bounds = np.append((index - t0).total_seconds().to_numpy(), (index[-1] + step - t0).total_seconds())
    ts = (samples.index - t0).total_seconds().to_numpy()
    out = {}
    for col in samples.columns:
        v = samples[col].to_numpy(dtype=float)
        ok = np.isfinite(v)
        out[col] = _interval_means(ts[ok], v[ok], bounds)
    return pd.DataFrame(out, index=index)


def _interval_means(ts: np.ndarray, vs: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Means of the linear interpolant of (ts, vs) between consecutive ``bounds`` (exact)."""
    inner = ts[(ts > bounds[0]) & (ts < bounds[-1])]
    grid = np.union1d(bounds, inner)
    v = np.interp(grid, ts, vs)
    cum = np.concatenate([[0.0], np.cumsum(np.diff(grid) * (v[1:] + v[:-1]) / 2)])
    at = np.interp(bounds, grid, cum)
    return np.diff(at) / np.diff(bounds)


def _disaggregate_irradiance(samples: pd.DataFrame, interval: pd.Timedelta, site: Site,
                             index: pd.DatetimeIndex, step: pd.Timedelta) -> pd.DataFrame:
    """Step means of interval-mean irradiance, shaped within each interval by the sun's height.

    Each interval's mean global irradiance is spread over the interval in proportion to cos(zenith)
    (zero while the sun is down), which keeps every interval's energy and puts no light into dark
    minutes; the interval's diffuse fraction is kept and the beam follows from the closure. The
    intervals end at the samples' stamps, which need not fall on the hour (weather aligned by solar
    time is not).
    """
    from pems.twin.solar import solar_position

    samples = samples.dropna(how="all")
    fine = min(step, interval) / 6
    pad = int(np.ceil(interval / fine))
    t = pd.date_range(index[0] - pad * fine, index[-1] + step + pad * fine, freq=fine, inclusive="left") + fine / 2
    sun = solar_position(t, site)
    cosz = np.cos(np.radians(sun["zenith"].to_numpy())).clip(min=0.0)
    stamps = samples.index
    pos = np.searchsorted(stamps.as_unit("ns").asi8, t.as_unit("ns").asi8, side="left")  # the first stamp at or after each piece
    inside = pos < len(stamps)
    pos_c = np.minimum(pos, len(stamps) - 1)
    inside &= (stamps[pos_c] - t) <= interval  # the piece lies in the interval ending there
    group = np.where(inside, pos_c, -1)
    per = pd.Series(cosz).groupby(group).transform("mean").to_numpy()
    ghi_h = np.where(inside, samples["ghi"].to_numpy(dtype=float)[pos_c], np.nan)
    dhi_h = samples["dhi"].to_numpy(dtype=float)[pos_c] if "dhi" in samples else np.full(len(t), np.nan)
    shape = np.divide(cosz, per, out=np.zeros_like(cosz), where=per > 1e-9)
    ghi = np.nan_to_num(ghi_h) * shape
    frac = np.divide(dhi_h, ghi_h, out=np.ones_like(ghi_h), where=np.nan_to_num(ghi_h) > 0)
    dhi = ghi * np.clip(np.nan_to_num(frac, nan=1.0), 0.0, 1.0)
    dni = np.where(sun["zenith"].to_numpy() < 87.0, (ghi - dhi) / np.maximum(cosz, 0.065), 0.0)
    fine_df = pd.DataFrame({"ghi": ghi, "dni": dni, "dhi": dhi}, index=t)
    steps = np.searchsorted(index.as_unit("ns").asi8, t.as_unit("ns").asi8, side="right") - 1
    keep = (steps >= 0) & (t < index[-1] + step)
    means = fine_df[keep].groupby(steps[keep]).mean()
    means.index = index[means.index]
    return means.reindex(index).fillna(0.0)


def weather_at_steps(weather: Weather, index: pd.DatetimeIndex, step: pd.Timedelta) -> pd.DataFrame:
    """Weather as means over each step: point samples exactly, interval-mean irradiance shaped by the sun."""
    samples = samples_for(weather, index[0], index[-1] + step)
    if weather.irradiance_interval is None or weather.site is None:
        return step_means(samples, index, step)
    irr = [c for c in ("ghi", "dni", "dhi") if c in samples]
    out = step_means(samples.drop(columns=irr), index, step)
    # by chunks of steps: the sun at every fine piece of a year is 200 000 rows of pvlib's work (70 MB);
    # each chunk pads itself with whole intervals, so the result does not depend on the chunking
    parts = [_disaggregate_irradiance(samples[irr], weather.irradiance_interval, weather.site,
                                      index[a:a + IRRADIANCE_CHUNK], step)
             for a in range(0, len(index), IRRADIANCE_CHUNK)]
    return out.join(pd.concat(parts))


#: Steps disaggregated at once in :func:`weather_at_steps` (bounds its memory; a month of 15-minute steps).
IRRADIANCE_CHUNK = 2976
