"""Forecast sources the loop fetches itself: each on its own schedule, cached on disk, never waited for.

A :class:`Fetched` source (Open-Meteo's weather, the home's own InfluxDB, day-ahead prices) runs a
fetch function in its own thread every ``refresh_s``. What it fetches is checked (the columns, finite
values, times that cover the coming hours) and written atomically to a CSV in the loop's cache
folder, in the format the scenario inputs read (weather: ``time, T_out, ghi[, dni, dhi]``; prices:
``time, price_import, price_export``), so the forecast each step is built from it exactly as from a
file a job of the owner's would refresh (:class:`pems.live.config.LiveForecast`).

The loop never blocks on a source. When a fetch fails (the service down, an error status, a
timeout, a malformed body) the cached forecast stays in use — the last good one — and the source
says so; when even that no longer covers the step now, the last day of it is repeated from now on
(persistence) and the source says that too. Each change (fetched, failed and what is used instead,
persistence) is a report that the loop writes to its event log as a ``forecast_fetch`` event and to
the process log. The cache survives restarts: a loop started while a service is down starts on
the last good forecast.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pems.live.state import write_atomic

log = logging.getLogger(__name__)

#: How far past the horizon a forecast must reach (the inputs interpolate between samples).
MARGIN = pd.Timedelta(hours=2)
#: Columns a fetched table must have, by the forecast key it feeds.
COLUMNS = {"weather": ("T_out", "ghi"), "prices": ("price_import", "price_export")}


class FetchError(RuntimeError):
    """A fetch that failed, with a one-line reason (never a credential)."""


@dataclass(frozen=True)
class FetchReport:
    """One change in a source's state, for the loop's event log."""

    source: str
    key: str  # weather | prices
    ok: bool
    message: str  # what happened and what is used now


class Fetched:
    """A forecast source fetched by the loop (see the module notes).

    Parameters
    ----------
    name
        The source's name (``open-meteo``, ``influx``, ``entsoe``, ``ote``).
    key
        The forecast it feeds: ``weather`` or ``prices``.
    fetch
        Now (UTC) → a table indexed by UTC times with :data:`COLUMNS`; raises on any failure.
    cache
        The cached CSV (its folder is created).
    refresh_s
        Seconds between fetches (and after a failure, a quarter of it, at least a minute).
    horizon
        How far ahead the loop plans: a forecast shorter than this is used, with persistence beyond.
    now
        The clock (UTC); the loop's.
    """

    def __init__(self, name: str, key: str, fetch: Callable[[pd.Timestamp], pd.DataFrame], cache: Path,
                 refresh_s: float, horizon: pd.Timedelta,
                 now: Callable[[], pd.Timestamp] = lambda: pd.Timestamp.now(tz="UTC")) -> None:
        if key not in COLUMNS:
            raise ValueError(f"key {key!r}: expected one of {', '.join(COLUMNS)}")
        self.name, self.key, self.fetch, self.cache = name, key, fetch, Path(cache)
        self.refresh_s, self.horizon, self.now = float(refresh_s), horizon, now
        self.persistence = self.cache.with_name(self.cache.stem + ".persistence.csv")
        self.meta = self.cache.with_name(self.cache.stem + ".fetched")  # when the cache was fetched (the loop's clock)
        self.reports: deque[FetchReport] = deque(maxlen=100)
        self.last_ok: pd.Timestamp | None = None  # when the cache was last refreshed
        self.last_error: str | None = None
        self._state = ""  # "fetched" | "failed" | "persistence": a report is made when it changes
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._said = threading.Lock()  # the state and its reports: the fetch thread's and the loop's
        self._last_message = ""
        self._thread: threading.Thread | None = None
        self._cached: pd.DataFrame | None = None
        self._persisted: tuple[pd.DataFrame, pd.Timestamp] | None = None  # (the forecast it repeats, until)
        if self.cache.is_file():  # a restart: the last good forecast stands from the start
            try:
                self._cached = _read(self.cache)
            except (OSError, ValueError):
                self._cached = None
            try:
                self.last_ok = pd.Timestamp(self.meta.read_text(encoding="utf-8").strip())
            except (OSError, ValueError):
                self.last_ok = None

    @property
    def label(self) -> str:
        return f"{self.key} from {self.name}"

    # ------------------------------------------------------------------ the thread
    def start(self) -> None:
        """Fetch now and then every ``refresh_s``, in the background."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"pems-fetch-{self.name}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            ok = self.refresh()
            wait = self.refresh_s if ok else min(self.refresh_s, max(60.0, self.refresh_s / 4))
            self._wake.wait(wait)
            self._wake.clear()

    # ------------------------------------------------------------------ one fetch
    def refresh(self) -> bool:
        """Fetch once (in the caller's thread); True when the cache was renewed."""
        now = self.now()
        try:
            table = self._checked(self.fetch(now), now)
        except Exception as exc:  # noqa: BLE001 - any failure of a source: the last good forecast stands
            reason = str(exc) if isinstance(exc, FetchError) else f"{type(exc).__name__}: {exc}"
            with self._lock:
                self.last_error = reason
                if self._cached is None:
                    using = "no forecast yet: the home runs itself"
                elif self.last_ok is None:
                    using = "the forecast cached earlier"
                else:
                    using = f"the forecast fetched at {self.last_ok:%Y-%m-%d %H:%M} UTC"
            self._report("failed", False, f"{self.label} failed: {reason}; using {using}")
            return False
        try:
            write_atomic(self.cache, _csv(table), fsync=False)  # (it can be fetched again)
            write_atomic(self.meta, now.isoformat() + "\n", fsync=False)
        except OSError as exc:
            self._report("failed", False, f"{self.label}: the cache {self.cache} cannot be written ({exc}); "
                                          "using the forecast in memory")
        with self._lock:
            self._cached, self.last_ok, self.last_error = table, now, None
        end = table.index[-1]
        self._report("fetched", True, f"{self.label}: fetched, {table.index[0]:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M} UTC")
        return True

    def _checked(self, table: pd.DataFrame, now: pd.Timestamp) -> pd.DataFrame:
        """The fetched table if it can be used: the columns, numbers, sorted times that cover now."""
        if not isinstance(table, pd.DataFrame) or not isinstance(table.index, pd.DatetimeIndex):
            raise FetchError("not a table of times")
        missing = [c for c in COLUMNS[self.key] if c not in table]
        if missing:
            raise FetchError(f"no {', '.join(missing)} in the response")
        t = table[list(COLUMNS[self.key]) + [c for c in ("dni", "dhi") if c in table]].astype(float)
        t.index = t.index.tz_convert("UTC") if t.index.tz is not None else t.index.tz_localize("UTC")
        t = t[~t.index.duplicated(keep="last")].sort_index()
        need = list(COLUMNS[self.key])
        t = t.interpolate(method="time", limit_area="inside").dropna(subset=need)  # gaps inside; ends trimmed
        t = t.drop(columns=[c for c in t if c not in need and t[c].isna().any()])  # (dni, dhi: from ghi then)
        if len(t) < 2 or not np.isfinite(t[need].to_numpy()).all():
            raise FetchError("no usable values")
        if t.index[0] > now or t.index[-1] <= now:
            raise FetchError(f"covers {t.index[0]:%Y-%m-%d %H:%M} .. {t.index[-1]:%Y-%m-%d %H:%M} UTC, not now "
                             f"({now:%Y-%m-%d %H:%M})")
        return t

    # ------------------------------------------------------------------ what the loop reads
    def path(self, t: pd.Timestamp) -> Path | None:
        """The CSV the forecast from ``t`` is built from: the cache while it covers ``t``, else the
        persistence of its last day from ``t`` on (said once); None when nothing was ever fetched."""
        with self._lock:
            cached = self._cached
        if cached is None:
            return None
        end = cached.index[-1]
        if end >= t + self.horizon + MARGIN:
            with self._said:
                if self._state == "persistence":
                    self._state = "failed" if self.last_error else "fetched"
            return self.cache
        # the forecast ends before the horizon does: its last day repeats beyond its end (persistence),
        # written a day further than needed, and again only when that is used up or a new forecast came
        need_until = t + self.horizon + MARGIN
        made = self._persisted
        if made is None or made[0] is not cached or made[1] < need_until:
            day = cached.loc[cached.index > end - pd.Timedelta(days=1)]
            period = pd.Timedelta(days=1)
            n = int(np.ceil((need_until - end) / period)) + 2
            rep = pd.concat([cached, *(day.set_axis(day.index + k * period) for k in range(1, n + 1))])
            rep = rep[~rep.index.duplicated()]
            try:
                write_atomic(self.persistence, _csv(rep), fsync=False)
            except OSError:
                return None
            self._persisted = (cached, rep.index[-1])
        if end <= t:
            self._report("persistence", False, f"{self.label}: the last good forecast ended at {end:%Y-%m-%d %H:%M} "
                                               "UTC; its last day repeats from now (persistence) until a fetch "
                                               "succeeds")
        return self.persistence

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"source": self.name, "key": self.key, "state": self._state or "starting",
                    "last_ok": None if self.last_ok is None else self.last_ok.isoformat(),
                    "last_error": self.last_error}

    def drain(self) -> list[FetchReport]:
        """The reports since the last call (the loop writes them as events)."""
        out = []
        while self.reports:
            out.append(self.reports.popleft())
        return out

    def _report(self, state: str, ok: bool, message: str) -> None:
        with self._said:
            if state == self._state and state != "failed":
                return
            if state == "failed" and self._state == "failed" and message == self._last_message:
                return  # the same failure again: said once, until something changes
            self._state, self._last_message = state, message
            self.reports.append(FetchReport(self.name, self.key, ok, message))
        (log.info if ok else log.warning)("%s", message)


def _csv(table: pd.DataFrame) -> str:
    """The table as the scenario inputs read a CSV (``time`` in UTC first)."""
    out = table.copy()
    out.index = out.index.tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%SZ")
    out.index.name = "time"
    return out.to_csv(float_format="%.6g")


def _read(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, index_col="time")
    df.index = pd.to_datetime(df.index, utc=True)
    return df
