"""The loop's guard: a thread of its own that no hung solve, read or socket can hold up.

The live loop does its work (sampling, the watchdog's rules, forecasting, solving, writing) on one
thread. Anything on that thread can hang: a solver without a time limit, a forecast source that
never answers, a socket stuck in a read. The :class:`Guard` runs beside it, on its own thread and
its own waits on the loop's clock, and keeps three promises whatever that thread is doing:

**Deadlines.** The loop arms a deadline before each piece of work (:meth:`Guard.arm`: a control
step, an inner tick) and disarms it when done. A deadline that passes while armed calls
``on_deadline`` (the loop hands the home back from this thread) once, and the loop learns it at
:meth:`Guard.disarm` (its late result must not command the home).

**Relay pulses end on time.** The loop hands the guard the times its relays go off
(:meth:`Guard.schedule_offs`); the guard switches them off at those times through ``end_pulses``.

**Heartbeat.** Every ``heartbeat_s`` the guard calls ``heartbeat`` (the loop publishes it on the
bus), but only while no deadline is overdue and the loop's thread shows life (it armed or disarmed
within three periods): the home's own logic watches it and takes its rooms back when it stops (a
dead process, a hung loop, a lost broker or gateway alike).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)


class Guard:
    """Deadlines, relay pulse ends and the heartbeat, on a thread of their own (see the module notes).

    Parameters
    ----------
    clock
        The loop's clock (``monotonic()``, ``sleep_until()``, ``start``): the guard waits on it.
    on_deadline
        ``(what, late_s)``: called on the guard's thread when a deadline passes while armed (None:
        only counted; :class:`~pems.live.safe_home.SafeHome` sets it to its hand-back).
    end_pulses
        ``(rooms)``: switch these rooms' relays off now (called on the guard's thread).
    heartbeat
        Called every ``heartbeat_s`` while no deadline is overdue (None: no heartbeat).
    heartbeat_s
        Heartbeat period [clock s].
    """

    def __init__(self, clock: Any, on_deadline: Callable[[str, float], None] | None,
                 end_pulses: Callable[[list[str]], None], heartbeat: Callable[[], None] | None = None,
                 heartbeat_s: float = 60.0) -> None:
        self.clock = clock
        self.on_deadline, self.end_pulses, self.heartbeat = on_deadline, end_pulses, heartbeat
        self.heartbeat_s = float(heartbeat_s)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._armed: tuple[str, float] | None = None  # (what, monotonic deadline [s])
        self._missed: str | None = None  # the armed work whose deadline passed
        self._offs: dict[str, float] = {}  # room → monotonic time its relay goes off [s]
        self._next_beat = -math.inf
        self._alive_at = -math.inf  # monotonic time the loop last armed or disarmed [s]
        self.deadlines_missed = 0

    # ------------------------------------------------------------------ the loop's side
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="pems-guard", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def arm(self, what: str, deadline_mono: float) -> None:
        """Work ``what`` must be done (:meth:`disarm`) by monotonic time ``deadline_mono`` [s]."""
        with self._lock:
            self._armed, self._missed = (what, float(deadline_mono)), None
            self._alive_at = self.clock.monotonic()
        self._wake.set()

    def disarm(self) -> str | None:
        """The work is done. Returns what missed its deadline meanwhile (None: it was on time)."""
        with self._lock:
            missed, self._armed, self._missed = self._missed, None, None
            self._alive_at = self.clock.monotonic()
        self._wake.set()
        return missed

    @property
    def overdue(self) -> bool:
        """A deadline passed and its work is not done yet."""
        with self._lock:
            return self._missed is not None

    def schedule_offs(self, offs: dict[str, float]) -> None:
        """Replace the pending relay ends: room → monotonic time [s] its relay goes off."""
        with self._lock:
            self._offs = dict(offs)
        self._wake.set()

    def cancel_offs(self) -> None:
        """No relay end pending (the home has its rooms back)."""
        self.schedule_offs({})

    def pending_offs(self) -> dict[str, float]:
        with self._lock:
            return dict(self._offs)

    # ------------------------------------------------------------------ the guard's thread
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            now = self.clock.monotonic()
            try:
                self._due(now)
            except Exception:  # noqa: BLE001 - the guard must outlive any defect in a callback
                log.exception("guard: an action failed")
            with self._lock:
                times = [*self._offs.values(), self._next_beat if self.heartbeat is not None else math.inf]
                if self._armed is not None and self._missed is None:
                    times.append(self._armed[1])
            nxt = min(times, default=math.inf)
            if not math.isfinite(nxt):
                nxt = now + self.heartbeat_s
            # sleep on the loop's clock until then, or until the loop changes the schedule
            self.clock.sleep_until(self.clock.start + pd.Timedelta(seconds=max(nxt, now)), self._wake)

    def _due(self, now: float) -> None:
        with self._lock:
            missed = None
            if self._armed is not None and self._missed is None and now >= self._armed[1]:
                self._missed = self._armed[0]
                missed = (self._armed[0], now - self._armed[1])
            offs = [r for r, t in self._offs.items() if now >= t - 1e-6]
            for r in offs:
                del self._offs[r]
            # a beat says the loop works: none while a deadline is overdue, nor when the loop has
            # not armed or disarmed anything for three periods (its thread is gone)
            alive = (self._armed is not None and self._missed is None) or now - self._alive_at <= 3 * self.heartbeat_s
            beat = self.heartbeat is not None and alive and now >= self._next_beat
            if beat:
                self._next_beat = now + self.heartbeat_s
        if missed is not None:
            self.deadlines_missed += 1
            if self.on_deadline is not None:
                self.on_deadline(*missed)
        if offs:
            self.end_pulses(offs)
        if beat:
            assert self.heartbeat is not None
            self.heartbeat()
