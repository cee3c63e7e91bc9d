"""The write guard: the only way a command reaches an inverter's holding registers.

Every write the adapter wants goes through :meth:`WriteGuard.submit`, which decides per register and
returns one :class:`~pems.live.devices.WriteRecord` per decision (the events log keeps them all):

1. **allow-list and range** — the register must be a writable holding register of the map and the
   value inside its ``range``/``values`` and valid for its encoding. One bad write refuses the whole
   command (a half-applied command, e.g. battery first without its stop SOC, is worse than none),
   and nothing reaches the socket.
2. **unchanged** — a value equal to the last one written (or read back from the device on connect)
   is skipped: flash cells of inverter settings wear, and a Growatt datalogger drops writes that
   come too fast.
3. **rate limit** — at most one command per ``min_interval_s`` (≥ 1 s) per device; a command that
   would send something sooner is refused with the time left (the loop sends a fresh one next
   step), or, with ``wait=True`` (the release to the safe state), waits it out.
4. **dry run** — every decision is made and recorded as in a live run, but nothing is sent: the
   records say ``dry run``, and the guard's picture of the device advances as if the writes had
   happened, so a dry run logs exactly what a live run would write.

Writes that pass are handed to the caller's ``send`` function in runs of consecutive addresses (in the
caller's order), so the adapter can use one Modbus "write multiple registers" request per run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import pandas as pd

from pems.live.devices import WriteRecord
from pems.live.registers import Register, RegisterMap

#: ``send(first register, words)`` writes the words of one or more consecutive registers starting at
#: the first register's address; it raises on failure.
SendFn = Callable[[Register, list[int]], None]


@dataclass(frozen=True)
class GuardSettings:
    """How cautious the guard is."""

    min_interval_s: float = 1.0  # [s] between two commands that send something (≥ 1)
    dry_run: bool = False  # record every decision, send nothing

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min_interval_s) and self.min_interval_s >= 1.0):
            raise ValueError(f"min_interval_s must be at least 1 s, got {self.min_interval_s}")


class WriteGuard:
    """Allow-list, range check, rate limit, unchanged-value skip and dry run for one device.

    Parameters
    ----------
    regmap
        The device's register map (its writable holding registers are the allow-list).
    device
        The device name written into every record (``"growatt"``).
    settings
        Rate limit and dry run.
    clock
        Monotonic seconds (for the rate limit); injectable for tests.
    now
        Wall-clock time for the records (tz-aware UTC).
    sleep
        How ``wait=True`` waits [s].
    """

    def __init__(self, regmap: RegisterMap, device: str = "growatt", settings: GuardSettings | None = None,
                 *, clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], pd.Timestamp] = lambda: pd.Timestamp.now(tz="UTC"),
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.regmap = regmap
        self.device = device
        self.settings = settings or GuardSettings()
        self._clock, self._now, self._sleep = clock, now, sleep
        self._known: dict[str, list[int]] = {}  # register → raw words last written or read back
        self._last_command: float | None = None  # clock() when the last command sent something

    @property
    def dry_run(self) -> bool:
        return self.settings.dry_run

    # ---------------------------------------------------------------- what the device holds
    def remember(self, values: dict[str, float]) -> None:
        """Record what the device holds (read back on connect), by register name [engineering units].

        Values that are not finite or not representable are forgotten instead: unknown registers
        are always written.
        """
        for name, value in values.items():
            reg = self.regmap.registers.get(name)
            if reg is None:
                continue
            try:
                self._known[name] = reg.encode(value)
            except ValueError:
                self._known.pop(name, None)

    def forget(self, names: Iterable[str] | None = None) -> None:
        """Drop what is known about some (default: all) registers, so they are written next time."""
        if names is None:
            self._known.clear()
        else:
            for n in names:
                self._known.pop(n, None)

    def known(self, name: str) -> float | None:
        """The value the guard believes the device holds [engineering units], or None."""
        words = self._known.get(name)
        return None if words is None else self.regmap[name].decode(words)

    def seconds_until_allowed(self) -> float:
        """How long until the next command may send [s] (0 when it may now)."""
        if self._last_command is None:
            return 0.0
        return max(0.0, self.settings.min_interval_s - (self._clock() - self._last_command))

    # ---------------------------------------------------------------- decisions
    def refusal(self, name: str, value: float) -> str | None:
        """Why ``name = value`` may not be written (None when it may): allow-list, range, encoding."""
        reg = self.regmap.registers.get(name)
        if reg is None:
            return f"{name!r} is not a register of map {self.regmap.name!r}, so not on the allow-list"
        return reg.refusal(value)

    def _record(self, t: pd.Timestamp, target: str, value: float, sent: bool, reason: str = "") -> WriteRecord:
        return WriteRecord(time=t, device=self.device, target=target, value=value, sent=sent, reason=reason)

    def submit(self, writes: Sequence[tuple[str, float]], send: SendFn, *, wait: bool = False) -> list[WriteRecord]:
        """Decide, and send what passes, for one command.

        Parameters
        ----------
        writes
            ``(register name, value)`` in the order they should reach the device [engineering units].
        send
            Writes one run of consecutive registers; raises on failure.
        wait
            Wait out the rate limit instead of refusing (for the release to the safe state).

        Returns
        -------
        list of WriteRecord
            One per write, in order: sent, or not with the reason.
        """
        t = self._now()
        # 1. allow-list and range, for the whole command before anything else
        problems = {i: self.refusal(name, value) for i, (name, value) in enumerate(writes)}
        if any(problems.values()):
            first = next(p for p in problems.values() if p)
            return [self._record(t, name, value, False, problems[i] or f"command refused: {first}")
                    for i, (name, value) in enumerate(writes)]
        # 2. unchanged values (compared as the raw words the register would hold)
        records: list[WriteRecord | None] = [None] * len(writes)
        todo: list[tuple[int, Register, float, list[int]]] = []
        pending: dict[str, list[int]] = {}  # a register written twice in one command: the last wins
        for i, (name, value) in enumerate(writes):
            reg = self.regmap[name]
            words = reg.encode(value)
            q = reg.decode(words)
            if pending.get(name, self._known.get(name)) == words:
                records[i] = self._record(t, name, q, False, "unchanged: the device already holds this value")
            else:
                todo.append((i, reg, q, words))
                pending[name] = words
        if todo:
            # 3. rate limit (only commands that send something count)
            left = self.seconds_until_allowed()
            if left > 0 and wait:
                self._sleep(left)
                t, left = self._now(), 0.0
            if left > 0:
                reason = (f"rate limit: {self.settings.min_interval_s - left:.2f} s since the last command, "
                          f"at least {self.settings.min_interval_s:g} s between commands (retry in {left:.2f} s)")
                for i, reg, q, _ in todo:
                    records[i] = self._record(t, reg.name, q, False, reason)
                return [r for r in records if r is not None]
            self._last_command = self._clock()
            # 4. dry run or send, in runs of consecutive addresses
            if self.dry_run:
                for i, reg, q, words in todo:
                    records[i] = self._record(t, reg.name, q, False, "dry-run: not sent")
                    self._known[reg.name] = words
            else:
                self._send_runs(t, todo, send, records)
        return [r for r in records if r is not None]

    def _send_runs(self, t: pd.Timestamp, todo: list[tuple[int, Register, float, list[int]]], send: SendFn,
                   records: list[WriteRecord | None]) -> None:
        runs: list[list[tuple[int, Register, float, list[int]]]] = []
        for item in todo:
            prev = runs[-1][-1] if runs else None
            if prev is not None and item[1].address == prev[1].address + prev[1].words:
                runs[-1].append(item)
            else:
                runs.append([item])
        failure: str | None = None
        for run in runs:
            if failure is None:
                try:
                    send(run[0][1], [w for item in run for w in item[3]])
                except Exception as exc:  # noqa: BLE001 - any transport error ends the command
                    failure = f"send failed: {exc.__class__.__name__}: {exc}"
                    # the device may or may not hold these now: write them again next time
                    self.forget(item[1].name for item in run)
                    for i, reg, q, _ in run:
                        records[i] = self._record(t, reg.name, q, False, failure)
                    continue
                for i, reg, q, words in run:
                    records[i] = self._record(t, reg.name, q, True)
                    self._known[reg.name] = words
            else:
                for i, reg, q, _ in run:
                    records[i] = self._record(t, reg.name, q, False, f"not sent: an earlier write failed ({failure})")
