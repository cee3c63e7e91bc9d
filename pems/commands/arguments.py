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
    from pems.controllers.registry import PEERS

    hint = " (EMHASS runs after `make bench-peers`)" if name in PEERS and not live else ""
    raise InputError(source, key, f"unknown controller {name!r}; expected one of {', '.join(names)}{hint}")


#: The outputs the running command checked (folders and files), and the folders among them (or
#: their outermost missing parents) that did not exist yet: see :func:`remove_unused_folders`.
_OUTPUTS: list[tuple[Path, str]] = []
_NEW_FOLDERS: list[Path] = []


def forget_outputs() -> None:
    """Start a command: no outputs checked yet."""
    _OUTPUTS.clear()
    _NEW_FOLDERS.clear()


def _probe(folder: Path, path: Path, key: str) -> None:
    """Create (and remove) a file in ``folder``: permissions, read-only file systems and places like
    /proc refuse it now, not after the work (``os.access`` says yes to root, and on a read-only mount)."""
    import tempfile

    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".pems-write-test-"):
            pass
    except OSError as exc:
        raise InputError(str(path), key, f"cannot write into {folder}: {exc.strerror or exc}") from None


def _writable(path: Path, key: str) -> None:
    """Refuse a folder (``path``, existing or to be made) under a file or where this user cannot write."""
    parent = path
    top = None  # the outermost folder the command will create
    while not parent.exists():
        if parent.parent == parent:
            break
        top, parent = parent, parent.parent
    if parent.exists() and not parent.is_dir():
        raise InputError(str(path), key, f"{parent} is a file, so nothing can be written under it")
    if parent.exists():
        _probe(parent, path, key)
    if top is not None:
        _NEW_FOLDERS.append(top.absolute())


def written_output(filename: str | os.PathLike | None, message: str = "") -> tuple[Path, str] | None:
    """The checked output (and the flag that named it) that ``filename``, or a path in ``message``
    when there is no file name, lies in; ``None`` when it is none of them."""
    for out, key in _OUTPUTS:
        if filename is not None:
            f = Path(os.fsdecode(filename)).absolute()
            if f == out or out in f.parents:
                return out, key
        elif message and str(out) in message:
            return out, key
    return None


def remove_unused_folders() -> None:
    """A command that ends with bad input (2) or a service that did not answer (3) leaves nothing
    behind: the folders it created itself are removed again when no file was written into them."""
    import shutil

    for top in reversed(_NEW_FOLDERS):
        try:
            if top.is_dir() and not top.is_symlink() and not any(not p.is_dir() for p in top.rglob("*")):
                shutil.rmtree(top)
        except OSError:
            pass  # only tidying up


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
    _OUTPUTS.append((path.absolute(), key))
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
    if path.exists():
        try:
            with open(path, "r+b"):  # opened for writing, not changed
                pass
        except OSError as exc:
            raise InputError(str(path), key, f"exists and cannot be written ({exc.strerror or exc})") from None
    _OUTPUTS.append((path.absolute(), key))
    for flag, given in (inputs or {}).items():
        if given is not None and Path(given).is_file() and _same(path, Path(given)):
            raise InputError(str(path), key, f"is the input given as {flag}; write the output to another file")
    return path
