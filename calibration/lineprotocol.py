"""Writing a history table back to InfluxDB as line protocol, through the same mapping.

The inverse of extraction: each mapped series whose column the table has is written as its
measurement, tags and field (``raw = (value − offset) / scale``; ``relay__<room>`` from heating power
and the house's ratings where only power is given). Derived columns are not inverted: write their
helpers (``_pv1``, …) if the layout needs them. The emulator and the live loop log this way.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pandas as pd

from pems.calibration.influx import InfluxSource, SourceError, _Client, _credentials
from pems.calibration.mapping import Mapping, Series
from pems.twin.house import House


def _esc_key(x: str) -> str:
    return x.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _esc_meas(x: str) -> str:
    return x.replace("\\", "\\\\").replace(",", "\\,").replace(" ", "\\ ")


def one_line(x: str) -> str:
    """``x`` without line breaks: line protocol is line-based, a break inside a key or string would split
    the record."""
    return x.replace("\r", " ").replace("\n", " ")


def tag_text(x: object) -> str:
    """A tag key or value in line protocol: escaped, on one line."""
    return _esc_key(one_line(str(x)))


def line_head(measurement: str, tags: Iterable[tuple[str, str]]) -> str:
    """``measurement,tag=value,...`` of a line (tags in the order given)."""
    return _esc_meas(measurement) + "".join(f",{tag_text(k)}={tag_text(v)}" for k, v in tags)


def series_key(s: Series) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    """Series stored in one line share this key: bucket, measurement, sorted tags."""
    return s.bucket, s.measurement, tuple(sorted(s.tags.items()))


def stored(value: Any, s: Series) -> Any:
    """What the home stores for the canonical ``value`` (a number or an array) through series ``s``:
    the inverse of extraction's ``value = raw × scale + offset``."""
    return (value - s.offset) / s.scale


def relays_from_heat(values: Any, house: House, keep: Callable[[str], bool] = lambda column: True) -> list[str]:
    """Fill ``relay__<room>`` = ``P_heat__<room>`` / rating where only the heating power is given (a home
    stores its relays, not their power): ``values`` is a table or a dict, changed in place; ``keep``
    says which relay columns are wanted. Returns the rooms filled."""
    filled = []
    for r in house.rooms:
        rc, pc = f"relay__{r.id}", f"P_heat__{r.id}"
        if rc not in values and pc in values and values[pc] is not None and r.heater_w > 0 and keep(rc):
            values[rc] = values[pc] / r.heater_w
            filled.append(r.id)
    return filled


def to_lines(table: pd.DataFrame, mapping: Mapping, house: House | None = None,
             rooms: list[str] | None = None) -> dict[str, list[str]]:
    """Line-protocol lines per bucket (seconds precision), one line per measurement, tag set and step."""
    df = table.copy()
    if house is not None:
        relays_from_heat(df, house)
    groups: dict[tuple, list] = defaultdict(list)
    for s in mapping.expanded(rooms):
        if s.column in df:
            groups[series_key(s)].append(s)
    ts = pd.DatetimeIndex(df.index).tz_convert("UTC").as_unit("s").asi8.astype(str)  # whatever the index unit
    out: dict[str, list[str]] = defaultdict(list)
    for (bucket, meas, tags), group in groups.items():
        head = line_head(meas, tags)
        parts = []
        for s in group:
            v = df[s.column].to_numpy(dtype=float)
            if s.counter:  # power back to a cumulative counter [kWh]
                step_h = (df.index[1] - df.index[0]) / pd.Timedelta(hours=1) if len(df) > 1 else 0.25
                v = np.nancumsum(np.nan_to_num(v) * step_h / 1000.0)
            raw = stored(v, s)
            txt = np.char.add(f"{_esc_key(s.field)}=", np.char.mod("%.10g", raw))
            parts.append(np.where(np.isfinite(raw), txt, ""))
        for i in range(len(df)):
            fields = ",".join(p[i] for p in parts if p[i])
            if fields:
                out[bucket].append(f"{head} {fields} {ts[i]}")
    return dict(out)


def write(url: str, mapping: Mapping, table: pd.DataFrame, house: House | None = None,
          batch: int = 5000) -> int:
    """Write ``table`` to the source at ``url``; returns the number of lines written.

    v1 (``influx://``): the ``/write`` endpoint, one database per mapping bucket (or the URL's).
    v2 (``influx2://``): ``influxdb-client``'s write API (InfluxDB 2.x, VictoriaMetrics, ...).
    """
    source = InfluxSource.parse(url)
    lines = to_lines(table, mapping, house)
    n = 0
    if source.api == "v1":
        client = _Client(source)
        for bucket, ls in lines.items():
            db = source.database or bucket
            client.create_database(db)
            for i in range(0, len(ls), batch):
                client.write_v1(db, ls[i:i + batch])
            n += len(ls)
        return n
    from influxdb_client import InfluxDBClient
    from influxdb_client.client.write_api import SYNCHRONOUS, WritePrecision

    token = _credentials()["token"] or "pems"
    try:
        with InfluxDBClient(url=source.base_url, token=token, org=source.org, timeout=60_000) as c:
            api = c.write_api(write_options=SYNCHRONOUS)
            for bucket, ls in lines.items():
                for i in range(0, len(ls), batch):
                    api.write(bucket=bucket, org=source.org, record=ls[i:i + batch], write_precision=WritePrecision.S)
                n += len(ls)
    except Exception as exc:  # noqa: BLE001 - the client raises many kinds; all mean "not written"
        raise SourceError(f"{source.safe_url}: write failed ({exc.__class__.__name__}: {str(exc)[:200]})") from None
    return n
