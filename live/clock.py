"""Simulated time shared by the emulator and the live loop.

An emulated home runs in real time (``speed = 1``) or accelerated (``speed = 60``: an hour a minute).
Everything that takes part — the emulator's physics, the loop's control steps, the adapters' time
slots and value ages — must read the *same* simulated time, or a slot written for 10:00 lands at the
wrong minute. Two clocks serve that:

- :class:`SimClock` — simulated time = ``start + (wall − epoch) × speed``. Given the same ``start``,
  ``speed`` and ``epoch`` (a Unix wall time [s]), two processes on one machine (or on NTP-synced
  machines) agree to within milliseconds of wall time, without talking to each other. Within one
  process the clock runs on :func:`time.monotonic` (immune to wall-clock steps); the epoch only
  anchors it once, at construction.
- :class:`ManualClock` — time moves only when told (:meth:`ManualClock.advance`), or, with
  ``auto=True``, jumps to whatever time a sleeper waits for: the emulator then runs as fast as the
  CPU allows, deterministically. For tests.

How the loop finds the emulator's time
--------------------------------------
1. **One process** (``pems live --emulate``, tests): emulator and loop share one clock object.
2. **Two processes**: the emulator publishes a :class:`ClockAnchor` as JSON on
   :data:`TIME_TOPIC` (``pems/emulator/time``, retained, at every sensor publication). The loop
   subscribes once, builds its clock with :meth:`ClockAnchor.clock` (same start, speed and epoch),
   and from then on needs no further messages. The anchor also carries the emulator's current
   simulated time, so a follower can see whether the emulator keeps up (``anchor.time`` vs its own
   ``now()``). The retained message makes late joiners work; a restarted emulator publishes a new
   anchor.
3. Alternatively ``pems emulate --epoch UNIX_S`` fixes the epoch up front, and a loop started with
   the same scenario, ``--speed`` and ``--epoch`` computes the same clock without MQTT.

A wall-clock anchor was chosen over "follow every time message" because it stays right while the
broker is down (exactly the fault the live loop must survive) and has no message latency; the
topic only distributes the anchor.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import pandas as pd

#: Retained MQTT topic on which the emulator announces its clock (JSON, see :class:`ClockAnchor`).
TIME_TOPIC = "pems/emulator/time"


def _utc(t: pd.Timestamp | str) -> pd.Timestamp:
    t = pd.Timestamp(t)
    return t.tz_localize("UTC") if t.tz is None else t.tz_convert("UTC")


@runtime_checkable
class Clock(Protocol):
    """What the emulator and the loop need from a clock."""

    start: pd.Timestamp  # simulated time at the start (UTC)
    speed: float | None  # simulated seconds per wall second; None: not tied to wall time

    def now(self) -> pd.Timestamp:
        """Simulated time now (UTC)."""
        ...

    def monotonic(self) -> float:
        """Simulated seconds since ``start`` (for value ages and rate limits) [s]."""
        ...

    def sleep_until(self, t: pd.Timestamp, interrupt: threading.Event | None = None) -> bool:
        """Block until simulated time reaches ``t``; False if ``interrupt`` was set first."""
        ...

    def anchor(self, now: pd.Timestamp | None = None, running: bool = True) -> ClockAnchor:
        """What a follower in another process needs to know (see :data:`TIME_TOPIC`)."""
        ...


@runtime_checkable
class Accelerated(Protocol):
    """A clock that can run faster than real time, and be held to real time for wall-time work."""

    speed: float | None

    def real_time(self) -> contextlib.AbstractContextManager[Any]: ...


@runtime_checkable
class Followed(Protocol):
    """A clock that follows another process's (``pems emulate``'s) and can lose it."""

    def fault(self) -> str | None:
        """Why the clock cannot be trusted now (None: it can)."""
        ...

    def close(self) -> None: ...


class SimClock:
    """Simulated time running ``speed`` times faster than the wall clock.

    Parameters
    ----------
    start
        Simulated time at ``epoch`` (naive times are taken as UTC).
    speed
        Simulated seconds per wall second [–] (1: real time; 60: an hour per minute).
    epoch
        Unix wall time at which simulated time equals ``start`` [s] (default: now). Pass the same
        value to a second process to share the clock.
    """

    def __init__(self, start: pd.Timestamp | str, speed: float = 1.0, epoch: float | None = None) -> None:
        self._real_lock = threading.Lock()
        self._released = threading.Condition(self._real_lock)  # notified when a real-time hold ends
        speed = float(speed)
        if not (math.isfinite(speed) and speed > 0):
            raise ValueError(f"speed must be a positive number, got {speed}")
        self.start = _utc(start)
        self.speed = speed
        wall, mono = time.time(), time.monotonic()
        self.epoch = wall if epoch is None else float(epoch)
        # From here on only the monotonic clock counts: a wall-clock step (NTP) cannot move us.
        # (mono0, real_since): simulated time is (monotonic − mono0) × speed, except while
        # ``real_time()`` holds it to speed 1 from ``real_since``; read and swapped under a lock.
        self._state: tuple[float, float | None] = (mono - (wall - self.epoch), None)
        self._real_depth = 0

    def monotonic(self) -> float:
        """Simulated seconds since ``start`` [s] (negative before the epoch)."""
        # state and wall time read together: a hold starting in between would make time jump
        with self._real_lock:
            mono0, since = self._state
            m = time.monotonic()
        if since is None:
            return (m - mono0) * self.speed
        return (since - mono0) * self.speed + (m - since)

    @contextmanager
    def real_time(self) -> Iterator[None]:
        """Inside, simulated time runs at real-time rate (1 s per wall second), then at ``speed`` again.

        For work that takes wall time a real home would also spend — a controller's solve: 0.3 s is
        0.03 % of a 15-minute step at home, but a third of it at 1000×. Held to real time, an
        accelerated emulation gives the solve the share of the step it has in reality, so its
        results compare with the in-process simulator. Sleepers wake no earlier than their target;
        the epoch moves with the hold, so anchors published afterwards stay right. Reentrant.
        """
        with self._real_lock:
            self._real_depth += 1
            if self._real_depth == 1:
                self._state = (self._state[0], time.monotonic())
        try:
            yield
        finally:
            with self._real_lock:
                self._real_depth -= 1
                if self._real_depth == 0:
                    mono0, since = self._state
                    m = time.monotonic()
                    sim = (since - mono0) * self.speed + (m - since)
                    new0 = m - sim / self.speed
                    self._state = (new0, None)
                    self.epoch += new0 - mono0
                    self._released.notify_all()

    def now(self) -> pd.Timestamp:
        """Simulated time now (UTC)."""
        return self.start + pd.Timedelta(seconds=self.monotonic())

    def sim_at(self, unix_s: float) -> pd.Timestamp:
        """The simulated time at Unix wall time ``unix_s`` [s]."""
        return self.start + pd.Timedelta(seconds=(float(unix_s) - self.epoch) * self.speed)

    def wall_at(self, t: pd.Timestamp) -> float:
        """The Unix wall time [s] at which simulated time reaches ``t``."""
        return self.epoch + (_utc(t) - self.start).total_seconds() / self.speed

    def sleep_until(self, t: pd.Timestamp, interrupt: threading.Event | None = None) -> bool:
        """Sleep (wall time) until simulated time reaches ``t``.

        Returns
        -------
        bool
            True once ``t`` is reached (at once if it has passed); False if ``interrupt`` was set
            first (checked at least every 0.5 s of wall time).
        """
        target = (_utc(t) - self.start).total_seconds()
        while True:
            if interrupt is not None and interrupt.is_set():
                return False
            left = target - self.monotonic()
            if left <= 0:
                return True
            with self._released:
                if self._state[1] is not None:
                    # Held to real time: the target comes at 1 s per second, or much sooner once the
                    # hold ends; sleep until either (a sleep at ``speed`` would wake far too early,
                    # one at speed 1 far too late).
                    self._released.wait(min(left, 0.5))
                    continue
            left /= self.speed
            if interrupt is not None:
                if interrupt.wait(min(left, 0.5)):
                    return False
            else:
                time.sleep(min(left, 0.5))

    def anchor(self, now: pd.Timestamp | None = None, running: bool = True) -> ClockAnchor:
        """This clock as a :class:`ClockAnchor` (with ``now`` as the publisher's current time)."""
        return ClockAnchor(time=self.now() if now is None else _utc(now), start=self.start, speed=self.speed,
                           epoch=self.epoch, running=running)

    def __repr__(self) -> str:
        return f"SimClock(start={self.start.isoformat()!r}, speed={self.speed:g}, epoch={self.epoch:.3f})"


class ManualClock:
    """A clock that moves only when told: deterministic tests of the emulator and the loop.

    Parameters
    ----------
    start
        Simulated start (naive times are taken as UTC).
    auto
        If True, :meth:`sleep_until` jumps the time forward to the requested time at once (the
        sleeper runs as fast as it can); if False, sleepers wait until :meth:`advance`/:meth:`set`
        moves the time past their wake-up time.
    """

    speed: float | None = None  # not tied to wall time
    epoch: float | None = None

    def __init__(self, start: pd.Timestamp | str, auto: bool = False) -> None:
        self.start = _utc(start)
        self.auto = bool(auto)
        self._t = self.start
        self._cond = threading.Condition()

    def now(self) -> pd.Timestamp:
        with self._cond:
            return self._t

    def monotonic(self) -> float:
        """Simulated seconds since ``start`` [s]."""
        return (self.now() - self.start).total_seconds()

    def set(self, t: pd.Timestamp | str) -> None:
        """Move the time to ``t`` (never backwards) and wake the sleepers."""
        t = _utc(t)
        with self._cond:
            if t < self._t:
                raise ValueError(f"a clock does not go back: {t} < {self._t}")
            self._t = t
            self._cond.notify_all()

    def advance(self, seconds: float = 0.0, minutes: float = 0.0, hours: float = 0.0) -> pd.Timestamp:
        """Move the time forward by the sum of the arguments; returns the new time."""
        dt = pd.Timedelta(seconds=float(seconds) + 60.0 * float(minutes) + 3600.0 * float(hours))
        with self._cond:
            self.set(self._t + dt)
            return self._t

    def sleep_until(self, t: pd.Timestamp, interrupt: threading.Event | None = None) -> bool:
        """Wait until the time reaches ``t`` (``auto``: move it there); False if interrupted."""
        t = _utc(t)
        with self._cond:
            while True:
                if interrupt is not None and interrupt.is_set():
                    return False
                if self._t >= t:
                    return True
                if self.auto:
                    self._t = t
                    self._cond.notify_all()
                    return True
                # a short wait so that an interrupt (not tied to our condition) is seen promptly
                self._cond.wait(0.05)

    def anchor(self, now: pd.Timestamp | None = None, running: bool = True) -> ClockAnchor:
        """The anchor of a manual clock has no speed or epoch: followers see only its time."""
        return ClockAnchor(time=self.now() if now is None else _utc(now), start=self.start, speed=None,
                           epoch=None, running=running)

    def __repr__(self) -> str:
        return f"ManualClock(now={self.now().isoformat()!r}, auto={self.auto})"


@dataclass(frozen=True)
class ClockAnchor:
    """What the emulator announces on :data:`TIME_TOPIC`.

    Attributes
    ----------
    time
        The emulator's simulated time when it published (UTC): the last state it has published.
    start
        Simulated time at ``epoch`` (UTC).
    speed
        Simulated seconds per wall second [–]; None for a manual clock.
    epoch
        Unix wall time at which simulated time was ``start`` [s]; None for a manual clock.
    running
        False once the emulator has stopped.
    """

    time: pd.Timestamp
    start: pd.Timestamp
    speed: float | None
    epoch: float | None
    running: bool = True

    def to_json(self) -> str:
        return json.dumps({"time": self.time.isoformat(), "start": self.start.isoformat(), "speed": self.speed,
                           "epoch": self.epoch, "running": self.running})

    @classmethod
    def from_json(cls, payload: bytes | str) -> ClockAnchor:
        """Parse an anchor; raises ``ValueError`` on anything else."""
        try:
            d = json.loads(payload)
            speed = None if d.get("speed") is None else float(d["speed"])
            epoch = None if d.get("epoch") is None else float(d["epoch"])
            return cls(time=_utc(d["time"]), start=_utc(d["start"]), speed=speed, epoch=epoch,
                       running=bool(d.get("running", True)))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"not an emulator clock anchor: {exc}") from None

    def clock(self) -> SimClock:
        """The :class:`SimClock` this anchor describes (raises ``ValueError`` for a manual clock)."""
        if self.speed is None or self.epoch is None:
            raise ValueError("the emulator runs on a manual clock: there is no wall-clock anchor to follow")
        return SimClock(self.start, self.speed, self.epoch)


