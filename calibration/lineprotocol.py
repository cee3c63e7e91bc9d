"""Writing a history table back to InfluxDB as line protocol, through the same mapping.

The inverse of extraction: each mapped series whose column the table has is written as its
measurement, tags and field (``raw = (value − offset) / scale``; ``relay__<room>`` from heating power
and the house's ratings where only power is given). Derived columns are not inverted: write their
helpers (``_pv1``, …) if the layout needs them. The emulator and the live loop log this way.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd

from pems.calibration.influx import InfluxSource, SourceError, _Client, _credentials
from pems.calibration.mapping import Mapping
from pems.twin.house import House


def _esc_key(x: str) -> str:
    return x.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _esc_meas(x: str) -> str:
    return x.replace("\\", "\\\\").replace(",", "\\,").replace(" ", "\\ ")


def to_lines(table: pd.DataFrame, mapping: Mapping, house: House | None = None,
             rooms: list[str] | None = None) -> dict[str, list[str]]:
    """Line-protocol lines per bucket (seconds precision), one line per measurement, tag set and step."""
    df = table.copy()
    if house is not None:
        for r in house.rooms:
            if f"relay__{r.id}" not in df and f"P_heat__{r.id}" in df and r.heater_w > 0:
                df[f"relay__{r.id}"] = df[f"P_heat__{r.id}"] / r.heater_w
    groups: dict[tuple, list] = defaultdict(list)
    for s in mapping.expanded(rooms):
        if s.column in df:
            groups[(s.bucket, s.measurement, tuple(sorted(s.tags.items())))].append(s)
    ts = pd.DatetimeIndex(df.index).tz_convert("UTC").as_unit("s").asi8.astype(str)  # whatever the index unit
    out: dict[str, list[str]] = defaultdict(list)
    for (bucket, meas, tags), group in groups.items():
        head = _esc_meas(meas) + "".join(f",{_esc_key(k)}={_esc_key(v)}" for k, v in tags)
        parts = []
        for s in group:
            v = df[s.column].to_numpy(dtype=float)
            if s.counter:  # power back to a cumulative counter [kWh]
                step_h = (df.index[1] - df.index[0]) / pd.Timedelta(hours=1) if len(df) > 1 else 0.25
                v = np.nancumsum(np.nan_to_num(v) * step_h / 1000.0)
            raw = (v - s.offset) / s.scale
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
