"""Reading TOML files into validated pydantic models with errors that name file and key."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from pems.errors import InputError, Problem

M = TypeVar("M", bound=BaseModel)


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; a missing or broken file raises :class:`InputError`."""
    if not path.is_file():
        raise InputError(path, "", "file not found")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise InputError(path, "", f"not valid TOML ({exc})") from None
    except UnicodeDecodeError:
        raise InputError(path, "", "not a UTF-8 text file") from None


def builtin_or_file(spec: str | Path, folder: Path, names: tuple[str, ...], key: str, what: str,
                    builtin: str = "built-in name") -> Path:
    """The TOML file of a built-in ``what`` named ``spec`` (one of ``names``, in ``folder``), or
    ``spec`` as a path to a TOML file; anything else raises :class:`InputError` naming ``key``
    (``builtin`` is what the message calls the built-in ones: "built-in name", "preset", ...)."""
    s = str(spec)
    if s in names:
        return folder / f"{s}.toml"
    path = Path(s)
    if path.suffix != ".toml" and not path.exists():
        raise InputError(s, key, f"unknown {what}; expected a {builtin} ({', '.join(names)}) "
                                 "or a path to a .toml file")
    return path


def key_path(loc: tuple[Any, ...]) -> str:
    """``("rooms", 3, "heater_w")`` → ``"rooms[3].heater_w"``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


#: The reference page of each kind of file (by its model's class name; tests/test_docs.py holds it
#: to pems.docs.file_pages): an unknown key points there.
REFERENCE_PAGES = {
    "House": "docs/reference/house.md", "Scenario": "docs/reference/scenario.md",
    "Mapping": "docs/reference/mapping.md", "LiveConfig": "docs/reference/live-config.md",
    "_MapFile": "docs/reference/register-map.md", "Layout": "docs/reference/mqtt-layout.md",
    "SweepSpec": "docs/reference/sweep.md",
}


def validate(model: type[M], data: dict[str, Any], source: str | Path) -> M:
    """Validate ``data`` as ``model``; every bad value becomes one :class:`Problem`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                page = REFERENCE_PAGES.get(model.__name__, "docs/reference/")
                msg = f"unknown key (check the spelling; every key is in {page})"
            elif err["type"] == "missing":
                msg = "required key is missing"
            elif err["type"] == "value_error":
                pass  # our own validators already name the value
            elif "input" in err and not isinstance(err["input"], dict | list):
                msg = f"{msg}, got {err['input']!r}"
            problems.append(Problem(str(source), key_path(loc), msg))
        raise InputError.many(problems) from None
