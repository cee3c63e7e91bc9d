"""The live loop's InfluxDB log: everything measured, estimated, planned and commanded, and events,
spooled on disk and sent in the background, so that an InfluxDB outage loses nothing.

Usage::

    log = InfluxLog("influx://127.0.0.1:8086/pems_live", "loxone-growatt", Path("/var/lib/pems/spool"))
    log.write(t, {"T_room__obyvak": 21.3, "soc": 0.55}, "measured")
    log.write(t, {"T_mass__obyvak": 21.9}, "estimated")
    log.write(t, {"P_heat_cmd__obyvak": 2400.0, "P_bat_cmd": -1500.0}, "commanded")
    log.write_plan(t, plan)                           # one row per future step
    log.write(t, {"message": "MQTT broker lost", "level": "warning"}, "event")
    log.status()                                      # connected, pending_lines, last_error, ...
    log.close()

Also :meth:`InfluxLog.lines` (the lines a write would spool, for dry runs and tests),
:func:`read_spool` (a spool's records, for inspection) and :func:`default_spool_dir`.

URLs are those of :mod:`pems.calibration.influx`: ``influx://HOST:PORT[/DATABASE]`` (the v1 ``/write``
API of InfluxDB 1.x, or 2.x/3.x through their v1 compatibility endpoint) and
``influx2://HOST:PORT?org=ORG`` (the v2 ``/api/v2/write`` API: InfluxDB 2.x, VictoriaMetrics, ...);
``influxs://``/``influx2s://`` for HTTPS. Credentials come from the environment
(``PEMS_INFLUX_USERNAME``/``PEMS_INFLUX_PASSWORD`` or ``PEMS_INFLUX_TOKEN``) and never appear in a
log line or in :attr:`InfluxLogStatus.last_error`.

Schema
------
*Measured canonical columns* (``kind="measured"``) that the mapping knows are written exactly as the
home's own series are held (the mapping's bucket, measurement, tags and field, raw value
``(value − offset) / scale``), one line per measurement and tag set, so that ``pems history`` with
the same mapping reads the live log back like the home's history. With a ``house``, a measured
``P_heat__<room>`` becomes the mapping's ``relay__<room>`` (power ÷ the room's rating) when the
caller did not give the relay itself. Counter series (cumulative kWh meters) are *not* fabricated
from power: those columns, derived columns of the mapping (``P_pv``, ``P_grid``, ...: write their
helpers ``_pv1``, ... to have them read back) and every other measured column go to the extra
measurement below with ``kind=measured``.

Everything else goes to one extra measurement (``extra_measurement``, default ``pems``) in the
bucket ``extra_bucket`` (default ``pems``):

=============  ====================================================================================
tag ``kind``   ``measured`` | ``estimated`` | ``planned`` | ``commanded`` | ``event``
tag ``room``   the ``<room>`` of a column ``<quantity>__<room>`` (absent for whole-house columns)
field          the ``<quantity>``: ``T_mass__obyvak`` → field ``T_mass``, tag ``room=obyvak``
other tags     given by the caller (``tags=``), e.g. ``horizon`` of a plan (see :meth:`InfluxLog.write_plan`)
time           the caller's time, nanoseconds since the epoch, UTC
=============  ====================================================================================

so an estimate is ``pems,kind=estimated,room=obyvak T_mass=21.9 <ns>``, a command
``pems,kind=commanded P_bat_cmd=-1500 <ns>`` and a plan value
``pems,horizon=4,kind=planned,room=obyvak P_heat=2400 <ns>`` (4 steps ahead of the plan's issue).
Numbers (``int``, ``bool``, numpy scalars) are written as floats, so a field never changes type
between writes; strings (events) are string fields, with line breaks replaced by spaces. ``None``,
NaN and ±inf are not written (a gap stays a gap). With a v1 URL naming a database, every line goes
to that database (the mapping's buckets and ``extra_bucket`` are then only names).

InfluxDB keeps one point per measurement, tag set and time, so writing the same point again
overwrites it. Two events at the same time would overwrite each other: an event whose time was
already used by a recent event is moved 1 ns later.

Spool and guarantees
--------------------
``write`` formats the lines and appends them to the active *segment* of the spool directory (one
``os.write`` per call, in the kernel before ``write`` returns; no network, no fsync in the caller's
thread). A background thread sends batches (at most ``max_batch_lines`` per request) every
``batch_s`` and deletes a segment once all of it is acknowledged. Files in ``spool_dir``:

``NNNNNNNNNNNN.seg``
    append-only segments in write order, rotated at ``segment_bytes``; one record per line,
    ``<crc32 hex>\\t<bucket>\\t<line protocol>\\n``, the CRC-32 over ``<bucket>\\t<line protocol>``.
``cursor.json``
    ``{"segment": N, "offset": BYTES}``: how far the oldest segment is acknowledged (saved atomically
    after acknowledged batches, at most every ``cursor_s`` and whenever a segment is done).
``rejected.lp``
    records InfluxDB refused (HTTP 400/413/422: a bad line, a field type conflict; a refused
    request is bisected until the refused lines are isolated, so one bad line never blocks the
    spool) or that failed their CRC, each after a ``# <wall time> <reason>`` comment: kept for
    inspection (up to 64 MB), not retried.
``.lock``
    an exclusive ``flock``: one writer per spool directory.

* **Order**: lines of one bucket reach InfluxDB in write order (they are sent oldest first).
* **Nothing lost while InfluxDB is down**: on a connection error, timeout, HTTP 5xx/429/401/403/404
  the batch stays on disk and is retried with exponential backoff (``retry_min_s`` …
  ``retry_max_s``). A v1 database that does not exist is created.
* **Restart**: a new ``InfluxLog`` on the same directory resumes from ``cursor.json`` (saved on
  :meth:`InfluxLog.close`, so a clean restart resends nothing). Delivery is *at least once*: after a
  crash, the batches acknowledged in the last ``cursor_s`` (5 s) are sent again, with identical
  measurement, tags and timestamps, so InfluxDB overwrites the points and a query sees each point
  once (no duplicates by count). Bisecting a refused request (below) also resends lines that a
  partial write kept, with the same effect.
* **Crash safety**: every ``write`` reaches the kernel before it returns, so a crash of the process
  loses nothing; the active segment is fsynced on rotation, on :meth:`InfluxLog.flush`, on
  :meth:`InfluxLog.close` and every ``sync_s`` by the sender, which bounds what a power cut can lose.
  On start, a partially written last line of a segment (a crash mid-write, a power cut) is cut off
  with a warning and copied to ``rejected.lp``; a line with a wrong CRC is skipped the same way.
* **Bounded**: the segments hold at most ``max_bytes`` (default 1 GB: weeks of an 18-room home's
  log). When full, ``when_full="drop_oldest"`` (default) deletes the *oldest* segments and writes an
  ``event`` into the log saying how many lines of which period were dropped; ``"drop_newest"``
  refuses new lines instead. Dropping the oldest is the default because a live home needs the
  newest measurements and commands (what the loop does *now*) far more than the start of a
  weeks-long outage, and the gap is then one documented period instead of an open end.
  Both count in :attr:`InfluxLogStatus.dropped_lines` and log a warning.
"""

