"""History from InfluxDB: InfluxQL over the v1 HTTP API and Flux over the v2 API, by time chunks,
with bounded concurrency, retries, a progress callback and a Parquet cache.

Sources are URLs: ``influx://HOST:PORT[/DATABASE]`` for the v1 API (InfluxDB 1.x, and 2.x/3.x through
their v1 compatibility endpoints) and ``influx2://HOST:PORT?org=ORG`` for Flux (buckets named in the
mapping, never in the URL); ``influxs://`` / ``influx2s://`` use HTTPS. Credentials come from the environment
(``PEMS_INFLUX_USERNAME``/``PEMS_INFLUX_PASSWORD`` or ``PEMS_INFLUX_TOKEN``) and never appear in a log
line or a cache key.

Every query names both time bounds (an open ``GROUP BY time()`` fills up to now) and aggregates per
model step on the server. Extracted chunks land in the cache only when complete, written atomically,
so a second run is instant and an interrupted one resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pandas as pd
import requests

from pems.calibration.mapping import Mapping, Series
from pems.errors import InputError, ServiceError


#: The URL forms of an InfluxDB source, as every message and help text writes them.
URL_FORMS = "influx://HOST:PORT[/DATABASE] or influx2://HOST:PORT?org=ORG (influxs://, influx2s:// for HTTPS)"


class SourceError(ServiceError, RuntimeError):
    """The server is down, too slow, or answered with an error."""


@dataclass(frozen=True)
class InfluxSource:
    """Where the history lives (never holds credentials)."""

    api: str  # "v1" or "v2"
    base_url: str  # http(s)://host:port
    database: str | None = None  # v1: one database for every series (else the mapping's buckets)
    org: str | None = None  # v2

    @classmethod
    def parse(cls, url: str, source: str | Path = "command line", key: str = "--history") -> InfluxSource:
        """Read ``influx[s]://HOST[:PORT][/DATABASE]`` or ``influx2[s]://HOST[:PORT]?org=ORG``.

        Every problem is an :class:`InputError` of ``source`` (the file or ``command line``) and
        ``key`` (the key or flag that gave the URL), showing the URL without its credentials.
        """
        u = urlparse(url.strip())
        shown = cls._shown(url)
        schemes = {"influx": ("v1", "http"), "influxs": ("v1", "https"),
                   "influx2": ("v2", "http"), "influx2s": ("v2", "https")}
        if u.scheme not in schemes or not u.hostname:
            raise InputError(source, key, f"cannot read {shown!r} as an InfluxDB URL; expected {URL_FORMS}")
        if u.username or u.password:
            raise InputError(source, key, f"{shown}: put credentials in PEMS_INFLUX_USERNAME/PASSWORD or "
                                          "PEMS_INFLUX_TOKEN, not in the URL")
        try:
            port = u.port
        except ValueError:  # not a number, or outside 0…65535
            port_text = u.netloc.rpartition("@")[2].rpartition(":")[2]
            raise InputError(source, key, f"{shown}: port {port_text!r} is not a number from 1 to 65535") from None
        if port == 0:
            raise InputError(source, key, f"{shown}: port 0 is not a number from 1 to 65535")
        api, scheme = schemes[u.scheme]
        port = port or 8086
        path = u.path.strip("/") or None
        org = parse_qs(u.query).get("org", [None])[0]
        if api == "v2":
            if not org:
                raise InputError(source, key, f"{shown}: a Flux (influx2://) source needs ?org=ORG; expected "
                                              "influx2://HOST:PORT?org=ORG")
            if path:  # the mapping names the buckets: a bucket in the URL would be ignored
                raise InputError(source, key, f"{shown}: influx2:// takes no bucket in the URL (the mapping names "
                                              "the buckets); expected influx2://HOST:PORT?org=ORG")
        host = f"[{u.hostname}]" if ":" in u.hostname else u.hostname
        return cls(api, f"{scheme}://{host}:{port}", path, org)

    @staticmethod
    def _shown(url: str) -> str:
        """The URL as it may be printed: whatever precedes its last ``@`` (a user name and password,
        however the URL is malformed: ``user:pass@host`` without a scheme parses as scheme ``user``)
        is replaced by ``***``."""
        text = url.strip()
        if "@" not in text:
            return text
        head, _, tail = text.rpartition("@")
        scheme, sep, _ = head.partition("://")
        return f"{scheme}://***@{tail}" if sep and "/" not in scheme else f"***@{tail}"

    @property
    def safe_url(self) -> str:
        return f"{self.base_url}{'/' + self.database if self.database else ''}" + (f"?org={self.org}" if self.org else "")


def _credentials() -> dict:
    e = os.environ
    return {"username": e.get("PEMS_INFLUX_USERNAME") or e.get("INFLUX_USERNAME"),
            "password": e.get("PEMS_INFLUX_PASSWORD") or e.get("INFLUX_PASSWORD"),
            "token": e.get("PEMS_INFLUX_TOKEN") or e.get("INFLUX_TOKEN")}


# ---------------------------------------------------------------------------- query building
def _groups(series: Iterable[Series]) -> dict[tuple, list[Series]]:
    """Series that one query can fetch together: same bucket, measurement, tags and aggregate."""
    g: dict[tuple, list[Series]] = defaultdict(list)
    for s in series:
        agg = "last" if s.counter else s.aggregate
        g[(s.bucket, s.measurement, tuple(sorted(s.tags.items())), agg)].append(s)
    return g


def _quote_ident(x: str) -> str:
    return '"' + x.replace('"', '\\"') + '"'


def _quote_str(x: str) -> str:
    return "'" + x.replace("\\", "\\\\").replace("'", "\\'") + "'"


def influxql(measurement: str, fields: list[str], tags: tuple, aggregate: str, start: pd.Timestamp,
             stop: pd.Timestamp, step: pd.Timedelta) -> str:
    """One InfluxQL query: every field aggregated per step, both time bounds given."""
    sel = ", ".join(f"{aggregate}({_quote_ident(f)}) AS {_quote_ident(f)}" for f in fields)
    where = [f"time >= {_quote_str(start.strftime('%Y-%m-%dT%H:%M:%SZ'))}",
             f"time < {_quote_str(stop.strftime('%Y-%m-%dT%H:%M:%SZ'))}"]
    where += [f"{_quote_ident(k)} = {_quote_str(v)}" for k, v in tags]
    minutes = int(step / pd.Timedelta(minutes=1))
    return (f"SELECT {sel} FROM {_quote_ident(measurement)} WHERE {' AND '.join(where)} "
            f"GROUP BY time({minutes}m) fill(none)")


def flux(bucket: str, measurement: str, fields: list[str], tags: tuple, aggregate: str, start: pd.Timestamp,
         stop: pd.Timestamp, step: pd.Timedelta) -> str:
    """One Flux query: every field aggregated per step (windows labelled by their start)."""
    def s(x: str) -> str:
        return '"' + x.replace("\\", "\\\\").replace('"', '\\"') + '"'
    ff = " or ".join(f"r._field == {s(f)}" for f in fields)
    tf = "".join(f"\n  |> filter(fn: (r) => r[{s(k)}] == {s(v)})" for k, v in tags)
    minutes = int(step / pd.Timedelta(minutes=1))
    return (f"from(bucket: {s(bucket)})\n"
            f"  |> range(start: {start.strftime('%Y-%m-%dT%H:%M:%SZ')}, stop: {stop.strftime('%Y-%m-%dT%H:%M:%SZ')})\n"
            f"  |> filter(fn: (r) => r._measurement == {s(measurement)})\n"
            f"  |> filter(fn: (r) => {ff}){tf}\n"
            f"  |> aggregateWindow(every: {minutes}m, fn: {aggregate}, createEmpty: false, timeSrc: \"_start\")\n"
            f"  |> keep(columns: [\"_time\", \"_field\", \"_value\"])")


def parse_flux_csv(text: str) -> pd.DataFrame:
    """Annotated CSV of a Flux response → a frame with one column per field, indexed by time."""
    blocks, cur = [], []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if not line.strip():
            if cur:
                blocks.append(cur)
            cur = []
            continue
        cur.append(line)
    if cur:
        blocks.append(cur)
    parts = []
    for b in blocks:
        df = pd.read_csv(io.StringIO("\n".join(b)))
        if {"_time", "_field", "_value"} <= set(df.columns):
            parts.append(df[["_time", "_field", "_value"]])
    if not parts:
        return pd.DataFrame()
    long = pd.concat(parts)
    long["_time"] = pd.to_datetime(long["_time"], utc=True, format="ISO8601")
    long["_value"] = pd.to_numeric(long["_value"], errors="coerce")
    return long.pivot_table(index="_time", columns="_field", values="_value", aggfunc="last")


# ---------------------------------------------------------------------------- transport
class _Client:
    """HTTP with retries and backoff; errors become :class:`SourceError` with the server's words."""

    def __init__(self, source: InfluxSource, timeout_s: float = 60.0, retries: int = 3) -> None:
        self.source, self.timeout, self.retries = source, timeout_s, retries
        c = _credentials()
        self.session = requests.Session()
        if source.api == "v1" and c["username"]:
            self.session.auth = (c["username"], c["password"] or "")
        if c["token"]:
            self.session.headers["Authorization"] = f"Token {c['token']}"

    def _request(self, method: str, path: str, **kw) -> requests.Response:
        url = self.source.base_url + path
        delay = 0.5
        for attempt in range(self.retries + 1):
            try:
                r = self.session.request(method, url, timeout=self.timeout, **kw)
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt == self.retries:
                    raise SourceError(f"{self.source.safe_url}: not reachable ({exc.__class__.__name__})") from None
            else:
                if r.status_code < 500:
                    if r.status_code >= 400:
                        raise SourceError(f"{self.source.safe_url}: the server answered {r.status_code}: "
                                          f"{r.text.strip()[:300]}")
                    return r
                if attempt == self.retries:
                    raise SourceError(f"{self.source.safe_url}: the server answered {r.status_code}: "
                                      f"{r.text.strip()[:300]}")
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def ping(self) -> None:
        self._request("GET", "/ping" if self.source.api == "v1" else "/health")

    def query_v1(self, database: str, q: str) -> pd.DataFrame:
        r = self._request("POST", "/query", data={"db": database, "q": q, "epoch": "s"})
        body = r.json()
        res = (body.get("results") or [{}])[0]
        if "error" in res:
            raise SourceError(f"{self.source.safe_url}: {res['error']}")
        frames = []
        for s in res.get("series", []):
            df = pd.DataFrame(s["values"], columns=s["columns"])
            df.index = pd.to_datetime(df.pop("time"), unit="s", utc=True)
            frames.append(df)
        return pd.concat(frames, axis=1) if frames else pd.DataFrame()

    def query_v2(self, q: str) -> pd.DataFrame:
        r = self._request("POST", "/api/v2/query", params={"org": self.source.org},
                          json={"query": q, "type": "flux", "dialect": {"annotations": ["datatype", "group", "default"]}},
                          headers={"Accept": "application/csv"})
        return parse_flux_csv(r.text)

    def write_v1(self, database: str, lines: list[str]) -> None:
        self._request("POST", "/write", params={"db": database, "precision": "s"}, data="\n".join(lines).encode())

    def create_database(self, database: str) -> None:
        self._request("POST", "/query", data={"q": f"CREATE DATABASE {_quote_ident(database)}"})


