"""The live loop's persistent state and its lock: a restart neither forgets nor fights.

Each control step the loop writes ``state.json`` in its state folder atomically (a temporary file,
fsync, ``os.replace``): the estimator's state, the disturbances it predicts with, the heating mode
and the last commands. A loop that starts again loads it if it is recent (saved less than
``max_age_s`` — two control steps by default — before now, by the loop's clock): the estimator
carries on where it stopped and the commands already in force are not sent again in another form.
Older (or unreadable) state is ignored: the loop starts fresh, in the safe state.

``lock`` (an ``flock`` on ``state.lock``, released by the kernel if the process dies) makes sure two
loops never command one home: the second one fails at once with :class:`StateLocked`.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, get_args

import pandas as pd
from pydantic import ConfigDict, TypeAdapter

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
BASELINE_FILE = "inverter_baseline.json"
LOCK_FILE = "state.lock"
VERSION = 1


class StateLocked(RuntimeError):
    """Another loop holds the state folder (and so commands the home)."""


@dataclass
class LoopState:
    """What survives a restart.

    Attributes
    ----------
    saved_at
        Calendar time of the save (UTC, ISO 8601), by the loop's clock.
    step_time
        Start of the control step the state belongs to (UTC, ISO 8601).
    rooms
        Room ids (a state of another house is not loaded).
    estimator_x
        The estimator's state after the step's correction (°C per node, SOC), or None.
    last_d
        The disturbances the estimator predicts the next step with, or None.
    mode
        ``"pems"`` (the loop commands) or ``"home"`` (the home's own logic).
    relays
        Room → relay commanded at the step's start.
    battery
        The last battery command (``BatteryCommand`` fields), or None.
    duty_residual_s
        Room → on-time owed to the next step by the relay rounding [s].
    """

    saved_at: str
    step_time: str
    rooms: list[str]
    estimator_x: list[float] | None = None
    last_d: list[float] | None = None
    mode: str = "home"
    relays: dict[str, bool] = field(default_factory=dict)
    battery: dict[str, Any] | None = None
    duty_residual_s: dict[str, float] = field(default_factory=dict)
    version: int = VERSION

    def battery_command(self) -> Any:
        """:attr:`battery` as a :class:`~pems.live.devices.BatteryCommand` (None: none); ValueError if it is not one."""
        from pems.live.devices import BatteryCommand, Priority

        if self.battery is None:
            return None
        b = dict(self.battery)
        try:
            b["until"] = pd.Timestamp(b["until"]) if b.get("until") else None
            cmd = BatteryCommand(**b)
        except TypeError as exc:
            raise ValueError(f"battery: {exc}") from None
        if cmd.priority not in get_args(Priority) or not (
                isinstance(cmd.power_pct, int | float) and isinstance(cmd.soc_limit, int | float)
                and isinstance(cmd.ac_charge, bool)):
            raise ValueError(f"battery: not a battery command: {self.battery!r}")
        return cmd


#: Validates a loaded state field by field ([] is not a mapping, "x" not a number, unknown keys refused).
LoopState.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]
_STATE = TypeAdapter(LoopState)


def write_atomic(path: Path, text: str, fsync: bool = True) -> None:
    """Write ``text`` so that a crash leaves the old file or the new one, never half of one (the
    folder is created). ``fsync=False``: a power cut may keep the old content (what can be lost)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    os.replace(tmp, path)


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, list):
        return [_clean(x) for x in v]
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    return v


class StateStore:
    """The state folder of one loop: ``state.json`` and ``state.lock``.

    Parameters
    ----------
    folder
        Created if missing.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / STATE_FILE
        self._lock_fd: int | None = None

    # ------------------------------------------------------------------ lock
    def lock(self) -> None:
        """Take the folder's lock; :class:`StateLocked` if another loop holds it."""
        if self._lock_fd is not None:
            return
        fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StateLocked(f"another PEMS loop (pid {holder}) holds {self.folder}: two loops must never "
                              f"command one home") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        """Release the lock (idempotent)."""
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def locked(self) -> bool:
        return self._lock_fd is not None

    # ------------------------------------------------------------------ state
    def save(self, state: LoopState) -> None:
        """Write atomically: a crash leaves the old file or the new one, never half of one."""
        write_atomic(self.path, json.dumps(_clean(asdict(state)), indent=1))

    def _keep_aside(self) -> str:
        """Move an unusable state file aside (never overwritten: it is evidence of what went wrong)."""
        aside = self.folder / f"state.unreadable-{pd.Timestamp.now(tz='UTC'):%Y%m%dT%H%M%S}.json"
        try:
            os.replace(self.path, aside)
        except OSError as exc:
            return f"could not keep it aside ({exc.strerror})"
        return f"kept aside as {aside.name}"

    # ------------------------------------------------------------------ the inverter's own settings
    def load_baseline(self) -> dict[str, float] | None:
        """The inverter's settings as the owner had them before PEMS first wrote (None: not recorded).

        Kept across restarts and never overwritten by the loop: a loop restarted after a crash would
        otherwise record its dead predecessor's settings as the owner's. Delete the file after
        changing the inverter's own settings, and the next start records them again.
        """
        p = self.folder / BASELINE_FILE
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
            if not (isinstance(d, dict) and all(isinstance(k, str) and isinstance(v, int | float) and not
                                                isinstance(v, bool) for k, v in d.items())):
                raise ValueError("not a mapping of register names to numbers")
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.error("%s unreadable (%s): the inverter is released to its safe state instead", p, exc)
            return None
        return {k: float(v) for k, v in d.items()}

    def save_baseline(self, settings: dict[str, float]) -> None:
        """Record the owner's settings (atomically; an existing record is kept)."""
        p = self.folder / BASELINE_FILE
        if not p.exists():
            write_atomic(p, json.dumps(settings, indent=1, sort_keys=True))

    def load(self, now: pd.Timestamp, max_age_s: float, rooms: tuple[str, ...]) -> tuple[LoopState | None, str]:
        """The saved state if usable at ``now``; else None. Returns (state, why) for the log."""
        if not self.path.exists():
            return None, "no saved state"
        try:
            d = json.loads(self.path.read_text(encoding="utf-8"))
            st = _STATE.validate_python(d)  # every field of the right type, or a ValidationError (a ValueError)
            saved = pd.Timestamp(st.saved_at)
            if saved.tzinfo is None:
                raise ValueError("saved_at has no time zone")
            st.battery_command()  # its fields, and their types
        except (OSError, ValueError, TypeError) as exc:
            return None, f"saved state unreadable ({type(exc).__name__}); {self._keep_aside()}; starting fresh"
        if st.version != VERSION:
            return None, f"saved state has version {st.version}, expected {VERSION}"
        if tuple(st.rooms) != tuple(rooms):
            return None, "saved state belongs to other rooms"
        age = (now - saved).total_seconds()
        if not 0 <= age < max_age_s:
            return None, f"saved state is {age:.0f} s old (usable below {max_age_s:.0f} s); starting fresh"
        return st, f"resumed state saved {age:.0f} s ago"