from __future__ import annotations

import base64
import logging
import math
import os
import threading
import time
from collections import defaultdict, deque
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import requests

from pems.calibration.influx import InfluxSource, _credentials
from pems.calibration.lineprotocol import line_head, one_line, relays_from_heat, series_key, stored, tag_text
from pems.calibration.mapping import Mapping, Series, load_mapping
from pems.live.spool import Spool, line_time, read_spool, record  # noqa: F401 (read_spool: re-exported)
from pems.twin.house import House

log = logging.getLogger(__name__)

KINDS = ("measured", "estimated", "planned", "commanded", "event")
Kind = Literal["measured", "estimated", "planned", "commanded", "event"]
#: Kinds written once per control step: a time that does not advance is a clock that went back.
ONE_POINT_PER_STEP = ("measured", "estimated", "commanded")
Value = float | int | bool | str | None
_RESERVED_TAGS = ("kind", "room")


@dataclass(frozen=True)
class InfluxLogStatus:
    """A snapshot of the log's state (for the loop's health check and events).

    Attributes
    ----------
    connected
        The last request to InfluxDB (a write or a ping) succeeded.
    pending_lines
        Lines on disk not yet acknowledged by InfluxDB.
    pending_bytes
        Their size in the spool [bytes].
    oldest_pending
        Time (UTC) of the oldest pending line, the point's own time; ``None`` when nothing is pending.
    last_error
        The last error talking to InfluxDB or writing the spool (never contains credentials);
        kept after recovery, see ``connected``.
    sent_lines
        Lines acknowledged by InfluxDB since this writer started.
    rejected_lines
        Lines InfluxDB refused or that were corrupt on disk (kept in ``rejected.lp``).
    dropped_lines
        Lines lost because the spool was full.
    spool_bytes
        Disk used by the segments, acknowledged part of the oldest included [bytes].
    down_since
        Wall-clock time (UTC) of the first failure of the current outage; ``None`` when connected.
    """

    connected: bool
    pending_lines: int
    pending_bytes: int
    oldest_pending: pd.Timestamp | None
    last_error: str | None
    sent_lines: int
    rejected_lines: int = 0
    dropped_lines: int = 0
    spool_bytes: int = 0
    down_since: pd.Timestamp | None = None


