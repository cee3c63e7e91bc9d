"""Day-ahead prices fetched by the loop: ENTSO-E's Transparency Platform for any European bidding
zone (``[forecast] prices = "entsoe"``) and OTE, the Czech market operator (``prices = "ote"``).

Both give the spot price in EUR/MWh; it becomes EUR/kWh here, and the contract of
``[forecast.tariff]`` (adder, VAT, export fee or a fixed export price, ``spot_rate`` into the
tariff's currency) makes it the import and export prices (:func:`pems.twin.prices.contract_prices`).
A price holds over its interval (an hour, or a quarter of an hour since the market moved to 15-minute
products). Yesterday's, today's and, once published (around 13:00 CET), tomorrow's prices are asked for.

**ENTSO-E** (https://transparency.entsoe.eu, its RESTful API guide: document type A44, "Energy
Prices"): ``GET /api?securityToken=…&documentType=A44&in_Domain=EIC&out_Domain=EIC&periodStart=
yyyyMMddHHmm&periodEnd=yyyyMMddHHmm`` returns a ``Publication_MarketDocument`` (XML) of
``TimeSeries``, each with ``Period``\\ s of a ``timeInterval`` (UTC), a ``resolution`` (``PT60M`` or
``PT15M``) and ``Point``\\ s (``position`` from 1, ``price.amount``); curve type A03 leaves out a
point whose price repeats the one before. No data, or a bad query, is an
``Acknowledgement_MarketDocument`` with a ``Reason`` (``code``, ``text``); a bad token is HTTP 401.
The token comes from ``PEMS_ENTSOE_TOKEN`` or a credentials file (``PEMS_ENTSOE_TOKEN=…``), never
from the config, and never appears in a message.

**OTE** (https://www.ote-cr.cz, the day-ahead market's chart data, as its web page loads it):
``GET …/denni-trh/@@chart-data?report_date=YYYY-MM-DD&time_resolution=PT60M`` returns JSON
``{"data": {"dataLine": [{"title": "Cena (EUR/MWh)", "tooltip": "Cena", "point": [{"x": "1", "y":
95.3}, …]}, …]}}``: ``x`` counts the intervals of the delivery day in Prague's local time (23 or 25
hours on the days the clocks change), ``y`` the price. A day not yet published has no points.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import requests

from pems.live.fetched import FetchError
from pems.twin.prices import Tariff, contract_prices

ENTSOE_URL = "https://web-api.tp.entsoe.eu/api"
OTE_URL = "https://www.ote-cr.cz/cs/kratkodobe-trhy/elektrina/denni-trh/@@chart-data"
OTE_ZONE = "Europe/Prague"
TOKEN_VAR = "PEMS_ENTSOE_TOKEN"


def _get(url: str, params: dict[str, Any], timeout_s: float, secret: str | None = None) -> requests.Response:
    try:
        return requests.get(url, params=params, timeout=timeout_s)
    except requests.Timeout:
        raise FetchError(f"no answer from {url} within {timeout_s:g} s") from None
    except requests.RequestException as exc:
        text = f"{url} not reachable: {type(exc).__name__}"
        raise FetchError(text.replace(secret, "***") if secret else text) from None


def _sorted(points: pd.Series) -> pd.Series:
    """Prices at their interval starts, in order, each start once (a price holds over its interval:
    the prices reader takes the last one to hold for one interval more)."""
    s = points.sort_index()
    return s[~s.index.duplicated(keep="last")]


# ---------------------------------------------------------------------------------------------
# ENTSO-E
# ---------------------------------------------------------------------------------------------
def entsoe_token(credentials_file: Path | None = None) -> str:
    """``PEMS_ENTSOE_TOKEN``, else the credentials file's ``PEMS_ENTSOE_TOKEN=…`` line; FetchError without one."""
    token = os.environ.get(TOKEN_VAR, "").strip()
    if not token and credentials_file is not None:
        try:
            for line in Path(credentials_file).read_text(encoding="utf-8").splitlines():
                key, _, value = line.partition("=")
                if key.strip() == TOKEN_VAR:
                    token = value.strip().strip('"').strip("'")
        except OSError as exc:
            raise FetchError(f"the credentials file {credentials_file} cannot be read ({exc.strerror})") from None
    if not token:
        raise FetchError(f"no ENTSO-E token: set {TOKEN_VAR} or name a credentials_file in [forecast.entsoe]")
    return token