# ---------------------------------------------------------------------------- extraction
ProgressFn = Callable[[int, int], None]


def cache_dir() -> Path:
    """``$PEMS_CACHE/history``, else ``history`` in systemd's or XDG's cache folder (:mod:`pems.paths`)."""
    from pems.paths import cache_root

    return (Path(os.environ["PEMS_CACHE"]) if os.environ.get("PEMS_CACHE") else cache_root()) / "history"


def _chunks(start: pd.Timestamp, stop: pd.Timestamp, chunk: pd.Timedelta) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    out, t = [], start
    while t < stop:
        out.append((t, min(t + chunk, stop)))
        t += chunk
    return out


def extract(url: str, mapping: Mapping, start: pd.Timestamp, stop: pd.Timestamp,
            step: pd.Timedelta = pd.Timedelta(minutes=15), rooms: list[str] | None = None,
            chunk: pd.Timedelta = pd.Timedelta(days=7), workers: int = 4, use_cache: bool = True,
            progress: ProgressFn | None = None) -> pd.DataFrame:
    """The mapped columns of ``[start, stop)`` on the ``step`` grid (means over each step, UTC).

    Raises
    ------
    SourceError
        The server cannot be reached or answers with an error (nothing incomplete is cached).
    """
    source = InfluxSource.parse(url)
    start, stop = start.floor(step), stop.ceil(step)
    if stop <= start:
        raise InputError("command line", "--end", "must be after --start")
    series = mapping.expanded(rooms)
    client = _Client(source)
    key = hashlib.sha256(f"{source.safe_url}|{mapping.digest()}|{step}|{sorted(s.column for s in series)}"
                         .encode()).hexdigest()[:20]
    folder = cache_dir() / key
    now = pd.Timestamp.now(tz="UTC")
    parts = _chunks(start, stop, chunk)
    todo = []
    frames: dict[int, pd.DataFrame] = {}
    for i, (a, b) in enumerate(parts):
        f = folder / f"{a:%Y%m%dT%H%M}-{b:%Y%m%dT%H%M}.parquet"
        if use_cache and f.is_file():
            frames[i] = pd.read_parquet(f)
        else:
            todo.append((i, a, b, f))
    done = len(parts) - len(todo)
    if progress:
        progress(done, len(parts))
    if todo:
        client.ping()  # one clear message if the server is down, before any work

        def fetch(job):
            i, a, b, f = job
            df = _fetch_chunk(client, source, series, a, b, step)
            if use_cache and b <= now:  # a chunk still being written to is never cached
                folder.mkdir(parents=True, exist_ok=True)
                tmp = f.with_suffix(".tmp")
                df.to_parquet(tmp)
                os.replace(tmp, f)
            return i, df

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for i, df in pool.map(fetch, todo):
                frames[i] = df
                done += 1
                if progress:
                    progress(done, len(parts))
    out = pd.concat([frames[i] for i in range(len(parts))]) if frames else pd.DataFrame()
    out = out[~out.index.duplicated(keep="last")].sort_index()
    return _finish(out, series, mapping, step)


