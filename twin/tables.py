"""Reading time-indexed CSV files (weather, prices, load) with clear errors."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pems.errors import InputError


def named_csv(value: str, base_dir: Path | None, builtins, file: str | Path, key: str, what: str,
              must_exist: bool = True) -> str | Path:
    """A built-in ``what`` (one of ``builtins``) as its name, anything else as the CSV file it names
    (relative to ``base_dir``), checked: an unknown name or (``must_exist``) a missing file is an
    :class:`InputError` of ``file`` (the scenario or configuration that named it) and ``key``."""
    if value in builtins:
        return value
    path = Path(value)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if path.suffix.lower() not in (".csv", ".gz") and not path.exists():
        raise InputError(file, key, f"unknown {what} {value!r}; expected one of {', '.join(builtins)} "
                                    "or a path to a .csv file")
    if must_exist and not path.is_file():
        raise InputError(file, key, f"{path}: file not found")
    return path


def resolve_csv(spec: str, base_dir: Path | None, key: str, builtins) -> Path:
    """The CSV file ``spec`` names (not one of ``builtins``), checked as :func:`named_csv` checks it;
    without the scenario or configuration that named it, errors name the value itself."""
    return Path(named_csv(spec, base_dir, builtins, spec, key, "built-in name"))


def read_time_csv(path: Path, required: Sequence[str], optional: Sequence[str] = ()) -> pd.DataFrame:
    """Read a CSV with a ``time`` column into a UTC-indexed frame of numeric columns.

    Times without a zone are read as UTC. Rows with an unparsable time raise, as do non-numeric
    values and a time given twice (which of two values holds is not ours to guess). Missing values
    stay NaN (callers interpolate or hold).

    Raises
    ------
    InputError
        Unreadable file, no ``time`` column, a required column missing, bad or duplicate times, bad values.
    """
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise InputError(path, "", f"not a readable CSV file ({exc.__class__.__name__}: {exc})") from None
    cols = [c.strip() for c in df.columns]
    df.columns = cols
    if "time" not in cols:
        raise InputError(path, "time", f"missing column 'time'; expected columns time, {', '.join(required)}"
                                       f"{' [, ' + ', '.join(optional) + ']' if optional else ''}")
    missing = [c for c in required if c not in cols]
    if missing:
        raise InputError(path, missing[0], f"missing column {missing[0]!r}; expected columns time, "
                                           f"{', '.join(required)}")
    try:
        t = pd.to_datetime(df["time"], utc=True, format="ISO8601")
    except (ValueError, TypeError):
        with warnings.catch_warnings():  # pandas' format guesses: the one line below says it all
            warnings.simplefilter("ignore")
            t = pd.to_datetime(df["time"], utc=True, errors="coerce")
        bad = int(t.isna().idxmax()) if t.isna().any() else 0
        raise InputError(path, "time", f"row {bad + 2}: cannot read {df['time'].iloc[bad]!r} as an ISO 8601 time") from None
    keep = [c for c in list(required) + list(optional) if c in cols]
    out = pd.DataFrame(index=pd.DatetimeIndex(t, name="time"))
    for c in keep:
        v = pd.to_numeric(df[c], errors="coerce")
        bad = v.isna() & df[c].notna()
        if bad.any():
            i = int(bad.to_numpy().nonzero()[0][0])
            raise InputError(path, c, f"row {i + 2}: {df[c].iloc[i]!r} is not a number")
        out[c] = v.to_numpy(dtype=float)
    twice = out.index.duplicated(keep=False)
    if twice.any():
        rows = (twice.nonzero()[0] + 2).tolist()
        first, n = out.index[twice][0], int(out.index[twice].nunique())
        more = f"; {n} times are given more than once" if n > 1 else ""
        raise InputError(path, "time", f"{first:%Y-%m-%d %H:%M} UTC is given more than once (rows "
                                       f"{', '.join(map(str, rows[:4]))}{', …' if len(rows) > 4 else ''}{more}); "
                                       "expected one row per time")
    out = out.sort_index()
    if len(out) < 2:
        raise InputError(path, "time", "needs at least two rows")
    return out
