"""Growatt hybrid inverter over Modbus TCP: measurements in, battery commands out.

:class:`GrowattModbus` implements the :class:`~pems.live.devices.Inverter` protocol with pymodbus's
synchronous TCP client (pinned in ``pyproject.toml``: its API moves between minor versions). It
talks to the inverter directly (a Modbus TCP port) or through an RS485 gateway (an Elfin EW11 or
similar) — both are Modbus TCP on the wire. The registers come from a map file
(:mod:`pems.live.registers`): ``growatt-sph`` (1000 range) or ``growatt-mod-xh`` (3000 range).

How a :class:`~pems.live.devices.BatteryCommand` becomes registers
-------------------------------------------------------------------
Growatt's remote control is its *time slots*: battery first or grid first hold only inside an
enabled slot of the inverter's local clock; outside every slot it runs load first. A command

- ``battery_first``: power rate, stop SOC and AC charge, then slot 1 of battery first from *now* (or
  the start of the slot already running) to ``until`` (rounded up to the minute; 23:59 if ``until``
  is on a later day, as a slot cannot pass midnight), enabled; every other slot disabled; the
  priority register (SPH) to battery first.
- ``grid_first``: the same with the grid-first rate, stop SOC and slots; AC charge off.
- ``load_first``: priority to load first, every slot disabled, AC charge off (= :meth:`release`).

A slot already running in the same mode keeps its start time, so the loop extending a command each
step rewrites only the slot's end. The slot repeats daily on the inverter: should the loop die, the
watchdog's release (or the next command) clears it.

Failures: a read that fails returns ``InverterReadings(ok=False)`` with nan values — never an
exception — and drops the connection; the next read reconnects (no more often than
``reconnect_backoff_s``). On every (re)connect the holding registers are read back, so the guard
knows what the device holds and skips unchanged values.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ModbusException

from pems.live.devices import BatteryCommand, InverterReadings, Priority, WriteRecord
from pems.live.registers import (
    END_OF_DAY_MIN,
    MEASUREMENTS,
    PRIORITY_CODES,
    PRIORITY_NAMES,
    Register,
    RegisterMap,
    Table,
    decode_control,
    decode_hm,
    decode_slot_start,
    encode_hm,
    encode_slot_start,
    load_map,
)
from pems.live.write_guard import GuardSettings, WriteGuard

log = logging.getLogger(__name__)


class ModbusReadError(ConnectionError):
    """A read request failed (no connection, timeout, or an exception response)."""


def _minute_of_day(t: pd.Timestamp) -> int:
    return t.hour * 60 + t.minute


class GrowattModbus:
    """A Growatt hybrid inverter on Modbus TCP (the ``Inverter`` protocol).

    Parameters
    ----------
    host, port
        The inverter's (or its RS485 gateway's) Modbus TCP address.
    device_id
        Modbus unit id (the inverter's RS485 address; 1 by default).
    map
        A built-in register map (``"growatt-sph"``, ``"growatt-mod-xh"``), a path to a map TOML file,
        or a loaded :class:`~pems.live.registers.RegisterMap`.
    min_interval_s
        At least this long between two commands that write something [s] (≥ 1).
    dry_run
        Decide and record every write, send none.
    timeout
        Per request [s].
    retries
        pymodbus retries per request (kept low: a dead link should fail fast, the loop retries).
    timezone
        The inverter's clock (slot times are local to it), e.g. ``"Europe/Prague"``.
    default_slot_s
        Slot length for a battery/grid-first command without ``until`` [s].
    reconnect_backoff_s
        After a failure, do not try to reconnect more often than this [s].
    request_gap_s
        Pause between the Modbus requests of one command [s] (some dataloggers drop fast writes).
    device
        The device name in the write records.
    clock, now, sleep
        Injectable monotonic clock [s], UTC wall clock and sleep (for tests).

    Notes
    -----
    One adapter per inverter, used from one thread (the live loop's): the pymodbus sync client and
    the guard's state are not shared between threads.
    """

    def __init__(self, host: str, port: int = 502, device_id: int = 1, map: str | Path | RegisterMap = "growatt-sph",  # noqa: A002
                 *, min_interval_s: float = 1.0, dry_run: bool = False, timeout: float = 3.0, retries: int = 0,
                 timezone: str = "UTC", default_slot_s: float = 3600.0, reconnect_backoff_s: float = 5.0,
                 request_gap_s: float = 0.0, device: str = "growatt",
                 clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], pd.Timestamp] = lambda: pd.Timestamp.now(tz="UTC"),
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.host, self.port, self.device_id = host, int(port), int(device_id)
        self.regmap = load_map(map)
        self.timezone = timezone
        self.default_slot_s = float(default_slot_s)
        self.reconnect_backoff_s = float(reconnect_backoff_s)
        self.request_gap_s = float(request_gap_s)
        self._clock, self._now, self._sleep = clock, now, sleep
        self.clock_offset_s = 0.0  # the inverter's clock − true local time [s], as slots are written
        self.guard = WriteGuard(self.regmap, device, GuardSettings(min_interval_s, dry_run),
                                clock=clock, now=now, sleep=sleep)
        self._client = ModbusTcpClient(host, port=self.port, timeout=timeout, retries=retries,
                                       reconnect_delay=0.0)
        self._connected = False
        self._last_attempt: float | None = None  # clock() of the last failed connect/read
        self._last_request: float | None = None  # clock() of the last write request
        self.last_error: str = ""
        self._warned: str | None = None  # the connect error last warned about (warned once, not per retry)
        self.baseline: dict[str, float] | None = None  # the owner's settings, restored by release()

    # ------------------------------------------------------------------ connection
    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def dry_run(self) -> bool:
        return self.guard.dry_run

    def connect(self) -> None:
        """Open the connection and read back the holding registers (never raises; see ``connected``)."""
        self._try_connect(force=True)

    def close(self) -> None:
        """Close the connection (a later read reconnects)."""
        self._client.close()
        self._connected = False

    def _fail(self, exc: Exception | str) -> None:
        self.last_error = str(exc)
        self._client.close()
        self._connected = False
        self._last_attempt = self._clock()

    def _try_connect(self, force: bool = False) -> bool:
        if self._connected:
            return True
        if (not force and self._last_attempt is not None
                and self._clock() - self._last_attempt < self.reconnect_backoff_s):
            return False
        try:
            ok = bool(self._client.connect())
        except Exception as exc:  # noqa: BLE001 - pymodbus raises various errors on a dead link
            ok, self.last_error = False, str(exc)
        if not ok:
            self._fail(self.last_error or f"cannot connect to {self.host}:{self.port}")
            # once per distinct error, not at every retry (a gateway that is gone stays gone for a while)
            if self.last_error != self._warned:
                self._warned = self.last_error
                log.warning("growatt: cannot connect to %s:%s (%s); retrying quietly", self.host, self.port,
                            self.last_error)
            return False
        if self._warned is not None:
            log.warning("growatt: connected to %s:%s again", self.host, self.port)
            self._warned = None
        self._connected = True
        # What the device holds now is what the guard compares against: the inverter may have been
        # restarted or set by hand while we were away.
        self.guard.forget()
        try:
            self.guard.remember(self._read_table("holding"))
        except ModbusReadError as exc:
            self._fail(exc)
            return False
        log.info("growatt: connected to %s:%s (map %s)", self.host, self.port, self.regmap.name)
        return True

    # ------------------------------------------------------------------ reads
    def _read_block(self, table: Table, start: int, count: int) -> list[int]:
        try:
            if table == "input":
                rr = self._client.read_input_registers(start, count=count, device_id=self.device_id)
            else:
                rr = self._client.read_holding_registers(start, count=count, device_id=self.device_id)
        except (ModbusException, OSError) as exc:
            raise ModbusReadError(f"{table} {start}+{count}: {exc}") from exc
        if rr.isError():
            raise ModbusReadError(f"{table} {start}+{count}: {rr}")
        if len(rr.registers) < count:
            raise ModbusReadError(f"{table} {start}+{count}: short answer ({len(rr.registers)} registers)")
        return list(rr.registers[:count])

    def _read_table(self, table: Table) -> dict[str, float]:
        out: dict[str, float] = {}
        for start, count in self.regmap.blocks(table):
            out.update(self.regmap.decode_block(table, start, self._read_block(table, start, count)))
        return out

    def read_values(self, table: Table = "input") -> dict[str, float]:
        """Every register of one table by name [engineering units]; raises :class:`ModbusReadError`.

        ``read()`` is what the loop uses; this is for diagnostics and extra registers (``T_bat``…).
        """
        if not self._try_connect(force=True):
            raise ModbusReadError(self.last_error or "not connected")
        try:
            return self._read_table(table)
        except ModbusReadError as exc:
            self._fail(exc)
            raise

    def read(self) -> InverterReadings:
        """The inverter's measurements in SI units, and the priority in force.

        Never raises: a failed read gives ``ok=False`` with nan values and the next call reconnects.
        """
        t = self._now()
        if not self._try_connect():
            return self._failed(t)
        try:
            values = self._read_table("input")
            holding = self._read_table("holding")
        except ModbusReadError as exc:
            log.warning("growatt: read failed (%s)", exc)
            self._fail(exc)
            return self._failed(t)
        offset = self._clock_offset(holding, t)
        return InverterReadings(time=t, **{m: values[m] for m in MEASUREMENTS},
                                priority=self._priority(holding, t), ok=True, changed=self._refresh(holding),
                                clock_offset_s=offset)

    def _clock_offset(self, holding: dict[str, float], t: pd.Timestamp) -> float:
        """The inverter's clock against the true local time at ``t`` [s] (nan: the map has no clock).

        Its slots are local times on its own clock: one that was never switched to summer time, or
        drifted, would run a slot an hour (or minutes) off. From 90 s off, the slots are written in the
        inverter's time (:attr:`clock_offset_s`, whole minutes), and the loop reports it."""
        try:
            inv = pd.Timestamp(year=int(holding["clock_year"]), month=int(holding["clock_month"]),
                               day=int(holding["clock_day"]), hour=int(holding["clock_hour"]),
                               minute=int(holding["clock_minute"]), second=int(holding["clock_second"]))
        except (KeyError, ValueError, TypeError):
            return math.nan  # no clock in the map, or a date the clock cannot hold (not yet set)
        offset = (inv - t.tz_convert(self.timezone).tz_localize(None)).total_seconds()
        self.clock_offset_s = 60.0 * round(offset / 60.0) if abs(offset) >= 90.0 else 0.0
        return offset

    def _inverter_time(self, t: pd.Timestamp) -> pd.Timestamp:
        """``t`` on the inverter's clock (local, its measured offset applied)."""
        return t.tz_convert(self.timezone) + pd.Timedelta(seconds=self.clock_offset_s)

    def _refresh(self, holding: dict[str, float]) -> tuple[str, ...]:
        """Bring the guard's picture of the device up to date from a regular read; the settings that
        changed without PEMS writing them (the Growatt app, a datalogger reboot), as "name: old → new".

        The guard skips values it believes the device holds: a picture refreshed only on reconnect
        would let a change made in the app pass for "unchanged", and a command would silently not
        take effect.
        """
        if self.dry_run:
            # nothing was written: the device differs from the plan because of that, not because of an
            # app; the picture is the device's (a dry run then logs what a real run would write now)
            self.guard.remember(holding)
            return ()
        changed = []
        for name, value in holding.items():
            if not self.regmap[name].writable:
                continue  # the clock and other read-only registers are no setting of the owner's
            old = self.guard.known(name)
            if old is not None and math.isfinite(value) and value != old:
                changed.append(f"{name}: {old:g} → {value:g}")
        self.guard.remember(holding)
        return tuple(changed)

    @staticmethod
    def _failed(t: pd.Timestamp) -> InverterReadings:
        nan = float("nan")
        return InverterReadings(time=t, **{m: nan for m in MEASUREMENTS}, priority=None, ok=False)

    def _priority(self, holding: dict[str, float], t: pd.Timestamp) -> Priority | None:
        """SPH: the priority register; TL-XH (none): the priority of the slot in force now."""
        if "priority" in self.regmap:
            return PRIORITY_NAMES.get(int(holding.get("priority", 0)))
        local = self._inverter_time(t)
        return decode_control(self.regmap, holding).mode_at(local.hour * 60 + local.minute + local.second / 60)

    # ------------------------------------------------------------------ commands
    def plan(self, cmd: BatteryCommand, now: pd.Timestamp | None = None) -> list[tuple[str, float]]:
        """The register writes that realise ``cmd`` at ``now`` [engineering units], in sending order.

        Pure apart from reading what the guard knows of the device (to keep a running slot's start).
        Values are not checked here: the guard refuses what is out of range.
        """
        now = self._now() if now is None else now
        mode = cmd.priority
        if mode not in PRIORITY_CODES:
            # An unknown priority can only be a bug upstream; refuse it through the guard (an
            # invalid priority value) rather than guessing.
            return [("priority", float("nan"))]
        until = cmd.until
        if until is not None and pd.Timestamp(until).tzinfo is None:
            until = pd.Timestamp(until).tz_localize("UTC")  # the interface's times are UTC
        if mode != "load_first":
            if until is None:
                until = now + pd.Timedelta(seconds=self.default_slot_s)
            elif until <= now:
                mode = "load_first"  # a slot that already ended: nothing left to do but the safe state
        if mode == "load_first":
            return self._plan_release()
        local_now = self._inverter_time(now)  # slots are written in the inverter's own time
        local_until = self._inverter_time(pd.Timestamp(until))
        if local_until.normalize() > local_now.normalize():
            end_min = END_OF_DAY_MIN  # slots cannot pass midnight; the loop re-commands after it
        else:
            end_min = min(END_OF_DAY_MIN, math.ceil((local_until - local_until.normalize()).total_seconds() / 60))
        start_min = self._slot_start(mode, _minute_of_day(local_now))
        end_min = max(end_min, start_min)
        first = "bat_first" if mode == "battery_first" else "grid_first"
        writes: list[tuple[str, float]] = [
            (f"{first}_rate", round(cmd.power_pct) if math.isfinite(cmd.power_pct) else cmd.power_pct),
            (f"{first}_stop_soc", round(cmd.soc_limit * 100) if math.isfinite(cmd.soc_limit) else cmd.soc_limit),
            ("ac_charge", float(bool(cmd.ac_charge)) if mode == "battery_first" else 0.0),
        ]
        sh, sm = divmod(start_min, 60)
        eh, em = divmod(end_min, 60)
        if self.regmap.scheme == "sph":
            writes += [(f"{first}_slot1_start", encode_hm(sh, sm)), (f"{first}_slot1_end", encode_hm(eh, em)),
                       (f"{first}_slot1_enable", 1.0)]
            writes += [(n, 0.0) for n in self._sph_enables() if n != f"{first}_slot1_enable"]
            writes.append(("priority", float(PRIORITY_CODES[mode])))
        else:
            # the end first: the start word carries the on-bit, so the slot switches on complete
            writes += [("slot1_end", encode_hm(eh, em)), ("slot1_start", encode_slot_start(True, mode, sh, sm))]
            writes += self._tlxh_disable(skip=1)
        return writes

    def _sph_enables(self) -> list[str]:
        return [f"{p}_first_slot{k}_enable" for p, mode in (("bat", "battery_first"), ("grid", "grid_first"))
                for k in range(1, self.regmap.slot_count(mode) + 1)]  # type: ignore[arg-type]

    def _tlxh_disable(self, skip: int = 0) -> list[tuple[str, float]]:
        """Clear the on-bit of every TL-XH slot (but ``skip``), keeping the times the device holds."""
        out = []
        for k in range(1, self.regmap.slot_count() + 1):
            if k != skip:
                word = self.guard.known(f"slot{k}_start")
                out.append((f"slot{k}_start", float(int(word) & 0x7FFF) if word is not None else 0.0))
        return out

    def _plan_release(self) -> list[tuple[str, float]]:
        if self.regmap.scheme == "sph":
            # the priority first: the safe state as soon as possible
            return [("priority", 0.0), *[(n, 0.0) for n in self._sph_enables()], ("ac_charge", 0.0)]
        return [*self._tlxh_disable(), ("ac_charge", 0.0)]

    def _slot_start(self, mode: Priority, now_min: int) -> int:
        """Keep the start of slot 1 if it already runs in ``mode`` (so only its end is rewritten)."""
        if self.regmap.scheme == "sph":
            prefix = "bat_first" if mode == "battery_first" else "grid_first"
            start, enabled = self.guard.known(f"{prefix}_slot1_start"), self.guard.known(f"{prefix}_slot1_enable")
            if start is None or not enabled:
                return now_min
            h, m = decode_hm(int(start))
        else:
            word = self.guard.known("slot1_start")
            if word is None:
                return now_min
            on, code, h, m = decode_slot_start(int(word))
            if not on or PRIORITY_NAMES.get(code) != mode:
                return now_min
        return h * 60 + m if h * 60 + m <= now_min else now_min

    def command(self, cmd: BatteryCommand) -> list[WriteRecord]:
        """Write the registers that realise ``cmd`` (guarded); one record per register decision."""
        return self._submit(self.plan(cmd), wait=False)

    def release(self) -> list[WriteRecord]:
        """The owner's own settings again (:attr:`baseline`: rates, stop SOCs, AC charge, slots and
        priority as they were before PEMS wrote anything); without a baseline, load first, every slot
        disabled, AC charge off: the safe state.

        Waits out the rate limit (at most ``min_interval_s``) rather than being refused.
        """
        return self._submit(self._plan_restore() if self.baseline else self._plan_release(), wait=True)

    def settings(self) -> dict[str, float] | None:
        """The writable registers as the device holds them [engineering units] (None: not all known)."""
        if not self.dry_run and not self._try_connect(force=True):
            return None
        names = [r.name for r in self.regmap.writable()]
        values = {n: self.guard.known(n) for n in names}
        if any(v is None for v in values.values()):
            return None
        return {n: float(v) for n, v in values.items()}  # type: ignore[arg-type]

    def _plan_restore(self) -> list[tuple[str, float]]:
        """The baseline's writes: the safe state first (priority, enables, AC charge off), then the
        owner's values, their enables and priority last, so that no mix of PEMS's slot times and
        the owner's enables is ever in force."""
        assert self.baseline is not None
        base = {n: v for n, v in self.baseline.items() if n in self.regmap and self.regmap[n].writable}
        last = [n for n in base if n.endswith("_enable") or n == "priority" or n == "ac_charge"]
        if self.regmap.scheme != "sph":  # TL-XH: the on-bit is in the slot's start word
            last += [n for n in base if n.startswith("slot") and n.endswith("_start")]
        out = self._plan_release()
        out += [(n, v) for n, v in base.items() if n not in last]
        out += [(n, base[n]) for n in last]
        return out

    def _submit(self, writes: list[tuple[str, float]], wait: bool) -> list[WriteRecord]:
        if not self.dry_run and not self._try_connect(force=True):
            t = self._now()
            reason = f"not connected ({self.last_error})"
            # still refuse what the guard would refuse, so the log says the real reason
            return [WriteRecord(t, self.guard.device, n, v, False, self.guard.refusal(n, v) or reason)
                    for n, v in writes]
        return self.guard.submit(writes, self._send, wait=wait)

    def _send(self, first: Register, words: list[int]) -> None:
        """One write request: a single register (function 06) or a run of them (function 16)."""
        if self.request_gap_s > 0 and self._last_request is not None:
            left = self.request_gap_s - (self._clock() - self._last_request)
            if left > 0:
                self._sleep(left)
        self._last_request = self._clock()
        try:
            if len(words) == 1:
                rr = self._client.write_register(first.address, words[0], device_id=self.device_id)
            else:
                rr = self._client.write_registers(first.address, words, device_id=self.device_id)
        except (ModbusException, OSError) as exc:
            self._fail(exc)
            raise ConnectionError(f"holding {first.address}: {exc}") from exc
        if rr.isError():
            raise ConnectionError(f"holding {first.address}: {rr}")

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> GrowattModbus:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