def _fetch_chunk(client: _Client, source: InfluxSource, series: list[Series], a: pd.Timestamp,
                 b: pd.Timestamp, step: pd.Timedelta) -> pd.DataFrame:
    grid = pd.date_range(a, b, freq=step, inclusive="left", name="time")
    out = pd.DataFrame(index=grid)
    for (bucket, meas, tags, agg), group in _groups(series).items():
        fields = sorted({s.field for s in group})
        if source.api == "v1":
            df = client.query_v1(source.database or bucket, influxql(meas, fields, tags, agg, a, b, step))
        else:
            df = client.query_v2(flux(bucket, meas, fields, tags, agg, a, b, step))
        df = df.reindex(grid) if len(df) else pd.DataFrame(index=grid)
        for s in group:
            v = df[s.field].astype(float) if s.field in df else pd.Series(np.nan, index=grid)
            out[s.column] = v * s.scale + s.offset
    return out


def _finish(raw: pd.DataFrame, series: list[Series], mapping: Mapping, step: pd.Timedelta) -> pd.DataFrame:
    """Counters to power, derived columns, helpers dropped."""
    df = raw.copy()
    for s in series:
        if s.counter and s.column in df:
            kwh = df[s.column]
            d = kwh.diff()
            d = d.where(d >= 0)  # a counter reset is a gap, not negative energy
            df[s.column] = d * 1000.0 / (step / pd.Timedelta(hours=1))
    for name, expr in mapping.derived.items():
        try:
            df[name] = df.eval(expr, engine="python")
        except Exception as exc:  # noqa: BLE001 - a bad expression is a bad mapping file
            raise InputError(mapping.name, f"derived.{name}", f"cannot evaluate {expr!r} ({exc})") from None
    df = df[[c for c in df.columns if not c.startswith("_")]]
    df.index = pd.DatetimeIndex(df.index, name="time").as_unit("ns")  # the same from server and cache
    df.index.freq = None
    return df
