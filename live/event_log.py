"""``events.jsonl``: the live loop's own record, which no file-system fault may turn into a control fault.

A home is not a test bench: a full disk, a file removed under the loop or a folder made read-only
must neither stop the loop nor delay a hand-back. :class:`EventLog` therefore never raises:

- each event is one JSON line, flushed at once (a crash loses nothing that was written);
- a write that fails (``ENOSPC``, ``EIO``, ``EROFS``, ...) closes the file, keeps the event in
  memory (:attr:`EventLog.records`, the last ``keep_in_memory``), counts it in
  :attr:`EventLog.dropped`, says so once on stderr (``logging``) and to ``on_problem`` (the loop
  puts it on the bus), and the next write tries again: when it succeeds, the log says how many
  events it missed;
- the file is rotated at ``max_bytes``, and with ``daily`` also at the first event of each new day
  (UTC), to ``events.jsonl.1`` (the newest) … ``.keep``; the oldest are removed beyond ``keep`` files
  or ``max_total_bytes`` in all, so a loop that runs for years does not fill the disk itself.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


def _utc_date(t: Any) -> Any:
    try:
        ts = pd.Timestamp(t)
        return (ts.tz_convert("UTC") if ts.tzinfo is not None else ts).date()
    except (TypeError, ValueError):
        return None


def jsonable(v: Any) -> Any:
    """``v`` with timestamps, numpy scalars and arrays, and non-finite floats made JSON-safe."""
    if isinstance(v, pd.Timestamp):
        return v.isoformat()
    if isinstance(v, np.generic):
        return jsonable(v.item())
    if isinstance(v, np.ndarray):
        return [jsonable(x) for x in v.tolist()]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [jsonable(x) for x in v]
    return v


class EventLog:
    """Append-only JSON-lines event log that never raises (see the module notes).

    Parameters
    ----------
    path
        The file (appended to; its folder is created), or None to keep events in memory only.
    max_bytes
        Size at which the file is rotated [bytes].
    keep
        Rotated files kept at most (``events.jsonl.1`` is the newest).
    daily
        Also rotate at the first event of each new day (UTC): a file per day.
    max_total_bytes
        The most the log and its rotated files may take together [bytes]; the oldest rotated files
        go first (None: only ``keep`` limits them).
    keep_in_memory
        Events kept in :attr:`records` (the newest).
    on_problem
        Called with a one-line text when writing starts failing, and with ``""`` when it works again.
    """

    def __init__(self, path: str | Path | None, max_bytes: int = 50 * 2**20, keep: int = 5,
                 keep_in_memory: int = 1000, on_problem: Callable[[str], None] | None = None,
                 daily: bool = False, max_total_bytes: int | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.max_bytes, self.keep = int(max_bytes), max(1, int(keep))
        self.daily, self.max_total_bytes = bool(daily), max_total_bytes
        if max_total_bytes is not None:  # the file being written stays within the cap too
            self.max_bytes = min(self.max_bytes, max(1, int(max_total_bytes) // 2))
        self._rotated_bytes = 0  # what the rotated files take (as of the last check)
        self._day: Any = None  # the UTC date of the current file's events (daily rotation)
        self.records: deque[dict[str, Any]] = deque(maxlen=keep_in_memory)
        self.on_problem = on_problem
        self.listeners: list[Callable[[dict[str, Any]], None]] = []  # told of every event (never raise here)
        self.problem: str | None = None  # why the file cannot be written (None: it can)
        self.dropped = 0  # events that did not reach the file since it last could be written
        self._f: IO[str] | None = None
        self._lock = threading.Lock()
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._open()
                self._cap()
            except OSError as exc:
                self._failed(exc)

    def write(self, kind: str, time: pd.Timestamp, **fields: Any) -> dict[str, Any]:
        """Log one event; returns it. Never raises."""
        rec = {"time": time, "kind": kind, **fields}
        for listener in list(self.listeners):
            try:
                listener(rec)
            except Exception:  # noqa: BLE001 - a listener (the InfluxDB mirror) never costs an event
                log.exception("an event listener failed")
        with self._lock:
            self.records.append(rec)
            if self.path is None:
                return rec
            try:
                line = json.dumps(jsonable(rec)) + "\n"
            except (TypeError, ValueError) as exc:  # a defect in a caller: the event, not the log, is lost
                log.error("event %r could not be serialised: %s", kind, exc)
                return rec
            try:
                if self._f is None:
                    self._open()
                assert self._f is not None
                day = _utc_date(time) if self.daily else None
                if day is not None:
                    if self._day is not None and day > self._day and self._f.tell() > 0:
                        self._rotate()
                    self._day = day if self._day is None else max(self._day, day)
                self._f.write(line)
                self._f.flush()
                size = self._f.tell()
                if size >= self.max_bytes:
                    self._rotate()
                elif self.max_total_bytes is not None and self._rotated_bytes + size > self.max_total_bytes:
                    self._cap()
            except (OSError, ValueError) as exc:  # ValueError: a file closed under us
                self.dropped += 1
                self._close_quietly()
                self._failed(exc)
                return rec
            if self.problem is not None:
                missed, self.problem, self.dropped = self.dropped, None, 0
                log.warning("%s can be written again (%d events missed; they were kept in memory only)",
                            self.path, missed)
                self._tell("")
        return rec

    def close(self) -> None:
        with self._lock:
            self._close_quietly()

    # ------------------------------------------------------------------ internals
    def _open(self) -> None:
        assert self.path is not None
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run

    def _rotate(self) -> None:
        assert self.path is not None
        self._close_quietly()
        for i in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._open()
        self._day = None
        self._cap()

    def rotated(self) -> list[Path]:
        """The rotated files, newest first."""
        if self.path is None:
            return []
        out = []
        for f in self.path.parent.glob(f"{self.path.name}.*"):
            suffix = f.name[len(self.path.name) + 1:]
            if suffix.isdigit():
                out.append((int(suffix), f))
        return [f for _, f in sorted(out)]

    def _cap(self) -> None:
        """Remove the oldest rotated files beyond ``keep`` or ``max_total_bytes``."""
        files = self.rotated()
        for f in files[self.keep:]:
            f.unlink(missing_ok=True)
        files = files[: self.keep]
        rotated = sum(f.stat().st_size for f in files)
        if self.max_total_bytes is not None:
            current = self.path.stat().st_size if self.path.exists() else 0
            while files and rotated + current > self.max_total_bytes:
                oldest = files.pop()
                rotated -= oldest.stat().st_size
                oldest.unlink(missing_ok=True)
        self._rotated_bytes = rotated

    def _close_quietly(self) -> None:
        f, self._f = self._f, None
        if f is None:
            return
        try:
            f.close()  # flushes: fails again on a full disk, and the file is closed all the same
        except (OSError, ValueError):
            pass

    def _failed(self, exc: BaseException) -> None:
        if self.problem is not None:
            return  # said once; counted in `dropped`
        why = getattr(exc, "strerror", None) or str(exc)
        self.problem = f"event log {self.path}: cannot write ({why}); events kept in memory only"
        log.error("%s", self.problem)
        self._tell(self.problem)

    def _tell(self, text: str) -> None:
        if self.on_problem is None:
            return
        try:
            self.on_problem(text)
        except Exception:  # noqa: BLE001 - telling about the problem must not become one
            log.exception("reporting the event log's problem failed")