# ---------------------------------------------------------------------------------------------
# clocks for a real home and for clock-jump tests
# ---------------------------------------------------------------------------------------------
class WallClock(SimClock):
    """Real time: calendar from the system clock, schedule from :func:`time.monotonic`.

    A :class:`~pems.live.clock.SimClock` at speed 1 anchored now, except that :meth:`now` reads the
    system clock. ``sleep_until(t)`` sleeps until ``monotonic() ≥ (t − start)``: targets are on the
    monotonic timeline anchored at construction, so an NTP step of the system clock does not move them.
    """

    def __init__(self) -> None:
        super().__init__(pd.Timestamp.now(tz="UTC"), speed=1.0)

    def now(self) -> pd.Timestamp:
        return pd.Timestamp.now(tz="UTC")


class JumpClock:
    """A clock whose calendar can be stepped (tests of the ``clock`` rule); monotonic time and
    ``sleep_until`` (on the base's timeline) are the base clock's."""

    def __init__(self, base: Any) -> None:
        self.base = base
        self.start = base.start
        self.speed = getattr(base, "speed", None)
        self.offset_s = 0.0

    def jump(self, seconds: float) -> None:
        """Step the calendar by ``seconds`` (negative: back); ``jump(-offset_s)`` heals it."""
        self.offset_s += float(seconds)

    def now(self) -> pd.Timestamp:
        return self.base.now() + pd.Timedelta(seconds=self.offset_s)

    def monotonic(self) -> float:
        return self.base.monotonic()

    def sleep_until(self, t: pd.Timestamp, interrupt: threading.Event | None = None) -> bool:
        return self.base.sleep_until(t, interrupt)

    def real_time(self) -> contextlib.AbstractContextManager[Any]:
        rt = getattr(self.base, "real_time", None)
        return rt() if rt is not None else contextlib.nullcontext()