# ---------------------------------------------------------------------------------------------
# line protocol
# ---------------------------------------------------------------------------------------------
def _number(v) -> str | None:
    """A float in line protocol (shortest round-trip repr), or ``None`` when not finite."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return repr(f) if math.isfinite(f) else None


def _field_value(v: Value) -> str | None:
    """The line-protocol text of a field value: floats for numbers, quoted strings; ``None`` to skip."""
    if v is None:
        return None
    if isinstance(v, str):
        return '"' + one_line(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
    return _number(v)


def _split_column(col: str) -> tuple[str, str | None]:
    """``T_mass__obyvak`` → (``T_mass``, ``obyvak``); ``P_bat_cmd`` → (``P_bat_cmd``, None)."""
    q, sep, room = col.partition("__")
    return (q, room) if sep and q and room else (col, None)


def _to_ns(t) -> int:
    """Nanoseconds since the epoch of a tz-aware time (or of epoch seconds as a number)."""
    if isinstance(t, (int, float, np.integer, np.floating)) and not isinstance(t, bool):
        return int(round(float(t) * 1e9))
    ts = pd.Timestamp(t)
    if ts.tzinfo is None:
        raise ValueError(f"time {t!r} has no time zone (PEMS times are tz-aware UTC)")
    return int(ts.as_unit("ns").value)


# ---------------------------------------------------------------------------------------------
# the transport
# ---------------------------------------------------------------------------------------------
class _Failed(Exception):
    """Not written; try again later (server down, 5xx, timeout, auth)."""


class _Rejected(Exception):
    """The server refused the content (HTTP 400/413/422); sending it again will not help."""


class _Transport:
    """One write or ping over HTTP, no retries (the sender owns backoff); errors without secrets."""

    def __init__(self, source: InfluxSource, timeout_s: float) -> None:
        self.source, self.timeout = source, timeout_s
        c = _credentials()
        self.session = requests.Session()
        self.secrets = [s for s in (c["password"], c["token"]) if s]
        if source.api == "v1" and c["username"]:
            self.session.auth = (c["username"], c["password"] or "")
            self.secrets.append(base64.b64encode(f"{c['username']}:{c['password'] or ''}".encode()).decode())
        if c["token"]:
            self.session.headers["Authorization"] = f"Token {c['token']}"

    def scrub(self, text: str) -> str:
        for s in self.secrets:
            text = text.replace(s, "***")
        return text

    def _post(self, path: str, **kw) -> requests.Response:
        try:
            return self.session.post(self.source.base_url + path, timeout=self.timeout, **kw)
        except requests.Timeout:
            raise _Failed(f"{self.source.safe_url}: no answer within {self.timeout:g} s") from None
        except requests.RequestException as exc:
            raise _Failed(f"{self.source.safe_url}: not reachable ({exc.__class__.__name__})") from None

    def _answer(self, r: requests.Response) -> str:
        return self.scrub(f"{self.source.safe_url}: the server answered {r.status_code}: {r.text.strip()[:300]}")

    def write(self, bucket: str, lines: list[str]) -> None:
        body = ("\n".join(lines) + "\n").encode()
        hdr = {"Content-Type": "text/plain; charset=utf-8"}  # not session-wide: /query is a form
        if self.source.api == "v1":
            db = self.source.database or bucket
            r = self._post("/write", params={"db": db, "precision": "ns"}, data=body, headers=hdr)
            if r.status_code == 404 and "database not found" in r.text:
                # tried at most once per attempt; the sender's backoff paces it if we may not create
                c = self._post("/query", data={"q": 'CREATE DATABASE "' + db.replace('"', '\\"') + '"'})
                if c.status_code < 300 and '"error"' not in c.text:
                    log.info("InfluxDB log: created database %s", db)
                    r = self._post("/write", params={"db": db, "precision": "ns"}, data=body, headers=hdr)
                else:
                    raise _Failed(self.scrub(f"{self.source.safe_url}: database {db} does not exist and creating it "
                                             f"failed ({c.status_code}: {c.text.strip()[:200]})"))
        else:
            r = self._post("/api/v2/write", params={"org": self.source.org, "bucket": bucket, "precision": "ns"},
                           data=body, headers=hdr)
        if r.status_code < 300:
            return
        if r.status_code in (400, 413, 422):
            raise _Rejected(self._answer(r))
        raise _Failed(self._answer(r))

    def ping(self) -> None:
        path = "/ping" if self.source.api == "v1" else "/health"
        try:
            r = self.session.get(self.source.base_url + path, timeout=self.timeout)
        except requests.RequestException as exc:
            raise _Failed(f"{self.source.safe_url}: not reachable ({exc.__class__.__name__})") from None
        if r.status_code >= 300:
            raise _Failed(self._answer(r))


# ---------------------------------------------------------------------------------------------
# the log
# ---------------------------------------------------------------------------------------------
def default_spool_dir() -> Path:
    """``$PEMS_SPOOL``, else ``influx-spool`` in systemd's or XDG's state folder (:mod:`pems.paths`)."""
    from pems.paths import state_root

    return Path(os.environ.get("PEMS_SPOOL") or state_root() / "influx-spool")


@dataclass
class _Counters:
    sent: int = 0
    connected: bool = False
    last_error: str | None = None
    down_since: float | None = None  # wall clock [s since epoch]
    down_logged: float = 0.0  # monotonic time of the last "still down" warning
    last_contact: float = -math.inf  # monotonic
    first_drop_logged: bool = False
    recent_events: deque = field(default_factory=lambda: deque(maxlen=1024))
    recent_event_set: set = field(default_factory=set)


class InfluxLog:
    """Everything measured, estimated, planned and commanded, and events, to InfluxDB via a disk spool.

    Parameters
    ----------
    url
        ``influx://HOST:PORT[/DATABASE]`` (v1 API) or ``influx2://HOST:PORT?org=ORG`` (v2 API).
    mapping
        A mapping preset name (``"loxone-growatt"``), a mapping TOML path, a :class:`Mapping`, or
        ``None`` (then measured columns go to the extra measurement too).
    spool_dir
        Directory of the on-disk spool (created; one writer at a time); default
        :func:`default_spool_dir`.
    batch_s
        How long lines may wait to be sent together [s].
    timeout_s
        HTTP timeout of one request [s].
    extra_measurement, extra_bucket
        Where everything that is not a mapped measurement goes.
    house
        Optional: turns a measured ``P_heat__<room>`` into the mapping's ``relay__<room>``.
    max_bytes
        Spool size limit [bytes] (default 1 GB); see ``when_full``.
    when_full
        ``"drop_oldest"`` (default: keep the newest) or ``"drop_newest"`` (refuse new lines).
    segment_bytes
        Segment size at which the active segment is rotated [bytes] (capped at ``max_bytes / 4``).
    max_batch_lines, max_batch_bytes
        Size of one write request [lines], [bytes].
    retry_min_s, retry_max_s
        Backoff after a failure, doubling from the first to the second [s]. Keep ``retry_max_s``
        well under a control step, so the log catches up soon after InfluxDB returns.
    sync_s
        Period of fsync of the active segment while lines are written [s].
    ping_s
        With nothing to send, how often to check the server so ``status().connected`` stays true [s].
    start
        Start the sender thread (``False``: only spool; tests and offline tools).
    url_source, url_key
        Where ``url`` was given (a file or ``command line``, and its key or flag): a URL that cannot
        be read is an :class:`~pems.errors.InputError` naming them.
    """

    def __init__(self, url: str, mapping: str | Path | Mapping | None = "loxone-growatt",
                 spool_dir: str | Path | None = None, *, batch_s: float = 1.0, timeout_s: float = 10.0,
                 extra_measurement: str = "pems", extra_bucket: str = "pems", house: House | None = None,
                 max_bytes: int = 10**9, when_full: Literal["drop_oldest", "drop_newest"] = "drop_oldest",
                 segment_bytes: int = 8 * 2**20, max_batch_lines: int = 5000, max_batch_bytes: int = 2**20,
                 retry_min_s: float = 0.5, retry_max_s: float = 30.0, sync_s: float = 5.0,
                 ping_s: float = 30.0, start: bool = True, url_source: str | Path = "InfluxDB log",
                 url_key: str = "url") -> None:
        self.source = InfluxSource.parse(url, url_source, url_key)
        if when_full not in ("drop_oldest", "drop_newest"):
            raise ValueError(f"when_full must be 'drop_oldest' or 'drop_newest', got {when_full!r}")
        for name, v in (("batch_s", batch_s), ("timeout_s", timeout_s), ("retry_min_s", retry_min_s),
                        ("retry_max_s", retry_max_s), ("sync_s", sync_s), ("ping_s", ping_s)):
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {v}")
        if max_bytes < 4096 or max_batch_lines < 1:
            raise ValueError("max_bytes must be at least 4096 and max_batch_lines at least 1")
        self.mapping = load_mapping(mapping) if isinstance(mapping, (str, Path)) else mapping
        for b in [extra_bucket, *(s.bucket for s in (self.mapping.series if self.mapping else []))]:
            if not b or any(c in b for c in "\t\n\r"):
                raise ValueError(f"bucket name {b!r} is empty or contains a tab or line break")
        self.extra_measurement, self.extra_bucket, self.house = extra_measurement, extra_bucket, house
        self.batch_s, self.timeout_s = batch_s, timeout_s
        self.max_batch_lines, self.max_batch_bytes = max_batch_lines, max_batch_bytes
        self.retry_min_s, self.retry_max_s, self.sync_s, self.ping_s = retry_min_s, retry_max_s, sync_s, ping_s
        self.spool_dir = Path(spool_dir) if spool_dir is not None else default_spool_dir()
        self._spool = Spool(self.spool_dir, max_bytes, max(4096, min(segment_bytes, max_bytes // 4)), when_full)
        self._transport = _Transport(self.source, timeout_s)
        self._series: dict[str, Series | None] = {}
        self._last_ns: dict[tuple[str, tuple], int] = {}  # the newest time written per kind and tags [ns]
        self._c = _Counters()
        self._cond = threading.Condition()
        self._wake_at = 0.0  # monotonic time of the sender's next round
        self._kick = False  # flush(): one round now, even during a backoff
        self._closing = False
        self._close_deadline = 0.0
        self._closed = False
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(target=self._run, name="pems-influx-log", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ formatting
    def _series_for(self, column: str) -> Series | None:
        """The mapping's series of a measured column (``None``: not mapped, or a counter)."""
        if column in self._series:
            return self._series[column]
        found = None
        if self.mapping is not None:
            if not self._series:  # first use: every room the mapping names
                for s in self.mapping.expanded():
                    self._series.setdefault(s.column, None if s.counter else s)
                if column in self._series:
                    return self._series[column]
            q, room = _split_column(column)
            if room is not None:  # a room the mapping does not list: its templates, room name as is
                for s in self.mapping.expanded([room]):
                    if s.column == column and not s.counter:
                        found = s
        self._series[column] = found
        return found

    def lines(self, time, values: MappingABC[str, Value], kind: Kind,
              tags: MappingABC[str, str] | None = None) -> list[tuple[str, str]]:
        """The (bucket, line-protocol line) pairs :meth:`write` would spool (nothing is written).

        Parameters
        ----------
        time
            Tz-aware time of the values (``pd.Timestamp``/``datetime``), or epoch seconds.
        values
            Column → value; numbers in the canonical units (°C, W, 0–1, ...), strings for events.
        kind
            One of :data:`KINDS`.
        tags
            Extra tags of the extra measurement (not of mapped measurements, which keep the home's tags).
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        tags = dict(tags or {})
        if bad := [k for k in tags if k in _RESERVED_TAGS]:
            raise ValueError(f"tags {bad} are set by the log itself")
        t_ns = _to_ns(time)
        out: list[tuple[str, str]] = []
        rest: dict[str, Value] = {}
        if kind == "measured" and self.mapping is not None:
            values = dict(values)
            if self.house is not None:  # the home stores relays: the power goes as its relay state
                for room in relays_from_heat(values, self.house, keep=lambda c: self._series_for(c) is not None):
                    values.pop(f"P_heat__{room}")
            groups: dict[tuple, list[str]] = defaultdict(list)
            for col, v in values.items():
                s = self._series_for(col)
                num = None if s is None or isinstance(v, str) else _number(v)
                if s is None or (num is None and isinstance(v, str)):
                    rest[col] = v
                    continue
                raw = None
                if num is not None:
                    x = stored(float(num), s)
                    # an exact value stays exact; a scaled one loses the inversion's float noise
                    # (0.55 / 0.01 = 55.00000000000001 → 55), 12 digits being far below any sensor's
                    raw = _number(x) if (s.scale == 1.0 and s.offset == 0.0) else (
                        f"{x:.12g}" if math.isfinite(x) else None)
                if raw is not None:
                    groups[series_key(s)].append(f"{tag_text(s.field)}={raw}")
            for (bucket, meas, mtags), fields in groups.items():
                out.append((bucket, f"{line_head(meas, mtags)} {','.join(fields)} {t_ns}"))
        else:
            rest = dict(values)
        if kind == "event" and rest:
            t_ns = self._unique_event_time(t_ns)
        per_room: dict[str | None, list[str]] = defaultdict(list)
        for col, v in rest.items():
            q, room = _split_column(str(col))
            txt = _field_value(v)
            if txt is not None:
                per_room[room].append(f"{tag_text(q)}={txt}")
        for room, fields in per_room.items():
            t = {**tags, "kind": kind, **({"room": room} if room is not None else {})}
            head = line_head(self.extra_measurement, [(k, v) for k, v in sorted(t.items()) if str(v) != ""])
            out.append((self.extra_bucket, f"{head} {','.join(fields)} {t_ns}"))
        return out

    def _unique_event_time(self, t_ns: int) -> int:
        c = self._c
        with self._cond:
            while t_ns in c.recent_event_set:
                t_ns += 1
            if len(c.recent_events) == c.recent_events.maxlen:
                c.recent_event_set.discard(c.recent_events[0])
            c.recent_events.append(t_ns)
            c.recent_event_set.add(t_ns)
        return t_ns

    # ------------------------------------------------------------------ writing
    def write(self, time, values: MappingABC[str, Value], kind: Kind,
              tags: MappingABC[str, str] | None = None) -> int:
        """Spool the values of one time; returns the number of lines spooled.

        Never blocks on the network and never raises for an I/O problem (a full disk is logged,
        counted in ``dropped_lines`` and reported in ``last_error``). See :meth:`lines` for the
        parameters; a bad ``kind``, reserved tag or naive time raises ``ValueError``.
        """
        if self._closed:
            raise RuntimeError("the InfluxDB log is closed")
        lines = self.lines(time, values, kind, tags)
        if kind in ONE_POINT_PER_STEP and lines:
            key = (kind, tuple(sorted((tags or {}).items())))
            t_ns = _to_ns(time)
            last = self._last_ns.get(key)
            if last is not None and t_ns <= last:
                # The clock went back: these points would overwrite what was logged at that time. They
                # are kept in rejected.lp, not sent (and the loop's watchdog says why: a clock fault).
                why = (f"{kind} at {pd.Timestamp(t_ns, unit='ns', tz='UTC')} is not after the last one logged "
                       f"({pd.Timestamp(last, unit='ns', tz='UTC')}): the clock went back; kept, not sent")
                for _, ln in lines:
                    self._spool.reject_raw(ln.encode(), why)
                log.warning("InfluxDB log: %s", why)
                return 0
            self._last_ns[key] = t_ns
        return self._append(lines)

    def write_plan(self, issued, plan: pd.DataFrame, tags: MappingABC[str, str] | None = None) -> int:
        """Spool a plan: row ``i`` (indexed by the time it applies to) with tag ``horizon=i``.

        The horizon tag keeps every plan (successive plans do not overwrite each other at the
        same time) with a bounded number of series; the plan made at ``issued`` is the points with
        ``time − horizon × step == issued``. Rows before ``issued`` are skipped.

        Returns
        -------
        int
            Lines spooled.
        """
        t0 = _to_ns(issued)
        idx = pd.DatetimeIndex(plan.index)
        if idx.tz is None:
            raise ValueError("the plan's index has no time zone (PEMS times are tz-aware UTC)")
        ns = idx.as_unit("ns").asi8
        lines, h = [], 0
        for i, (_, row) in enumerate(plan.iterrows()):
            if ns[i] < t0:
                continue
            lines += self.lines(pd.Timestamp(ns[i], unit="ns", tz="UTC"), row.to_dict(), "planned",
                                {**(tags or {}), "horizon": str(h)})
            h += 1
        return self._append(lines)

    def _append(self, lines: list[tuple[str, str]]) -> int:
        if self._closed:
            raise RuntimeError("the InfluxDB log is closed")
        if not lines:
            return 0
        data = b"".join(record(b, ln) for b, ln in lines)
        try:
            n, drops = self._spool.append(data, len(lines))
        except OSError as exc:
            with self._cond:
                self._spool.dropped += len(lines)
                self._c.last_error = f"spool {self.spool_dir}: cannot write ({exc.strerror})"
            log.error("InfluxDB log: %s; %d lines lost", self._c.last_error, len(lines))
            return 0
        for dropped, first, last in drops:
            self._report_drop(dropped, first, last, lines)
        if n and self._spool.pending_lines >= self.max_batch_lines:
            with self._cond:  # a full batch is waiting: no need to wait for batch_s
                self._wake_at = min(self._wake_at, time.monotonic()) if self._c.connected else self._wake_at
                self._cond.notify_all()
        return n

    def _report_drop(self, n: int, first: pd.Timestamp | None, last: pd.Timestamp | None,
                     lines: list[tuple[str, str]]) -> None:
        span = f" of {first:%Y-%m-%d %H:%M:%S} … {last:%Y-%m-%d %H:%M:%S} UTC" if first is not None else ""
        which = "oldest" if self._spool.when_full == "drop_oldest" else "newest"
        msg = (f"spool full ({self._spool.max_bytes} bytes): dropped the {n} {which} lines{span}")
        with self._cond:
            first_time = not self._c.first_drop_logged
            self._c.first_drop_logged = True
            self._c.last_error = msg
        (log.warning if first_time else log.info)("InfluxDB log: %s", msg)
        if which == "oldest":  # the gap is documented in the log itself, at the time of the newest line
            t = line_time(lines[-1][1])
            if t is not None:
                ev = self.lines(t, {"message": msg, "level": "warning", "source": "influx_log",
                                    "dropped_lines": float(n)}, "event")
                self._spool.append(b"".join(record(b, ln) for b, ln in ev), len(ev))

    # ------------------------------------------------------------------ state
    def status(self) -> InfluxLogStatus:
        """A snapshot of the log's state (cheap: one small read of the spool)."""
        with self._cond:
            c = self._c
            connected, sent, err, down = c.connected, c.sent, c.last_error, c.down_since
        with self._spool.lock:
            pl, pb, total = self._spool.pending_lines, self._spool.pending_bytes, self._spool.total_bytes
            rej, drop = self._spool.rejected, self._spool.dropped
        return InfluxLogStatus(connected=connected, pending_lines=pl, pending_bytes=pb,
                               oldest_pending=self._spool.oldest_time() if pl else None, last_error=err,
                               sent_lines=sent, rejected_lines=rej, dropped_lines=drop, spool_bytes=total,
                               down_since=pd.Timestamp(down, unit="s", tz="UTC") if down else None)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """fsync the spool and try to send everything now; wait up to ``timeout_s`` [s].

        Returns
        -------
        bool
            ``True`` when nothing is pending any more (everything acknowledged by InfluxDB).
        """
        self._spool.sync()
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._kick = True
            self._wake_at = 0.0
            self._cond.notify_all()
            while self._spool.pending_lines > 0:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None or not self._thread.is_alive():
                    break
                self._cond.wait(min(left, 0.1))
            return self._spool.pending_lines == 0

    def close(self, timeout_s: float = 5.0) -> bool:
        """Send what can be sent within ``timeout_s`` [s], then stop; the rest stays on disk.

        Returns
        -------
        bool
            ``True`` when nothing was left pending.
        """
        if self._closed:
            return self._spool.pending_lines == 0
        with self._cond:
            self._closing = True
            self._close_deadline = time.monotonic() + timeout_s
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s + self.timeout_s + 1.0)
            if self._thread.is_alive():
                log.warning("InfluxDB log: the sender did not stop in time; pending lines stay in %s",
                            self.spool_dir)
        self._closed = True
        left = self._spool.pending_lines
        self._spool.close()
        if left:
            log.info("InfluxDB log: %d lines left in %s for the next start", left, self.spool_dir)
        return left == 0

    def __enter__(self) -> InfluxLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ the sender thread
    def _run(self) -> None:
        backoff = self.retry_min_s
        last_sync = time.monotonic()
        while True:
            with self._cond:
                while not self._closing:
                    now = time.monotonic()
                    if now >= self._wake_at:
                        break
                    self._cond.wait(min(self._wake_at - now, self.sync_s))
                    if time.monotonic() - last_sync >= self.sync_s:
                        break
                closing = self._closing
                due = time.monotonic() >= self._wake_at
                if due:
                    self._kick = False  # this round serves any flush() so far
            if time.monotonic() - last_sync >= self.sync_s:
                self._safe(self._spool.sync)
                last_sync = time.monotonic()
            if closing:
                self._drain()
                return
            if not due:
                continue
            ok, more = self._round()
            with self._cond:
                now = time.monotonic()
                if ok:
                    backoff = self.retry_min_s
                    self._wake_at = now if more else now + self.batch_s
                else:
                    self._wake_at = now + backoff
                    backoff = min(2 * backoff, self.retry_max_s)
                if self._kick:  # a flush() came during the round
                    self._kick = False
                    self._wake_at = now
                self._cond.notify_all()

    def _drain(self) -> None:
        """On close: send until nothing is pending or the close deadline passes."""
        backoff = self.retry_min_s
        while self._spool.pending_lines > 0 and time.monotonic() < self._close_deadline:
            ok, _ = self._round()
            with self._cond:
                self._cond.notify_all()
                if not ok:
                    self._cond.wait(max(0.0, min(backoff, self._close_deadline - time.monotonic())))
                    backoff = min(2 * backoff, self.retry_max_s)

    def _safe(self, fn) -> bool:
        try:
            fn()
            return True
        except Exception as exc:  # noqa: BLE001 - the sender thread must never die
            log.exception("InfluxDB log: %s failed", getattr(fn, "__name__", fn))
            self._failed(f"internal error: {exc.__class__.__name__}: {self._transport.scrub(str(exc))[:200]}")
            return False

    def _round(self) -> tuple[bool, bool]:
        """One batch (or a ping when idle): (succeeded, more is pending)."""
        try:
            batch = self._spool.read_batch(self.max_batch_lines, self.max_batch_bytes)
            if batch is None:
                if time.monotonic() - self._c.last_contact >= self.ping_s:
                    self._transport.ping()
                    self._succeeded(0)
                return True, False
            for raw in batch.corrupt:
                self._spool._warn(f"skipping a corrupt record ({len(raw)} bytes, wrong CRC)")
                self._spool.reject_raw(raw, "corrupt record in the spool (CRC mismatch)")
            by_bucket: dict[str, list[str]] = defaultdict(list)
            for bucket, line in batch.records:
                by_bucket[bucket].append(line)
            rejected = 0
            for bucket, lines in by_bucket.items():
                rejected += self._send(bucket, lines)
            self._spool.commit(batch)
            self._succeeded(len(batch.records) - rejected)
            return True, self._spool.pending_lines > 0
        except _Failed as exc:
            self._failed(str(exc))
        except Exception as exc:  # noqa: BLE001 - the sender thread must never die
            log.exception("InfluxDB log: sending failed")
            self._failed(f"internal error: {exc.__class__.__name__}: {self._transport.scrub(str(exc))[:200]}")
        return False, True

    def _send(self, bucket: str, lines: list[str]) -> int:
        """Write one bucket's lines; a refused request is bisected down to the refused lines.

        Returns the number of lines refused (kept in ``rejected.lp``); raises :class:`_Failed`.
        """
        refused, stack = 0, [lines]
        while stack:
            part = stack.pop()
            try:
                self._transport.write(bucket, part)
            except _Rejected as exc:
                if len(part) == 1:
                    refused += 1
                    log.warning("InfluxDB log: a line was refused and kept in rejected.lp: %s", exc)
                    self._spool.reject_raw(record(bucket, part[0]), str(exc))
                else:
                    mid = len(part) // 2
                    stack += [part[mid:], part[:mid]]  # the first half next: order is kept
        return refused

    def _succeeded(self, n: int) -> None:
        with self._cond:
            c = self._c
            if not c.connected:
                pending = self._spool.pending_lines
                if c.down_since is not None:
                    log.warning("InfluxDB log: %s reachable again after %.0f s; %d lines still to replay",
                                self.source.safe_url, time.time() - c.down_since, pending)
                else:
                    log.info("InfluxDB log: connected to %s", self.source.safe_url)
            c.connected, c.down_since = True, None
            c.sent += n
            c.last_contact = time.monotonic()
            c.first_drop_logged = False

    def _failed(self, msg: str) -> None:
        msg = self._transport.scrub(msg)
        with self._cond:
            c = self._c
            was, c.connected, c.last_error = c.connected, False, msg
            now = time.monotonic()
            if c.down_since is None:
                c.down_since = time.time()
                c.down_logged = now
                log.warning("InfluxDB log: %s; keeping %d lines in %s and retrying%s", msg,
                            self._spool.pending_lines, self.spool_dir, "" if was else " (not connected yet)")
            elif now - c.down_logged >= 600:  # an operator watching the log sees it is still down
                c.down_logged = now
                log.warning("InfluxDB log: still failing for %.0f min (%s); %d lines pending",
                            (time.time() - c.down_since) / 60, msg, self._spool.pending_lines)
