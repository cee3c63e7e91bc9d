"""Reading and checking the flags of the ``pems`` commands.

Every check raises :class:`~pems.errors.InputError` naming the flag (source ``command line``) or the
file, the key and what was expected; the command line turns it into one line and exit code 2. The
output checks run before any work, so that a long run never ends on a path it cannot write to, and
nothing a user gave (an input file) is ever overwritten.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pems.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

#: Where a problem with a flag is reported.
CLI = "command line"


def parse_time(text: str | None, key: str) -> pd.Timestamp | None:
    """An ISO 8601 time of a flag as a UTC timestamp (UTC where it has no zone); ``None`` stays ``None``."""
    import warnings

    import pandas as pd

    if text is None:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pandas' format guesses: the error below says it once
            t = pd.Timestamp(text)
    except (ValueError, TypeError):
        raise InputError(CLI, key, f"cannot read {text!r} as a time; expected ISO 8601, "
                                   "e.g. 2024-01-22T06:00Z") from None
    if t is pd.NaT:
        raise InputError(CLI, key, f"cannot read {text!r} as a time; expected ISO 8601, e.g. 2024-01-22T06:00Z")
    return t.tz_localize("UTC") if t.tz is None else t.tz_convert("UTC")


def time_range(start: pd.Timestamp | None, end: pd.Timestamp | None) -> None:
    """Refuse ``--end`` at or before ``--start``."""
    if start is not None and end is not None and end <= start:
        raise InputError(CLI, "--end", f"{end:%Y-%m-%d %H:%M} UTC is not after --start "
                                       f"({start:%Y-%m-%d %H:%M} UTC)")


def model_step(minutes: float, key: str = "--step-minutes") -> pd.Timedelta:
    """The model step of ``--step-minutes``: a whole number of minutes (1…240) that divides the day."""
    import pandas as pd

    if not (math.isfinite(minutes) and minutes == int(minutes) and 1 <= minutes <= 240
            and 1440 % int(minutes) == 0):
        raise InputError(CLI, key, f"{minutes:g} min: expected a whole number of minutes from 1 to 240 "
                                   "that divides the day (e.g. 5, 10, 15, 30, 60)")
    return pd.Timedelta(minutes=int(minutes))


def positive(value: float | None, key: str, upper: float | None = None) -> None:
    """Refuse a value that is not a finite positive number (or is above ``upper``); ``None`` passes."""
    if value is None:
        return
    if not (math.isfinite(value) and value > 0) or (upper is not None and value > upper):
        limit = f" and at most {upper:g}" if upper is not None else ""
        raise InputError(CLI, key, f"expected a positive number{limit}, got {value:g}")


def parse_hostport(text: str, key: str = "--mqtt", default_port: int = 1883) -> tuple[str, int]:
    """``HOST:PORT`` (or ``HOST``, or ``[IPv6]:PORT``) → (host, port)."""
    s = text.strip()
    host, port_text = s, None
    if s.startswith("["):  # [::1]:1883
        close = s.find("]")
        if close < 0:
            raise InputError(CLI, key, f"cannot read {text!r} as HOST:PORT")
        host, rest = s[1:close], s[close + 1:]
        port_text = rest[1:] if rest.startswith(":") else (None if not rest else "")
    elif s.count(":") == 1:
        host, port_text = s.split(":")
    if not host or port_text == "":
        raise InputError(CLI, key, f"cannot read {text!r} as HOST:PORT")
    port = default_port
    if port_text is not None:
        try:
            port = int(port_text)
        except ValueError:
            raise InputError(CLI, key, f"port {port_text!r} is not a number") from None
    if not 0 < port < 65536:
        raise InputError(CLI, key, f"port {port} is outside 1…65535")
    return host, port


def check_controller(name: str, source: str, key: str, live: bool = False, learning: bool = True) -> str:
    """A controller's name, checked against those that can run (``live``: against a home in real time)."""
    from pems.controllers import available
    from pems.controllers.registry import NOT_LIVE

    names = available(peers=not live, learning=learning, live=live)
    if name in names:
        return name
    if live and name in NOT_LIVE:
        raise InputError(source, key, f"{name!r} cannot run live: {NOT_LIVE[name]}; expected one of {', '.join(names)}")
    hint = " (EMHASS runs after `make bench-peers`)" if name == "emhass" and not live else ""
    raise InputError(source, key, f"unknown controller {name!r}; expected one of {', '.join(names)}{hint}")


def _writable(path: Path, key: str) -> None:
    """Refuse a folder (``path``, existing or to be made) under a file or where this user cannot write."""
    parent = path
    while not parent.exists():
        if parent.parent == parent:
            break
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise InputError(str(path), key, f"{parent} is a file, so nothing can be written under it")
    if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(str(path), key, f"{parent} is not writable")


def _same(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def output_dir(text: str | Path, key: str = "--out", writes: Iterable[str] = (),
               inputs: Mapping[str, str | Path | None] | None = None) -> Path:
    """The folder a command writes into, checked before the work starts.

    Parameters
    ----------
    text
        The folder (it may not exist yet; it is not created here).
    key
        The flag that named it.
    writes
        The files the command writes into it.
    inputs
        The user's input files by flag or key: none of them may be one of those outputs.
    """
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise InputError(str(path), key, "is a file; expected a folder to write into (the file is left as it is)")
    _writable(path, key)
    for flag, given in (inputs or {}).items():
        if given is None or not Path(given).is_file():
            continue
        for name in writes:
            if _same(path / name, Path(given)):
                raise InputError(str(path), key, f"would overwrite {name}, given as {flag}; "
                                                 "write the output to another folder")
    return path


def output_file(text: str | Path, key: str = "--out", suffix: str = ".parquet",
                inputs: Mapping[str, str | Path | None] | None = None) -> Path:
    """A file a command writes (replaced if it exists), checked before the work starts.

    It must end in ``suffix``, must not be a folder and must not be one of the ``inputs``.
    """
    path = Path(text)
    if path.suffix.lower() != suffix:
        raise InputError(str(path), key, f"expected a {suffix} file name (nothing was written)")
    if path.is_dir():
        raise InputError(str(path), key, f"is a folder; expected a {suffix} file")
    _writable(path.parent, key)
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError(str(path), key, "exists and is not writable")
    for flag, given in (inputs or {}).items():
        if given is not None and Path(given).is_file() and _same(path, Path(given)):
            raise InputError(str(path), key, f"is the input given as {flag}; write the output to another file")
    return path