def fetch_entsoe(url: str, area: str, token: str, now: pd.Timestamp, tariff: Tariff,
                 timeout_s: float = 30.0) -> pd.DataFrame:
    """ENTSO-E's day-ahead prices of ``area`` (an EIC code, e.g. ``10YCZ-CEPS-----N``) from yesterday
    to the day after tomorrow, through the contract: ``price_import``, ``price_export``."""
    start = (now - pd.Timedelta(days=1)).floor("D")
    end = (now + pd.Timedelta(days=2)).ceil("D")
    params = {"securityToken": token, "documentType": "A44", "in_Domain": area, "out_Domain": area,
              "periodStart": f"{start:%Y%m%d%H%M}", "periodEnd": f"{end:%Y%m%d%H%M}"}
    r = _get(url, params, timeout_s, token)
    if r.status_code == 401:
        raise FetchError(f"{url}: HTTP 401: the ENTSO-E token was refused")
    spot = parse_entsoe(r.text, r.status_code)
    return contract_prices(spot, tariff)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_entsoe(text: str, status: int = 200) -> pd.Series:
    """A ``Publication_MarketDocument`` → the spot price [EUR kWh⁻¹] held from each interval's start
    (UTC index); an ``Acknowledgement_MarketDocument`` or anything else → FetchError with its reason."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise FetchError(f"HTTP {status}: not XML ({exc})") from None
    kind = _local(root.tag)
    if kind == "Acknowledgement_MarketDocument":
        reason = root.find(".//{*}Reason/{*}text")
        code = root.find(".//{*}Reason/{*}code")
        raise FetchError(f"HTTP {status}: ENTSO-E says: {reason.text if reason is not None else '?'}"
                         f"{f' (code {code.text})' if code is not None else ''}")
    if kind != "Publication_MarketDocument" or status != 200:
        raise FetchError(f"HTTP {status}: not a price document ({kind})")
    prices: dict[pd.Timestamp, float] = {}
    try:
        for period in root.iter():
            if _local(period.tag) != "Period":
                continue
            start = pd.Timestamp(period.find("{*}timeInterval/{*}start").text)
            end = pd.Timestamp(period.find("{*}timeInterval/{*}end").text)
            res = pd.Timedelta(period.find("{*}resolution").text)
            n = int(round((end - start) / res))
            pts = {int(p.find("{*}position").text): float(p.find("{*}price.amount").text)
                   for p in period.findall("{*}Point")}
            if not pts:
                continue
            value = np.nan
            for pos in range(1, n + 1):  # A03: a missing position repeats the price before it
                value = pts.get(pos, value)
                if np.isfinite(value):
                    prices[start + (pos - 1) * res] = value / 1000.0
    except (AttributeError, TypeError, ValueError) as exc:
        raise FetchError(f"malformed price document: {type(exc).__name__}: {exc}") from None
    if not prices:
        raise FetchError("a price document without prices")
    s = pd.Series(prices, name="spot")
    s.index = pd.DatetimeIndex(s.index).tz_convert("UTC")
    return _sorted(s)


# ---------------------------------------------------------------------------------------------
# OTE
# ---------------------------------------------------------------------------------------------
def fetch_ote(url: str, now: pd.Timestamp, tariff: Tariff, resolution: str = "PT60M",
              timeout_s: float = 30.0) -> pd.DataFrame:
    """OTE's day-ahead prices for yesterday, today and tomorrow (Prague's days; tomorrow once
    published), through the contract: ``price_import``, ``price_export``."""
    today = now.tz_convert(OTE_ZONE).normalize()
    parts = []
    for k in (-1, 0, 1):
        day = (today + pd.Timedelta(days=k)).date()
        r = _get(url, {"report_date": f"{day:%Y-%m-%d}", "time_resolution": resolution}, timeout_s)
        if r.status_code != 200:
            raise FetchError(f"{url}: HTTP {r.status_code} for {day}")
        try:
            body = r.json()
        except ValueError:
            raise FetchError(f"{url}: HTTP 200: not JSON ({r.text[:60]!r})") from None
        s = parse_ote(body, day, resolution)
        if len(s):
            parts.append(s)
        elif k <= 0:
            raise FetchError(f"{url}: no prices for {day}")
    return contract_prices(_sorted(pd.concat(parts)), tariff)


def parse_ote(body: Any, day: Any, resolution: str = "PT60M") -> pd.Series:
    """OTE's chart data of delivery day ``day`` → the spot price [EUR kWh⁻¹] from each interval's
    start (UTC); empty when the day is not published yet."""
    try:
        lines = body["data"]["dataLine"]
        line = next((d for d in lines if "EUR/MWh" in str(d.get("title", "")) or d.get("tooltip") == "Cena"), None)
        if line is None:
            raise KeyError("no price line (EUR/MWh)")
        points = [(int(p["x"]), float(p["y"])) for p in line.get("point", [])]
    except (KeyError, TypeError, ValueError) as exc:
        raise FetchError(f"malformed chart data: {type(exc).__name__}: {exc}") from None
    if not points:
        return pd.Series(dtype=float, name="spot")
    res = pd.Timedelta(resolution)
    midnight = pd.Timestamp(day).tz_localize(OTE_ZONE).tz_convert("UTC")
    return _sorted(pd.Series({midnight + (x - 1) * res: y / 1000.0 for x, y in points}, name="spot"))
