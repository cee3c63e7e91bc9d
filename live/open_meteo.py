"""Open-Meteo's weather forecast for the house's site (``[forecast] weather = "open-meteo"``).

One request to the forecast API (``/v1/forecast``, no key needed; https://open-meteo.com/en/docs):
hourly ``temperature_2m`` [°C], ``shortwave_radiation`` (global horizontal irradiance),
``direct_normal_irradiance`` and ``diffuse_radiation`` [W m⁻²], and ``cloud_cover`` [%], in UTC,
from yesterday over the coming days. The response is JSON::

    {"latitude": 49.2, "longitude": 16.6, "generationtime_ms": 0.6, "utc_offset_seconds": 0,
     "timezone": "GMT", "timezone_abbreviation": "GMT", "elevation": 240.0,
     "hourly_units": {"time": "iso8601", "temperature_2m": "°C", "shortwave_radiation": "W/m²", ...},
     "hourly": {"time": ["2026-12-05T00:00", ...], "temperature_2m": [1.3, ...], ...}}

and an error is HTTP 400 with ``{"error": true, "reason": "..."}``.

Temperatures are instantaneous at their hour; Open-Meteo's radiation is the mean over the hour
*before* its stamp, so it is put at the middle of that hour (the scenario inputs read point samples
and interpolate). Where the model gives no radiation (``null``), it comes from the cloud cover:
the clear-sky GHI at the site (pvlib, Ineichen) scaled by ``0.35 + 0.65 (1 − cover)`` (the linear
model of Larson et al. 2016 that pvlib's former forecast module used).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import requests

from pems.live.fetched import FetchError
from pems.twin.house import Site

URL = "https://api.open-meteo.com/v1/forecast"
HOURLY = ("temperature_2m", "shortwave_radiation", "direct_normal_irradiance", "diffuse_radiation", "cloud_cover")
#: GHI under full cloud cover, as a share of the clear sky's (Larson et al. 2016, pvlib's former forecast module)
CLOUD_OFFSET = 0.35


def fetch_weather(url: str, site: Site, now: pd.Timestamp, timeout_s: float = 20.0, days: int = 3) -> pd.DataFrame:
    """The weather forecast as a table of ``T_out``, ``ghi``, ``dni``, ``dhi`` (UTC index).

    Raises
    ------
    FetchError
        No answer in ``timeout_s``, an error status (with the service's reason), a malformed body.
    """
    params = {"latitude": f"{site.latitude:.4f}", "longitude": f"{site.longitude:.4f}", "hourly": ",".join(HOURLY),
              "timezone": "UTC", "timeformat": "iso8601", "past_days": 1, "forecast_days": int(days)}
    try:
        r = requests.get(url, params=params, timeout=timeout_s)
    except requests.Timeout:
        raise FetchError(f"no answer from {url} within {timeout_s:g} s") from None
    except requests.RequestException as exc:
        raise FetchError(f"{url} not reachable: {type(exc).__name__}") from None
    body = _json(r)
    if r.status_code != 200 or body.get("error"):
        raise FetchError(f"{url}: HTTP {r.status_code}: {body.get('reason', r.reason)}")
    return parse(body, site)


def _json(r: requests.Response) -> dict[str, Any]:
    try:
        body = r.json()
    except ValueError:
        raise FetchError(f"{r.url.split('?')[0]}: HTTP {r.status_code}: not JSON ({r.text[:60]!r})") from None
    if not isinstance(body, dict):
        raise FetchError(f"{r.url.split('?')[0]}: HTTP {r.status_code}: not a JSON object")
    return body


def parse(body: dict[str, Any], site: Site) -> pd.DataFrame:
    """An Open-Meteo forecast response → ``T_out``, ``ghi``, ``dni``, ``dhi`` at point times (UTC)."""
    try:
        hourly = body["hourly"]
        offset = pd.Timedelta(seconds=int(body.get("utc_offset_seconds", 0)))
        times = pd.DatetimeIndex(pd.to_datetime(hourly["time"])) - offset  # local stamps → UTC
        times = times.tz_localize("UTC") if times.tz is None else times.tz_convert("UTC")
        cols = {k: np.asarray([np.nan if v is None else v for v in hourly[k]], dtype=float)
                for k in HOURLY if k in hourly}
    except (KeyError, TypeError, ValueError) as exc:
        raise FetchError(f"malformed forecast: {type(exc).__name__}: {exc}") from None
    if "temperature_2m" not in cols or any(len(v) != len(times) for v in cols.values()):
        raise FetchError("malformed forecast: no temperature_2m, or series of different lengths")
    n = len(times)
    nan = np.full(n, np.nan)
    ghi = cols.get("shortwave_radiation", nan).copy()
    dni, dhi = cols.get("direct_normal_irradiance", nan), cols.get("diffuse_radiation", nan)
    mid = times - pd.Timedelta(minutes=30)  # radiation: the mean of the hour before the stamp
    cover = cols.get("cloud_cover", nan)
    need = ~np.isfinite(ghi) & np.isfinite(cover)
    if need.any():
        ghi[need] = from_cloud_cover(mid[need], cover[need], site)
        dni, dhi = np.where(need, np.nan, dni), np.where(need, np.nan, dhi)  # (then split from ghi, Erbs)
    temp = pd.DataFrame({"T_out": cols["temperature_2m"]}, index=times)
    rad = pd.DataFrame({"ghi": ghi, "dni": dni, "dhi": dhi}, index=mid)
    out = temp.join(rad, how="outer").sort_index()
    out = out.interpolate(method="time", limit_area="inside")
    out = out.dropna(subset=["T_out", "ghi"])
    if out[["dni", "dhi"]].isna().any().any():
        out = out.drop(columns=["dni", "dhi"])  # decomposed from ghi (Erbs) when read
    return out


def from_cloud_cover(times: pd.DatetimeIndex, cover_pct: np.ndarray, site: Site) -> np.ndarray:
    """GHI [W m⁻²] from the total cloud cover [%]: the clear sky's scaled by the linear model."""
    from pvlib.location import Location

    loc = Location(site.latitude, site.longitude, tz="UTC", altitude=site.altitude_m)
    clear = loc.get_clearsky(pd.DatetimeIndex(times), model="ineichen")["ghi"].to_numpy()
    cc = np.clip(np.asarray(cover_pct, dtype=float), 0.0, 100.0) / 100.0
    return clear * (CLOUD_OFFSET + (1.0 - CLOUD_OFFSET) * (1.0 - cc))
