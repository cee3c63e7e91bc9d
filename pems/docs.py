"""The reference pages in ``docs/`` and the README's built-in data, rendered from the code.

Every key of the project's TOML files is a field of a pydantic model; its type, default and allowed
range come from the model and its meaning and unit from the field's attribute docstring (a trailing
``[unit]`` becomes the unit column). The history columns come from
:data:`pems.calibration.history.COLUMNS`, the KPIs from :data:`pems.scenarios.kpis.KPIS`, the
built-in data from the registries ``pems list`` prints. So the pages cannot drift from the code:
each generated block sits between two HTML comments in a hand-written page, and
``tests/test_docs.py`` renders it again and compares.

Usage::

    python -m pems.docs           # rewrite every generated block
    python -m pems.docs --check   # exit 1 and name the stale files, writing nothing
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import re
import sys
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

#: The command that regenerates the blocks (named in every marker and in the test's message).
COMMAND = "python -m pems.docs"


# ----------------------------------------------------------------------------- generated blocks
def begin_marker(name: str) -> str:
    return f"<!-- BEGIN GENERATED {name}: edit the code, then run `{COMMAND}` -->"


def end_marker(name: str) -> str:
    return f"<!-- END GENERATED {name} -->"


def replace_block(text: str, name: str, body: str, where: str = "") -> str:
    """``text`` with the block ``name`` replaced by ``body``.

    Raises
    ------
    ValueError
        The markers of ``name`` are missing or not in order.
    """
    b, e = begin_marker(name), end_marker(name)
    i, j = text.find(b), text.find(e)
    if i < 0 or j < i:
        raise ValueError(f"{where or 'text'}: no generated block {name!r}; put the two lines\n{b}\n{e}\n"
                         "where it belongs")
    return text[:i + len(b)] + "\n" + body.rstrip("\n") + "\n" + text[j:]


# ----------------------------------------------------------------------------- types and values
_BASIC = {bool: "boolean", int: "integer", float: "number", str: "string",
          dt.datetime: "date-time", dt.time: "time of day", dt.date: "date"}


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _strip(tp: Any) -> tuple[Any, bool]:
    """``tp`` without ``None`` in a union, and whether it was optional."""
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) < len(get_args(tp)):
            return (args[0] if len(args) == 1 else Union[tuple(args)]), True  # noqa: UP007
    return tp, False


def type_name(tp: Any, plural: bool = False) -> str:
    """A reader's name of a TOML value's type (``number``, ``list of strings``, ``"a" | "b"``)."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is typing.Annotated:
        return type_name(args[0], plural)
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a, plural) for a in args if a is not type(None))
    if origin is Literal:
        return " | ".join(f"`{toml_value(v)}`" for v in args)
    if origin in (list, tuple, Sequence) and (origin is not tuple or (len(args) == 2 and args[1] is Ellipsis)):
        return f"list of {type_name(args[0], plural=True)}" if args else "list"
    if origin is tuple:
        return "[" + ", ".join(type_name(a) for a in args) + "]"
    if origin is dict:
        return f"table of {type_name(args[1], plural=True)}"
    if _is_model(tp):
        return "tables" if plural else "table"
    name = _BASIC.get(tp, getattr(tp, "__name__", str(tp)))
    return name + "s" if plural else name


