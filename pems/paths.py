"""Where PEMS keeps what it writes: systemd's directories when it runs as a service, XDG's otherwise.

Under systemd (``deploy/pems.service``) the unit's ``StateDirectory=``, ``CacheDirectory=`` and
``LogsDirectory=`` give ``$STATE_DIRECTORY``, ``$CACHE_DIRECTORY`` and ``$LOGS_DIRECTORY``, created
for the service's user (``/var/lib/pems``, ``/var/cache/pems``, ``/var/log/pems``). Run by hand, the
XDG base directories hold them, one folder per home (the live config's file name without ``.toml``):

========  =======================================  ===============================================
what      systemd                                  by hand
========  =======================================  ===============================================
state     ``$STATE_DIRECTORY``                     ``$XDG_STATE_HOME/pems/<home>`` (``~/.local/state``)
logs      ``$LOGS_DIRECTORY``                      the state folder
cache     ``$CACHE_DIRECTORY``                     ``$XDG_CACHE_HOME/pems/<home>`` (``~/.cache``)
models    ``$STATE_DIRECTORY/models``              ``$XDG_DATA_HOME/pems/models`` (``~/.local/share``)
========  =======================================  ===============================================

``$PEMS_MODELS`` names the model registry whatever runs it. Nothing is ever written next to the
config file unless the config says so (every one of these is a key of the live config).
"""

from __future__ import annotations

import os
from pathlib import Path


def _systemd(var: str) -> Path | None:
    """The first folder of a systemd ``*_DIRECTORY`` variable (it may list several, ``:``-separated)."""
    v = os.environ.get(var, "")
    first = v.split(":")[0].strip()
    return Path(first) if first else None


def _xdg(var: str, default: str) -> Path:
    v = os.environ.get(var, "")
    return Path(v) if v and Path(v).is_absolute() else Path.home() / default  # (relative: ignored, as XDG says)


#: Each kind of folder: systemd's variable, XDG's variable and its default under the home folder.
_KINDS = {"state": ("STATE_DIRECTORY", "XDG_STATE_HOME", ".local/state"),
          "cache": ("CACHE_DIRECTORY", "XDG_CACHE_HOME", ".cache")}


def _folder(kind: str, *home: str) -> Path:
    """systemd's folder of ``kind``, else XDG's ``pems`` folder (and the home's under it)."""
    service, xdg, default = _KINDS[kind]
    return _systemd(service) or _xdg(xdg, default).joinpath("pems", *home)


def state_root() -> Path:
    """``$STATE_DIRECTORY``, else ``$XDG_STATE_HOME/pems`` (the state of commands that serve no one home)."""
    return _folder("state")


def cache_root() -> Path:
    """``$CACHE_DIRECTORY``, else ``$XDG_CACHE_HOME/pems``."""
    return _folder("cache")


def state_dir(home: str) -> Path:
    """The loop's state folder (saved state, lock, overrides, savings, the InfluxDB spool)."""
    return _folder("state", home)


def logs_dir(home: str) -> Path:
    """Where ``events.jsonl`` goes."""
    return _systemd("LOGS_DIRECTORY") or state_dir(home)


def cache_dir(home: str) -> Path:
    """Forecasts fetched, history read (anything that can be fetched again)."""
    return _folder("cache", home)


def library_caches() -> None:
    """Under systemd, the libraries' own caches (matplotlib's font list) go to the service's cache
    folder rather than a home folder the service's user does not have (``ProtectSystem=strict``)."""
    cache = _systemd("CACHE_DIRECTORY")
    if cache is not None and "MPLCONFIGDIR" not in os.environ:
        os.environ["MPLCONFIGDIR"] = str(cache / "matplotlib")


def models_dir() -> Path:
    """The model registry: ``$PEMS_MODELS``, else under the service's state, else XDG's data home."""
    if os.environ.get("PEMS_MODELS"):
        return Path(os.environ["PEMS_MODELS"])
    state = _systemd("STATE_DIRECTORY")
    return state / "models" if state else _xdg("XDG_DATA_HOME", ".local/share") / "pems" / "models"
