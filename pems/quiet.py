"""Keep the libraries' chatter off a user's terminal.

The command prints its results on stdout and one line per problem on stderr; warnings of the
libraries underneath (matplotlib's, numpy's ``RuntimeWarning`` on an all-empty slice, pandas'
format guesses) mean nothing to a user and are silenced here, once, when a command starts. The
tests keep them (pytest installs its own filters). What PEMS itself logs at warning level and
above reaches stderr as ``pems: warning: …`` lines.
"""

from __future__ import annotations

import logging
import warnings


class _OneLine(logging.Formatter):
    """``pems: warning: message``: the shape of the command's other lines on stderr."""

    def format(self, record: logging.LogRecord) -> str:
        return f"pems: {record.levelname.lower()}: {record.getMessage()}"


class _Json(logging.Formatter):
    """One JSON object a line (``--log-json``): for journald's and log shippers' structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        import json
        from datetime import datetime, timezone

        out = {"time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
               "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


#: What the command line asked for (``--log-level``, ``--log-json``): wins over a command's own choice.
_ASKED: dict[str, object] = {}


def ask(level: str | None = None, json_lines: bool = False) -> None:
    """The command line's ``--log-level`` (a name: ``debug``, ``info``, ``warning``, ``error``) and
    ``--log-json``, kept for :func:`command_logging`."""
    _ASKED.clear()
    if level is not None:
        _ASKED["level"] = getattr(logging, level.upper())
    if json_lines:
        _ASKED["json"] = True


class _Stderr(logging.StreamHandler):
    """A handler on whatever ``sys.stderr`` is when a record comes (tests swap it)."""

    @property
    def stream(self):  # noqa: D102
        import sys

        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def command_logging(level: int = logging.WARNING, fmt: str | None = None) -> None:
    """PEMS's log on stderr: by default warnings and errors, one ``pems: warning: …`` line each.

    Parameters
    ----------
    level
        The least level shown (``pems live --config`` shows INFO).
    fmt
        A :mod:`logging` format instead of the one-line shape (a home's log wants times and sources).

    The command line's ``--log-level`` and ``--log-json`` (:func:`ask`) win over both.
    """
    root = logging.getLogger()
    handler = next((h for h in root.handlers if h.get_name() == "pems"), None)
    if handler is None:
        handler = _Stderr()
        handler.set_name("pems")
        root.addHandler(handler)
    if _ASKED.get("json"):
        handler.setFormatter(_Json())
    else:
        handler.setFormatter(logging.Formatter(fmt) if fmt else _OneLine())
    root.setLevel(int(_ASKED.get("level", level)))  # type: ignore[call-overload]


def quiet_libraries() -> None:
    """Silence library warnings for this process (``-W`` or ``PYTHONWARNINGS`` still win when given)."""
    import sys

    if sys.warnoptions:
        return
    warnings.simplefilter("ignore")