def toml_value(v: Any) -> str:
    """``v`` as it is written in TOML."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, float):
        return repr(v) if v != int(v) or abs(v) >= 1e15 else f"{v:.1f}"
    if isinstance(v, dt.time):
        return f'"{v:%H:%M}"'
    if isinstance(v, dt.datetime | dt.date):
        return v.isoformat()
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}" if v else "{}"
    return str(v)


def _bounds(meta: Sequence[Any]) -> list[str]:
    """Readable constraints of pydantic/annotated-types metadata."""
    lo = hi = None
    out: list[str] = []
    for m in meta:
        if isinstance(m, FieldInfo):
            out += _bounds(m.metadata)
        elif isinstance(m, at.Ge):
            lo = ("[", m.ge)
        elif isinstance(m, at.Gt):
            lo = ("(", m.gt)
        elif isinstance(m, at.Le):
            hi = ("]", m.le)
        elif isinstance(m, at.Lt):
            hi = (")", m.lt)
        elif isinstance(m, at.MinLen) and m.min_length > 0:
            out.append(f"at least {m.min_length}" if m.min_length > 1 else "not empty")
        elif isinstance(m, at.MaxLen):
            out.append(f"at most {m.max_length}")
    if lo and hi:
        out.insert(0, f"{lo[0]}{lo[1]:g}, {hi[1]:g}{hi[0]}")
    elif lo:
        out.insert(0, f"{'≥' if lo[0] == '[' else '>'} {lo[1]:g}")
    elif hi:
        out.insert(0, f"{'≤' if hi[0] == ']' else '<'} {hi[1]:g}")
    return out


def constraints(f: FieldInfo) -> str:
    """The allowed range of a field, also where it sits inside ``X | None`` or a container."""
    parts = _bounds(f.metadata)
    tp, _ = _strip(f.annotation)
    for a in (get_args(tp) if get_origin(tp) in (Union, types.UnionType) else (tp,)):
        if get_origin(a) is typing.Annotated:
            parts += _bounds(get_args(a)[1:])
        elif get_origin(a) in (list, dict):
            inner = get_args(a)[-1]
            if get_origin(inner) is typing.Annotated:
                parts += [f"each {p}" for p in _bounds(get_args(inner)[1:])]
    return ", ".join(parts)


def default_text(f: FieldInfo) -> str:
    """The default as written in TOML; ``required`` without one."""
    if f.default_factory is not None:
        v = f.default_factory()  # type: ignore[call-arg]
    elif f.default is PydanticUndefined:
        return "**required**"
    else:
        v = f.default
    if v is None:
        return "not set"
    if isinstance(v, BaseModel):
        return "its defaults"
    return f"`{toml_value(v)}`"


_UNIT = re.compile(r"\s*\[([^\[\]]+)\]\.?$")


def split_unit(description: str) -> tuple[str, str]:
    """``("Height above sea level.", "m")`` from ``"Height above sea level [m]."``."""
    text = " ".join((description or "").split())
    m = _UNIT.search(text)
    if not m:
        return text, ""
    rest = text[:m.start()].rstrip()
    unit = "–" if m.group(1) == "-" else m.group(1)
    return (rest + "." if rest and rest[-1] not in ".…:;?!" else rest), unit


def _cell(s: str) -> str:
    """Markdown for a table cell: RST double back-quotes become code spans, pipes are escaped."""
    return s.replace("``", "`").replace("|", "\\|")


def _doc(cls: type) -> str:
    """A class docstring as markdown paragraphs, up to its first numpydoc section."""
    import inspect

    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    for i in range(1, len(lines)):
        if lines[i].strip() and set(lines[i].strip()) <= {"-"}:  # "Attributes\n----------"
            lines = lines[:i - 1]
            break
    paragraphs = [" ".join(p.split()) for p in "\n".join(lines).split("\n\n") if p.strip()]
    return "\n\n".join(_ROLE.sub(r"`\1`", p) for p in paragraphs)


_ROLE = re.compile(r":\w+:`~?([^`]+)`")


# ----------------------------------------------------------------------------- file reference pages
@dataclass
class Row:
    key: str
    type: str
    default: str
    allowed: str
    unit: str
    description: str


@dataclass
class Section:
    """One TOML table of a file: its header, anchor and keys."""

    header: str  # "" for the top level, else e.g. "[[rooms]]" or "[comfort.rooms.<room>]"
    path: str  # dotted name, e.g. "rooms.params"
    doc: str
    rows: list[Row] = field(default_factory=list)
    same_as: tuple[str, str] | None = None  # (page, path) of a section with the same keys

    @property
    def anchor(self) -> str:
        return anchor(self.path)


def anchor(path: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-") or "top-level"


@dataclass(frozen=True)
class DataclassTable:
    """A table whose keys a dataclass defines (validated by it, not by pydantic): its numpydoc
    ``Attributes`` give the descriptions."""

    cls: type


@dataclass(frozen=True)
class FilePage:
    """A reference page of one kind of TOML file."""

    page: str  # path under docs/reference
    title: str
    model: type[BaseModel]
    placeholders: dict[str, str] = field(default_factory=dict)  # dotted dict field → its key's name
    extra: dict[str, DataclassTable] = field(default_factory=dict)  # dotted field → table keys


def _numpydoc_attributes(cls: type) -> dict[str, str]:
    """``{name: description}`` from a numpydoc ``Attributes`` section (``a, b`` lines share one)."""
    doc = (cls.__doc__ or "").expandtabs()
    lines = doc.splitlines()
    out: dict[str, str] = {}
    try:
        i = next(k for k, ln in enumerate(lines) if ln.strip() == "Attributes") + 2
    except StopIteration:
        return out
    names: list[str] = []
    base = None
    for ln in lines[i:]:
        if not ln.strip():
            continue
        ind = len(ln) - len(ln.lstrip())
        if base is None:
            base = ind
        if ind == base:
            if set(ln.strip()) <= {"-"}:
                break
            names = [n.strip() for n in ln.split(":")[0].split(",")]
            for n in names:
                out[n] = ""
        elif ind > base:
            for n in names:
                out[n] = (out[n] + " " + ln.strip()).strip()
        else:
            break
    return out


def _dataclass_rows(cls: type) -> list[Row]:
    docs = _numpydoc_attributes(cls)
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        text, unit = split_unit(docs.get(f.name, ""))
        default = "**required**" if f.default is dataclasses.MISSING else (
            "not set" if f.default is None else f"`{toml_value(f.default)}`")
        tp, _ = _strip(hints[f.name])
        rows.append(Row(f.name, type_name(tp), default, "", unit, text))
    return rows


class _Renderer:
    """Walks the models of every page; a model met again refers to where it was first described."""

    def __init__(self) -> None:
        self.owner: dict[type, tuple[str, str]] = {}  # model → (page, dotted path)

    def sections(self, page: FilePage) -> list[Section]:
        out: list[Section] = []
        self._walk(page, page.model, "", "", out)
        return out

    def _walk(self, page: FilePage, model: type[BaseModel], path: str, header: str,
              out: list[Section]) -> None:
        sec = Section(header, path, _doc(model))
        out.append(sec)
        if model in self.owner and path:
            sec.same_as = self.owner[model]
            return
        if path:
            self.owner.setdefault(model, (page.page, path))
        children: list[tuple[type[BaseModel] | DataclassTable, str, str]] = []
        for name, f in model.model_fields.items():
            sub = f"{path}.{name}" if path else name
            tp, optional = _strip(f.annotation)
            origin, args = get_origin(tp), get_args(tp)
            text, unit = split_unit(f.description or "")
            allowed = constraints(f)
            if sub in page.extra:
                children.append((page.extra[sub], sub, f"[{sub}]"))
                tname = f"table, see [`[{sub}]`](#{anchor(sub)})"
            elif _is_model(tp):
                children.append((tp, sub, f"[{sub}]"))
                tname = f"table, see [`[{sub}]`](#{anchor(sub)})"
            elif origin is list and args and _is_model(args[0]):
                children.append((args[0], sub, f"[[{sub}]]"))
                tname = f"array of tables, see [`[[{sub}]]`](#{anchor(sub)})"
            elif origin is dict and args and _is_model(args[1]):
                key = page.placeholders.get(sub, "<name>")
                children.append((args[1], f"{sub}.{key}", f"[{sub}.{key}]"))
                tname = f"table of tables, see [`[{sub}.{key}]`](#{anchor(sub + '.' + key)})"
            else:
                tname = type_name(tp)
            sec.rows.append(Row(name, tname, default_text(f), allowed, unit, text))
        for child, sub, head in children:
            if isinstance(child, DataclassTable):
                out.append(Section(head, sub, _doc(child.cls), _dataclass_rows(child.cls)))
            else:
                self._walk(page, child, sub, head, out)


def render_sections(sections: list[Section], page: str) -> str:
    lines: list[str] = []
    for s in sections:
        title = f"`{s.header}`" if s.header else "Top level"
        lines += [f'<a id="{s.anchor}"></a>', "", f"### {title}", ""]
        if s.same_as is not None:
            where, path = s.same_as
            link = f"#{anchor(path)}" if where == page else f"{Path(where).name}#{anchor(path)}"
            what = "above" if where == page else f"in {_page_titles().get(where, where)}"
            lines += [f"The same keys as [`[{path}]`]({link}) {what}.", ""]
            continue
        if s.doc:
            lines += [s.doc.replace("``", "`"), ""]
        lines += ["| key | type | default | allowed | unit | meaning |", "|---|---|---|---|---|---|"]
        for r in s.rows:
            lines.append(f"| `{r.key}` | {_cell(r.type)} | {r.default} | {r.allowed} | {r.unit} | {_cell(r.description)} |")
        lines.append("")
    return "\n".join(lines)


def file_pages() -> list[FilePage]:
    """The TOML files a user writes, in the order their pages are rendered."""
    from pems.calibration.mapping import Mapping
    from pems.live.config import LiveConfig
    from pems.live.registers import _MapFile
    from pems.live.safety import SafetyLimits
    from pems.live.topics import Layout
    from pems.scenarios.spec import Scenario
    from pems.scenarios.sweep import SweepSpec
    from pems.twin.house import House

    return [
        FilePage("house.md", "the house file", House),
        FilePage("scenario.md", "the scenario file", Scenario, {"comfort.rooms": "<room>"}),
        FilePage("mapping.md", "the mapping file", Mapping),
        FilePage("live-config.md", "the live configuration", LiveConfig, {"comfort.rooms": "<room>"},
                 {"safety": DataclassTable(SafetyLimits)}),
        FilePage("register-map.md", "the register map", _MapFile, {"registers": "<register>"}),
        FilePage("mqtt-layout.md", "the MQTT layout", Layout),
        FilePage("sweep.md", "the sweep file", SweepSpec, {"axes": "<axis>"}),
    ]


def _page_titles() -> dict[str, str]:
    """Page name → what the page describes, as :func:`file_pages` names it."""
    return {p.page: p.title for p in file_pages()}


def render_file_keys() -> dict[str, str]:
    """Page name → the markdown of its keys."""
    r = _Renderer()
    return {p.page: render_sections(r.sections(p), p.page) for p in file_pages()}


# ----------------------------------------------------------------------------- history and KPIs
def render_history_columns() -> str:
    from pems.calibration.history import COLUMNS, HELD, PER_ROOM, RANGES

    lines = ["| column | unit | meaning | accepted range | onto the model step |", "|---|---|---|---|---|"]
    for kind, (unit, meaning) in COLUMNS.items():
        col = f"{kind}__<room>" if kind in PER_ROOM else kind
        lo, hi = RANGES[kind]
        step = "mean of the held values" if kind in HELD else "mean of the linear interpolant"
        lines.append(f"| `{col}` | {unit} | {_cell(meaning)} | {lo:g} … {hi:g} | {step} |")
    return "\n".join(lines) + "\n"


def render_kpis() -> str:
    from pems.scenarios.kpis import KPIS

    lines = ["| key | unit | definition |", "|---|---|---|"]
    for key, k in KPIS.items():
        lines.append(f"| `{key}` | {k.unit} | {_cell(k.definition)} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- built-in data
#: What each controller is, for the README's table (the registry has names only). A controller
#: registered without a line here fails the rendering, so the table cannot leave it out.
CONTROLLER_NOTES = {
    "rule-based": "per-room Loxone-style thermostats + Growatt \"load first\"",
    "rule-based-preheat": "the same with a 3 h heat-up lead",
    "rule-based-solar": "the same, its cars charged from PV surplus and in time for each departure",
    "mpc": "economic MPC",
    "mpc+correctors": "the MPC with learned residual correctors (scenarios with a `[truth]` section)",
    "oracle": "perfect-foresight bound",
    "emhass": "peer, after `make bench-peers`: EMHASS plans the rooms (its thermal loads, from the twin) and the battery, hourly",
    "emhass-battery": "peer, after `make bench-peers`: EMHASS plans the battery once a day, the thermostats heat",
}


def builtin_catalog() -> list[tuple[str, list[tuple[str, str]]]]:
    """``[(kind, [(name, what it is), …]), …]`` from the registries ``pems list`` prints."""
    from pems.controllers.registry import CONTROLLERS, PEERS
    from pems.scenarios.spec import builtin_scenarios, library_dir
    from pems.tomlio import read_toml
    from pems.twin.house import BUILTIN_HOUSES, builtin_house_path
    from pems.twin.load import BUILTIN_LOADS
    from pems.twin.prices import BUILTIN_PRICES
    from pems.twin.weather import BUILTIN_WEATHER

    def described(path: Path) -> str:
        return str(read_toml(path).get("description") or "")

    missing = [n for n in (*CONTROLLERS, *PEERS) if n not in CONTROLLER_NOTES]
    if missing:
        raise KeyError(f"controller(s) {', '.join(missing)} have no line in pems.docs.CONTROLLER_NOTES")
    return [
        ("house", [(n, described(builtin_house_path(n))) for n in BUILTIN_HOUSES]),
        ("scenario", [(n, described(library_dir() / f"{n}.toml")) for n in builtin_scenarios()]),
        ("weather", list(BUILTIN_WEATHER.items())),
        ("prices", list(BUILTIN_PRICES.items())),
        ("load", list(BUILTIN_LOADS.items())),
        ("controller", [(n, CONTROLLER_NOTES[n]) for n in (*CONTROLLERS, *PEERS)]),
    ]


def render_builtins() -> str:
    lines = ["| kind | name | what it is |", "|---|---|---|"]
    for kind, items in builtin_catalog():
        for i, (name, what) in enumerate(items):
            lines.append(f"| {kind if i == 0 else ''} | `{name}` | {_cell(what)} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class Block:
    """A generated block: the file (relative to the repository) and what renders it."""

    file: str
    name: str
    render: Callable[[], str]


def blocks() -> list[Block]:
    keys: dict[str, str] = {}

    def page_keys(page: str) -> Callable[[], str]:
        def render() -> str:
            if not keys:
                keys.update(render_file_keys())
            return keys[page]
        return render

    out = [Block("README.md", "builtins", render_builtins),
           Block("docs/reference/history.md", "history-columns", render_history_columns),
           Block("docs/reference/kpis.md", "kpis", render_kpis)]
    out += [Block(f"docs/reference/{p.page}", "keys", page_keys(p.page)) for p in file_pages()]
    return out


def repository_root() -> Path:
    """The checkout this module runs from (an editable install), else the working directory."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "pyproject.toml").is_file() and (here / "docs").is_dir() else Path.cwd()


def rendered(root: Path) -> dict[Path, tuple[str, str]]:
    """Every file with generated blocks → (its text now, its text with the blocks rendered)."""
    out: dict[Path, tuple[str, str]] = {}
    for b in blocks():
        path = root / b.file
        old, new = out.get(path, (None, None))
        if old is None:
            old = new = path.read_text(encoding="utf-8") if path.is_file() else ""
        out[path] = (old, replace_block(new, b.name, b.render(), b.file))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pems.docs", description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="name the stale files and exit 1; write nothing")
    p.add_argument("--root", type=Path, default=None, help="repository root (default: this checkout)")
    args = p.parse_args(argv)
    root = args.root or repository_root()
    stale = []
    for path, (old, new) in rendered(root).items():
        if old != new:
            stale.append(path.relative_to(root))
            if not args.check:
                path.write_text(new, encoding="utf-8")
    if args.check:
        for s in stale:
            print(f"{s}: stale; run `{COMMAND}`", file=sys.stderr)
        return 1 if stale else 0
    print(f"rewrote {', '.join(map(str, stale))}" if stale else "every generated block is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
