"""Sweeps: every combination of a sweep file's axes × controllers, one run each, on Dask.

``pems sweep SWEEP.toml --out DIR`` expands the axes (houses or parameter grids on a house,
scenarios or weather years, tariffs, controllers, seeds of noisy forecasts) into tasks, runs them on
a Dask ``LocalCluster`` (or a real cluster: ``--scheduler tcp://HOST:PORT``), and writes one row per
task into ``DIR/results.parquet`` (the axes as columns beside every KPI) and ``DIR/report.html``.

A sweep file::

    name = "sizing"
    scenario = "winter-week"           # the base scenario (built-in or a file beside this one)
    controllers = ["rule-based", "mpc"]
    [axes]                             # every combination is a task (× each controller)
    battery_kwh = [0, 5, 10]
    pv_kwp = [5, 10]
    [costs]                            # for the payback: price of capacity
    battery_per_kwh = 450
    pv_per_kwp = 1100

The axes (:data:`AXES`) change the scenario (``scenario``, ``house``, ``weather``, ``prices``,
``load``, ``load_kwh_per_year``, ``start``, ``days``, ``seed`` and ``forecast`` of noisy forecasts,
``tariff.<key>``, ``mpc.<key>``) or its house (``battery_kwh`` at the house's C-rate, ``battery_kw``,
``pv_kwp`` with the arrays scaled, ``insulation`` as a factor on every loss to outdoors, ``heating``,
``house.<key>`` for any other key of the house file). Every task is built and validated before any
runs: a bad axis ends with the file and key named (exit 2).

Tasks are **resumable**: each finished task is written at once to ``DIR/tasks/<id>.json`` (its id a
hash of what it runs), and a sweep started again runs only what is not there. A task that fails is
recorded with its error (``status = "failed"``), does not stop the others, and is tried again the
next time. A task lost with a worker that died is run again by Dask on another worker.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import socket
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from pems.errors import InputError
from pems.tomlio import read_toml, validate

#: The task files' folder and the results table in a sweep's output folder.
TASKS_DIR = "tasks"
RESULTS_FILE = "results.parquet"
#: One line per run of the sweep command that had tasks to run (a sweep resumed is run in pieces):
#: when it started and ended, on how many workers, what it ran, and whether it got to the end.
SESSIONS_FILE = "sessions.jsonl"


class Costs(BaseModel):
    """Prices of capacity, for the simple payback (the currency of the tariff)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    battery_per_kwh: Annotated[float, Field(ge=0)] = 450.0
    """Installed battery, per kWh of capacity [currency/kWh]."""
    pv_per_kwp: Annotated[float, Field(ge=0)] = 1100.0
    """Installed PV, per kWp [currency/kWp]."""


class SweepSpec(BaseModel):
    """A sweep file: a base scenario, its controllers, and the axes whose every combination is run."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    name: str = "sweep"
    """The sweep's name (reports)."""
    scenario: str = "winter-week"
    """The base scenario: a built-in name or a scenario file (relative to the sweep file)."""
    controllers: list[str] = Field(default_factory=lambda: ["rule-based", "mpc"], min_length=1)
    """Controllers, each run on every combination of the axes (``emhass``, ``emhass-battery``: after ``make bench-peers``, on every worker)."""
    axes: dict[str, list[Any]] = Field(default_factory=dict)
    """Axis name → its values; every combination is one task per controller. The scenario's:
    ``scenario``, ``house``, ``weather``, ``prices``, ``load`` (built-in names or files, e.g. a weather
    CSV per year), ``load_kwh_per_year``, ``start``, ``days``, ``seed`` (of noisy forecasts),
    ``tariff.<key>``, ``mpc.<key>``, ``forecast.<key>``, ``comfort.<key>``. The house's:
    ``battery_kwh`` (at the house's C-rate; 0: none), ``battery_kw``, ``pv_kwp`` (the arrays scaled;
    0: none), ``insulation`` (a factor on every room's loss to outdoors), ``heating`` (its kind),
    ``house.<key>`` (any key of the house file, e.g. ``house.grid.import_limit_w``)."""
    costs: Costs = Field(default_factory=Costs)
    """Prices of capacity for the payback."""
    keep_runs: bool = False
    """Also write each run's ``trajectory.parquet`` and ``kpis.json`` under ``runs/<task id>/`` in the
    output folder (on a cluster: on the worker's disk)."""


# ---------------------------------------------------------------------------------------------
# axes
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Axis:
    """One kind of axis: what it changes (``"scenario"`` or ``"house"``) and its meaning."""

    target: str
    doc: str


#: Named axes; besides them ``tariff.<key>``, ``mpc.<key>``, ``forecast.<key>`` (scenario) and
#: ``house.<key>`` (any key of the house file, dotted: ``house.grid.import_limit_w``).
AXES: dict[str, Axis] = {
    "scenario": Axis("scenario", "another base scenario (built-in name or file)"),
    "house": Axis("scenario", "another house (built-in name or house file)"),
    "weather": Axis("scenario", "weather source: a built-in name or a CSV (e.g. one per year)"),
    "prices": Axis("scenario", "price source (a tariff's prices): built-in name or CSV"),
    "load": Axis("scenario", "household load source"),
    "load_kwh_per_year": Axis("scenario", "household consumption that scales a built-in profile [kWh]"),
    "start": Axis("scenario", "the run's start (ISO time)"),
    "days": Axis("scenario", "the run's length [days]"),
    "seed": Axis("scenario", "seed of the noisy forecasts (forecast.seed)"),
    "battery_kwh": Axis("house", "battery capacity [kWh] at the house's C-rate (0: none; a house without one: 0.5 C)"),
    "battery_kw": Axis("house", "battery charge and discharge power [kW]"),
    "pv_kwp": Axis("house", "PV peak power [kWp], the house's arrays scaled (0: none; a house without: one south array)"),
    "insulation": Axis("house", "factor on every room's heat loss to outdoors (H_out, windows included) [-]"),
    "heating": Axis("house", "heating kind: electric_underfloor, electric_convector or heat_pump"),
}
_PREFIXES = {"tariff.": "scenario", "mpc.": "scenario", "forecast.": "scenario", "comfort.": "scenario",
             "house.": "house"}


def axis_target(name: str) -> str | None:
    """``"scenario"`` or ``"house"`` for a known axis, else None."""
    if name in AXES:
        return AXES[name].target
    for prefix, target in _PREFIXES.items():
        if name.startswith(prefix) and len(name) > len(prefix):
            return target
    return None


def _set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise ValueError(f"{key}: {p} is not a table")
    d[parts[-1]] = value


# ---------------------------------------------------------------------------------------------
# tasks
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    """One run of a sweep: the axes' values and a controller (plain data: it travels to workers)."""

    axes: dict[str, Any]
    controller: str
    scenario: str  # the base scenario (absolute path or built-in name)
    base_dir: str  # where the sweep file's relative paths resolve
    keep_dir: str | None = None  # runs/<id>/ for keep_runs
    id: str = field(default="")

    def __post_init__(self) -> None:
        if not self.id:
            blob = json.dumps({"axes": self.axes, "controller": self.controller, "scenario": self.scenario},
                              sort_keys=True, default=str)
            object.__setattr__(self, "id", hashlib.sha1(blob.encode()).hexdigest()[:12])

    def row(self, **values: Any) -> dict[str, Any]:
        """The task's row of the results: its id, axes (``axis:<name>``) and controller, and ``values``."""
        return {"task": self.id, **{f"axis:{k}": v for k, v in self.axes.items()}, "controller": self.controller,
                **values}

    def as_dict(self) -> dict[str, Any]:
        return {"axes": self.axes, "controller": self.controller, "scenario": self.scenario,
                "base_dir": self.base_dir, "keep_dir": self.keep_dir, "id": self.id}


#: The axes whose values may be files (relative to the sweep file).
FILE_AXES = ("scenario", "house", "weather", "prices", "load")


def _resolve(value: Any, base: Path) -> Any:
    """A relative file name of a sweep file, made absolute (built-in names stay as they are)."""
    if isinstance(value, str) and (value.endswith((".csv", ".toml", ".parquet", ".gz")) or "/" in value):
        p = Path(value)
        return str(p if p.is_absolute() else (base / p).resolve())
    return value


def dotted_axes(axes: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Axes with TOML's nested tables as dotted names: ``house.grid.import_limit_w = [..]`` written
    without quotes is a table in TOML, and the axis ``"house.grid.import_limit_w"`` it means."""
    out: dict[str, Any] = {}
    for k, v in axes.items():
        if isinstance(v, dict):
            out |= dotted_axes(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def load_sweep(path: str | Path) -> tuple[SweepSpec, list[Task]]:
    """Read a sweep file and expand it into tasks, each built and checked (exit 2 naming the key)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "", "sweep file not found")
    raw = read_toml(p)
    if isinstance(raw.get("axes"), dict):
        raw["axes"] = dotted_axes(raw["axes"])
    spec = validate(SweepSpec, raw, p)
    base = p.parent.resolve()
    from pems.controllers.registry import CONTROLLERS, PEERS

    for c in spec.controllers:
        if c in PEERS:  # a peer in its own environment (on a cluster: on every worker too)
            from pems.controllers.emhass_peer import peers_python

            if peers_python() is None:
                raise InputError(p, "controllers", f"{c!r} needs EMHASS's own environment: run `make bench-peers` "
                                                   "(creates .venv-peers)")
        elif c not in CONTROLLERS:
            raise InputError(p, "controllers", f"unknown controller {c!r}; expected one of "
                                               f"{', '.join([*CONTROLLERS, *PEERS])}")
    for name, values in spec.axes.items():
        if axis_target(name) is None:
            known = ", ".join([*AXES, *(f"{k}<key>" for k in _PREFIXES)])
            raise InputError(p, f"axes.{name}", f"unknown axis; expected one of {known}")
        if not values:
            raise InputError(p, f"axes.{name}", "an axis needs at least one value")
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) != len(values):
            raise InputError(p, f"axes.{name}", f"a value appears twice in {values}")
    scenario = _resolve(spec.scenario, base)
    names = list(spec.axes)
    tasks = []
    keep = None  # set by run_sweep: runs/ in its output folder
    for combo in itertools.product(*(spec.axes[n] for n in names)):
        axes = {n: _resolve(v, base) if n in FILE_AXES else v for n, v in zip(names, combo)}
        for ctrl in spec.controllers:
            tasks.append(Task(axes, ctrl, scenario, str(base), keep))
    # every task's scenario and house, built now: a bad value is named before anything runs; a task's
    # id is a hash of what it runs (the built scenario and house, the files they read, the controller,
    # this PEMS), so an edited house or weather file runs again and a moved folder does not
    digests: dict[str, str] = {}
    out = []
    for t in tasks:
        key = json.dumps(t.axes, sort_keys=True, default=str)
        if key not in digests:
            digests[key] = _content_digest(build_scenario(t, source=p))
        blob = json.dumps({"content": digests[key], "controller": t.controller, "axes": t.axes}, sort_keys=True,
                          default=str)
        out.append(replace(t, id=hashlib.sha1(blob.encode()).hexdigest()[:12]))
    return spec, out


def _content_digest(sc: Any) -> str:
    """What a built scenario runs: its spec, its house and the contents of the files it reads."""
    from pems import __version__

    h = hashlib.sha1()
    h.update(__version__.encode())
    h.update(sc.spec.model_dump_json().encode())
    h.update(sc.house.model_dump_json().encode())
    for key in ("weather", "prices", "load"):
        f = sc.base_dir / getattr(sc.spec, key)
        if f.is_file():
            h.update(f.read_bytes())
    for ev in sc.house.ev:
        if ev.calendar and Path(ev.calendar).is_file():
            h.update(Path(ev.calendar).read_bytes())
    return h.hexdigest()


def build_scenario(task: Task, source: Path | str | None = None) -> Any:
    """The task's :class:`~pems.scenarios.spec.LoadedScenario`: the base scenario with the task's axes
    applied to it and its house. Problems name ``source`` (the sweep file) and ``axes.<name>``."""
    from pems.scenarios.spec import Scenario, checked_scenario, load_scenario
    from pems.twin.house import House, load_house

    src = source if source is not None else task.scenario
    axes = dict(task.axes)
    try:
        base = load_scenario(axes.pop("scenario", task.scenario))
    except InputError as exc:
        if "scenario" in task.axes:
            raise InputError(src, "axes.scenario", exc.problems[0].message) from None
        if source is not None and exc.problems[0].source == str(task.scenario):  # the sweep file's own key
            raise InputError(source, "scenario", exc.problems[0].message) from None
        raise
    data = base.spec.model_dump(mode="python", exclude_unset=True)  # (only what its file set: no default warns)
    # the house as its file has it: checked_scenario adds the scenario's cars (base.house has them already)
    house = load_house(base.spec.house, base_dir=base.path.parent, source=base.path)
    if "house" in axes:
        try:
            house = load_house(axes.pop("house"), base_dir=Path(task.base_dir))
        except InputError as exc:
            raise InputError(src, "axes.house", exc.problems[0].message) from None
    house_axes = {k: v for k, v in axes.items() if axis_target(k) == "house"}
    for name, value in axes.items():
        if axis_target(name) != "scenario":
            continue
        try:
            if name == "seed":
                _set_dotted(data, "forecast.seed", value)
            else:
                _set_dotted(data, name, value)
        except ValueError as exc:
            raise InputError(src, f"axes.{name}", str(exc)) from None
    try:
        sc = Scenario.model_validate(data)
    except ValueError as exc:
        raise InputError(src, f"axes.{_blamed(exc, [n for n in axes if axis_target(n) == 'scenario'])}",
                         _first_error(exc)) from None
    if house_axes:
        house = _house_with(house, house_axes, src)
    try:
        return checked_scenario(sc, house, base.path)
    except InputError as exc:
        first = exc.problems[0]
        key = first.key or ""
        where = next((f"axes.{n}" for n in task.axes if key == n or key.startswith(n + ".")), None) or \
            next((f"axes.{n}" for n in task.axes if n in FILE_AXES and key.startswith(n)), "axes")
        raise InputError(src, where, f"{first.key}: {first.message}") from None


#: Where in a house file each named house axis writes.
_HOUSE_AXIS_KEYS = {"battery_kwh": "battery", "battery_kw": "battery", "pv_kwp": "pv", "insulation": "rooms",
                    "heating": "heating"}


def _blamed(exc: Exception, names: Sequence[str], house: bool = False) -> str:
    """The axis a validation error is about: the one whose key its location starts with."""
    errs = getattr(exc, "errors", None)
    loc = ".".join(str(x) for x in errs()[0].get("loc", ())) if callable(errs) else ""
    for n in names:
        key = (_HOUSE_AXIS_KEYS.get(n, n.removeprefix("house.")) if house
               else ("forecast.seed" if n == "seed" else n))
        if loc == key or loc.startswith(key + "."):
            return n
    return names[0] if len(names) == 1 else ", ".join(names) if names else "scenario"


def _first_error(exc: Exception) -> str:
    errs = getattr(exc, "errors", None)
    if callable(errs):
        e = errs()[0]
        loc = ".".join(str(x) for x in e.get("loc", ()))
        return f"{loc}: {e.get('msg')}" if loc else str(e.get("msg"))
    return str(exc)


def _house_with(house: Any, axes: Mapping[str, Any], src: Any) -> Any:
    """The house with the house axes applied (validated; a bad value names its axis)."""
    from pems.twin.house import House
    from pems.twin.priors import room_priors

    d = house.model_dump(mode="python", exclude_none=True)
    order = {"battery_kwh": 0, "battery_kw": 1}  # the capacity first: its C-rate scaling, then a power given
    for name, v in sorted(axes.items(), key=lambda kv: order.get(kv[0], 2)):
        key = f"axes.{name}"
        try:
            if name == "battery_kwh":
                v = float(v)
                if v < 0 or not math.isfinite(v):
                    raise ValueError(f"a battery of {v:g} kWh; expected 0 (none) or more")
                if v == 0:
                    d.pop("battery", None)
                else:
                    b = d.get("battery") or {"capacity_kwh": v, "max_charge_w": 500.0 * v, "max_discharge_w": 500.0 * v}
                    rate = v / b["capacity_kwh"]
                    d["battery"] = {**b, "capacity_kwh": v, "max_charge_w": b["max_charge_w"] * rate,
                                    "max_discharge_w": b["max_discharge_w"] * rate}
            elif name == "battery_kw":
                v = float(v)
                if not v > 0:
                    raise ValueError(f"{v:g} kW; expected more than 0")
                if "battery" not in d and "battery_kwh" not in axes:
                    raise ValueError(f"house {house.name!r} has no battery to give {v:g} kW (add a battery_kwh axis)")
                if "battery" in d:  # (a sweep's battery_kwh = 0: no battery to give power to)
                    d["battery"] = {**d["battery"], "max_charge_w": 1000.0 * v, "max_discharge_w": 1000.0 * v}
            elif name == "pv_kwp":
                v = float(v)
                if v < 0 or not math.isfinite(v):
                    raise ValueError(f"{v:g} kWp; expected 0 (none) or more")
                arrays = d.get("pv") or []
                if v == 0:
                    d["pv"] = []
                elif not arrays:
                    d["pv"] = [{"kwp": v, "tilt_deg": 35.0, "azimuth_deg": 180.0}]
                else:
                    total = sum(a["kwp"] for a in arrays)
                    d["pv"] = [{**a, "kwp": a["kwp"] * v / total} for a in arrays]
                    inv = d.get("inverter")
                    if inv and inv.get("ac_limit_w") is not None and v > total:  # the inverter grows with the array
                        inv["ac_limit_w"] = inv["ac_limit_w"] * v / total
            elif name == "insulation":
                v = float(v)
                if not v > 0:
                    raise ValueError(f"a factor of {v:g}; expected more than 0")
                for room, rd in zip(house.rooms, d["rooms"]):
                    pri = room_priors(room, house)
                    params = rd.setdefault("params", {})
                    h_out = params.get("H_out", pri.get("H_out"))
                    params["H_out"] = float(h_out) * v
            elif name == "heating":
                d.setdefault("heating", {})["kind"] = v
            else:  # house.<key>
                _set_dotted(d, name.removeprefix("house."), v)
        except (ValueError, TypeError) as exc:
            raise InputError(src, key, str(exc)) from None
    try:
        return House.model_validate(d)
    except ValueError as exc:
        raise InputError(src, f"axes.{_blamed(exc, list(axes), house=True)}", _first_error(exc)) from None


# ---------------------------------------------------------------------------------------------
# one task (on a worker)
# ---------------------------------------------------------------------------------------------
def run_task(task: Mapping[str, Any]) -> dict[str, Any]:
    """Run one task; never raises (a failure is a row with ``status = "failed"`` and its error).

    Returns the task's row: ``task``, the axes, ``controller``, ``status``, ``error``, every KPI,
    ``day_after_cost``, ``wall_s``, ``worker`` (host:pid) and ``peak_rss_mb`` of the process so far."""
    from pems.memory import return_freed_memory
    from pems.threads import limit_threads

    limit_threads()  # one core per task: the worker's other tasks have the others
    return_freed_memory()  # what one task frees is the system's again, not held for the next
    t = Task(**{k: v for k, v in task.items() if k != "id"}, id=task.get("id", ""))
    trace = os.environ.get("PEMS_SWEEP_TRACE")
    if trace:  # (diagnostics: which process started which task, and how often)
        with open(Path(trace) / f"{t.id}.log", "a", encoding="utf-8") as f:
            f.write(f"{socket.gethostname()}:{os.getpid()} {time.time():.3f}\n")
    row = t.row(worker=f"{socket.gethostname()}:{os.getpid()}")
    t0 = time.perf_counter()
    try:
        from pems.scenarios.bench import day_after_cost
        from pems.scenarios.runner import prepare, run

        sc = build_scenario(t)
        prep = prepare(sc)
        result = run(prep, t.controller)
        row.update(status="ok", error=None, **{k: _plain(v) for k, v in result.kpis.items()},
                   day_after_cost=_plain(day_after_cost(prep, result)), currency=result.currency,
                   steps=len(result.trajectory), run_days=prep.n_steps * sc.step.total_seconds() / 86400.0)
        if t.keep_dir:
            keep = Path(t.keep_dir) / t.id
            keep.mkdir(parents=True, exist_ok=True)
            result.trajectory.to_parquet(keep / "trajectory.parquet")
            (keep / "kpis.json").write_text(json.dumps({k: _plain(v) for k, v in result.kpis.items()}, indent=1))
    except Exception as exc:  # noqa: BLE001 - one task's failure is its row, not the sweep's end
        row.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                   traceback="".join(traceback.format_exception(exc))[-4000:])
    row["wall_s"] = time.perf_counter() - t0
    row["peak_rss_mb"] = _peak_rss_mb()
    return row


def _plain(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return v


def _peak_rss_mb() -> float:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB
    except Exception:  # noqa: BLE001
        return math.nan


# ---------------------------------------------------------------------------------------------
# the sweep
# ---------------------------------------------------------------------------------------------
def task_path(out: Path, task_id: str) -> Path:
    return out / TASKS_DIR / f"{task_id}.json"


def finished(out: Path, tasks: Sequence[Task]) -> set[str]:
    """Ids of the tasks already run to the end (``status = "ok"``) in ``out``."""
    done = set()
    for t in tasks:
        p = task_path(out, t.id)
        try:
            if json.loads(p.read_text()).get("status") == "ok":
                done.add(t.id)
        except (OSError, ValueError):
            continue
    return done


@dataclass(frozen=True)
class Merged:
    """What :func:`merge_finished` took from another output folder of the same sweep."""

    source: Path
    copied: int  # finished tasks copied in
    already: int  # finished here too: this folder's own are kept
    foreign: int  # not tasks of this sweep (another sweep, or an edited house, file or PEMS)
    unfinished: int  # failed or cut short there: they run here
    runs: int  # runs of the command logged there, added to this folder's log


def merge_finished(out: Path, tasks: Sequence[Task], source: Path, dry_run: bool = False) -> Merged:
    """Copy the finished tasks of this sweep from ``source`` (the output folder of a piece of it run
    elsewhere: another machine, a cluster without a shared disk) into ``out``, with the log of its
    runs, so that ``out`` resumes from both and its table and report hold every piece.

    A task's id is a hash of what it runs, so a file from another sweep or from an edited house is
    not taken; nothing in ``out`` is overwritten. ``dry_run``: count, copy nothing."""
    ids = {t.id for t in tasks}
    if not (source / TASKS_DIR).is_dir():
        raise InputError(str(source), "--merge", f"expected the output folder of a sweep (with {TASKS_DIR}/ in it)")
    if out.exists() and source.resolve() == out.resolve():
        raise InputError(str(source), "--merge", "is the output folder itself; expected another sweep's output")
    here_done = finished(out, tasks) if out.is_dir() else set()
    take: list[dict[str, Any]] = []
    already = foreign = unfinished = 0
    for path in sorted((source / TASKS_DIR).glob("*.json")):
        try:
            row = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            unfinished += 1  # cut short there: runs here
            continue
        if row.get("task") not in ids:
            foreign += 1
        elif row.get("status") != "ok":
            unfinished += 1
        elif row["task"] in here_done:
            already += 1
        else:
            take.append(row)
    here = {(r.get("started"), r.get("ended")) for r in sessions(out)}
    theirs = [r for r in sessions(source) if (r.get("started"), r.get("ended")) not in here]
    if not dry_run and (take or theirs):
        (out / TASKS_DIR).mkdir(parents=True, exist_ok=True)
        for row in take:
            save_row(out, row)  # (atomic: a merge cut short leaves no half file)
        _append_runs(out, [{**r, "merged_from": str(source.resolve())} for r in theirs])
    return Merged(source, len(take), already, foreign, unfinished, len(theirs))


def save_row(out: Path, row: Mapping[str, Any]) -> None:
    """One task's row, written atomically (a sweep killed meanwhile leaves no half file)."""
    path = task_path(out, row["task"])
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(row, default=_json_default, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def _json_default(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, (pd.Timestamp,)):
        return v.isoformat()
    return str(v)


def results_table(out: Path, tasks: Sequence[Task]) -> pd.DataFrame:
    """Every task's row (as far as run) in the sweep's order: axes as columns beside every KPI."""
    rows = []
    for i, t in enumerate(tasks):
        try:
            row = json.loads(task_path(out, t.id).read_text())
        except (OSError, ValueError):
            row = t.row(status="not run")
        row["order"] = i
        rows.append(row)
    df = pd.DataFrame(rows)
    df = df.rename(columns={c: c.removeprefix("axis:") for c in df.columns if c.startswith("axis:")})
    df = df.drop(columns=[c for c in ("traceback",) if c in df.columns])
    for c in df.columns:  # parquet: one type per column (an axis of mixed values goes as text)
        if df[c].dtype == object and df[c].map(type).nunique() > 1 and c not in ("error",):
            df[c] = df[c].map(lambda v: None if v is None or (isinstance(v, float) and v != v) else str(v))
    return df.sort_values("order").drop(columns="order").reset_index(drop=True)


#: Axes that size an investment: their smallest value is the reference the others save against.
SIZE_AXES = ("battery_kwh", "pv_kwp")


def with_savings(table: pd.DataFrame, spec: SweepSpec) -> pd.DataFrame:
    """The table with what people ask of a sweep, per row:

    - ``cost_settled``: the cost plus what the state left is worth the day after (``day_after_cost``;
      the cost alone where there is none), so runs that empty the battery at the end are not cheaper;
    - ``cost_per_year``: the bill scaled to 365 days;
    - ``saving_per_year``: ``cost_settled`` against the row with the same controller and other axes at
      the smallest battery and PV of the sweep (its reference), scaled to 365 days;
    - ``investment``: the extra battery and PV over that reference, at ``[costs]``;
    - ``payback_years``: ``investment / saving_per_year`` (inf where it saves nothing);
    - ``gap_to_oracle``: ``(cost_settled − the oracle's) / |the oracle's cost|`` on the same axes (as
      ``pems bench``'s distance to the bound).
    """
    df = table.copy()
    if "cost" not in df.columns:
        return df
    ok = df["status"] == "ok"
    da = df["day_after_cost"] if "day_after_cost" in df.columns else pd.Series(np.nan, index=df.index)
    df["cost_settled"] = np.where(ok, df["cost"] + da.where(np.isfinite(da.astype(float)), 0.0), np.nan)
    days = df["run_days"] if "run_days" in df.columns else pd.Series(np.nan, index=df.index)
    per_year = 365.0 / days
    df["cost_per_year"] = df["cost"] * per_year
    axes = [a for a in spec.axes if a in df.columns]
    sizes = [a for a in SIZE_AXES if a in axes]
    others = [a for a in axes if a not in sizes]
    df["saving_per_year"] = np.nan
    df["investment"] = 0.0
    if sizes:
        ref_size = {a: min(spec.axes[a]) for a in sizes}
        key_cols = [*others, "controller"]
        is_ref = np.logical_and.reduce([df[a].astype(float) == ref_size[a] for a in sizes])
        refs = df[is_ref & ok].set_index(key_cols)["cost_settled"]
        for i, row in df.iterrows():
            key = tuple(row[c] for c in key_cols)
            ref = refs.get(key if len(key) > 1 else key[0], np.nan)
            df.at[i, "saving_per_year"] = (ref - row["cost_settled"]) * per_year[i]
            inv = 0.0
            if "battery_kwh" in sizes:
                inv += (float(row["battery_kwh"]) - ref_size["battery_kwh"]) * spec.costs.battery_per_kwh
            if "pv_kwp" in sizes:
                inv += (float(row["pv_kwp"]) - ref_size["pv_kwp"]) * spec.costs.pv_per_kwp
            df.at[i, "investment"] = inv
    sav = df["saving_per_year"]
    # never pays back where it saves nothing; unknown where the saving is (a failed run or reference)
    df["payback_years"] = np.where(sav > 0, df["investment"] / sav.where(sav > 0, np.nan),
                                   np.where(sav.notna(), np.inf, np.nan))
    df.loc[df["investment"] <= 0, "payback_years"] = np.nan
    df["gap_to_oracle"] = np.nan
    if "oracle" in set(df["controller"]):
        orc = df[(df["controller"] == "oracle") & ok]
        orc = orc.set_index(axes) if axes else orc
        for i, row in df.iterrows():
            if axes:
                key = tuple(row[a] for a in axes)
                key = key if len(key) > 1 else key[0]
                ref, ref_cost = (orc["cost_settled"].get(key, np.nan), orc["cost"].get(key, np.nan))
            else:
                ref, ref_cost = (orc["cost_settled"].iloc[0], orc["cost"].iloc[0]) if len(orc) else (np.nan, np.nan)
            # as the bench: the settled difference, relative to the oracle's own bill
            df.at[i, "gap_to_oracle"] = ((row["cost_settled"] - ref) / abs(ref_cost)
                                         if np.isfinite(ref) and ref_cost else np.nan)
    return df


@dataclass
class SweepRun:
    """What a sweep did: tasks run now, skipped as finished, failed; the table; wall time."""

    tasks: int
    skipped: int
    ran: int
    failed: int
    table: pd.DataFrame
    wall_s: float
    workers: int


def connect(scheduler: str | None, workers: int | None) -> tuple[Any, Any]:
    """A Dask client: on ``scheduler`` (``tcp://HOST:PORT``), or on a new ``LocalCluster`` of
    ``workers`` processes (default: this machine's cores), one thread each (a run is one core)."""
    from distributed import Client, LocalCluster

    # Dask logs its cluster's comings and goings at INFO: the sweep's own lines say what matters
    root = logging.getLogger().getEffectiveLevel()
    for name in [n for n in logging.root.manager.loggerDict if n.split(".")[0] in ("distributed", "bokeh", "tornado")]:
        logging.getLogger(name).setLevel(max(root, logging.WARNING))
    if scheduler:
        try:
            return Client(scheduler, timeout="20s"), None
        except (OSError, TimeoutError) as exc:
            from pems.errors import ServiceError

            raise ServiceError(f"--scheduler {scheduler}: no Dask scheduler answered ({exc})") from None
    import socket

    import dask

    n = workers or os.cpu_count() or 1
    # the dashboard on loopback only, its live plots only for pages from there (Dask's default allows any
    # origin, "*", which bokeh warns about); bokeh wants the port in the allowed origins, so it is chosen here
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with dask.config.set({"distributed.scheduler.dashboard.bokeh-application.allow_websocket_origin":
                          [f"127.0.0.1:{port}", f"localhost:{port}"]}):
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               dashboard_address=f"127.0.0.1:{port}", silence_logs=40)
    try:
        return Client(cluster), cluster
    except BaseException:
        cluster.close()
        raise


def run_sweep(spec: SweepSpec, tasks: Sequence[Task], out: Path, scheduler: str | None = None,
              workers: int | None = None, on_row: Callable[[dict, int, int], None] | None = None,
              on_start: Callable[[Any, int], None] | None = None) -> SweepRun:
    """Run what is not finished in ``out`` on Dask; write each row as it comes, then the table.

    ``on_start(client, n_todo)`` once connected (the command line shows the dashboard and a bar);
    ``on_row(row, done, total)`` after each task."""
    from distributed import as_completed
    from distributed.client import FutureCancelledError

    out.mkdir(parents=True, exist_ok=True)
    (out / TASKS_DIR).mkdir(exist_ok=True)
    t0 = time.perf_counter()
    done = finished(out, tasks)
    keep = str((out / "runs").resolve()) if spec.keep_runs else None
    todo = [replace(t, keep_dir=keep) for t in tasks if t.id not in done]
    failed = ran = 0
    n_workers = 0
    started = pd.Timestamp.now(tz="UTC")
    completed = False
    if todo:
        client, cluster = connect(scheduler, workers)
        try:
            n_workers = len(client.scheduler_info().get("workers", {}))
            if on_start is not None:
                on_start(client, len(todo))
            futures = {client.submit(run_task, t.as_dict(), key=f"pems-sweep-{t.id}", pure=False): t for t in todo}
            for fut in as_completed(list(futures)):
                t = futures.pop(fut)
                try:
                    row = fut.result()
                except (Exception, FutureCancelledError) as exc:  # noqa: BLE001 - a worker lost too often
                    row = t.row(status="failed", error=f"{type(exc).__name__}: {exc}")
                # Its row is ours now: the cluster may forget it. A result left in a worker's memory would
                # be computed again if that worker died (Dask recomputes what a client still holds).
                fut.release()
                del fut
                save_row(out, row)
                ran += 1
                failed += row.get("status") != "ok"
                if on_row is not None:
                    on_row(row, ran, len(todo))
            completed = True
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
            log_session(out, started, time.perf_counter() - t0, n_workers, scheduler, ran, failed, completed)
    table = with_savings(results_table(out, tasks), spec)
    table.to_parquet(out / RESULTS_FILE)
    return SweepRun(len(tasks), len(done), ran, failed, table, time.perf_counter() - t0, n_workers)


def log_session(out: Path, started: pd.Timestamp, wall_s: float, n_workers: int, scheduler: str | None,
                ran: int, failed: int, completed: bool) -> None:
    """Append this run of the sweep to :data:`SESSIONS_FILE` (an interrupted one too): a sweep resumed
    across days has its wall time as the sum of its pieces."""
    rec = {"started": started.isoformat(), "ended": pd.Timestamp.now(tz="UTC").isoformat(), "wall_s": round(wall_s, 1),
           "workers": n_workers, "scheduler": scheduler, "ran": ran, "failed": failed, "completed": completed}
    try:
        _append_runs(out, [rec])
    except OSError as exc:  # (a full disk must not hide what ended the run)
        logging.getLogger(__name__).warning("sweep: could not log this run in %s: %s", out / SESSIONS_FILE, exc)


def _append_runs(out: Path, records: Sequence[Mapping[str, Any]]) -> None:
    """Append runs of the sweep command to :data:`SESSIONS_FILE`, a JSON line each."""
    if records:
        with open(out / SESSIONS_FILE, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)


def sessions(out: Path) -> list[dict[str, Any]]:
    """The sweep's runs so far (:func:`log_session`), oldest first; none where it never ran."""
    try:
        text = (out / SESSIONS_FILE).read_text(encoding="utf-8")
    except OSError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line cut short by a machine that died mid-write
            continue
    return rows


def wall_time(runs: list[dict[str, Any]]) -> tuple[float, list[dict[str, Any]]]:
    """The sweep's wall time so far [s] and the runs it took: those that finished a task (one
    interrupted before its first lost only its own time)."""
    worked = [r for r in runs if r.get("ran", 0) > 0]
    return sum(float(r.get("wall_s", 0.0)) for r in worked), worked


#: The two slices [days] a dry run times of a task more than half again as long as the second.
SLICE_DAYS = (3.0, 7.0)


def slice_days(controller: str) -> tuple[float, float]:
    """The two slices [days] a dry run times of a long task of ``controller``.

    The oracle solves a long run window by window (:data:`~pems.controllers.oracle.WINDOW_DAYS` of
    LP, the day after the run included, each committing
    :data:`~pems.controllers.oracle.COMMIT_DAYS`), and one window's LP costs far more per day than a
    week's: its slices are one whole window and two, so the line through them is a window's cost per
    day it commits. Measured on the reference house's year (on the same loaded machine): 3 and 7 days
    put it at 1156 s, one window and two at 1570 s, and it ran in 1627 s."""
    if controller == "oracle":
        from pems.controllers.oracle import COMMIT_DAYS, WINDOW_DAYS

        one = WINDOW_DAYS - 1.0  # the run and the day after it: exactly one window
        return one, one + COMMIT_DAYS
    return SLICE_DAYS


def estimate(task: Task) -> tuple[float, dict[str, Any], str]:
    """Wall time of one task [s] as run here, in this process, its row and how it was measured (the
    dry run's measure). A long task is not run whole (a year of MPC is half an hour): it runs two
    slices of it from its start (:func:`slice_days`), and the time is extrapolated along the line
    through them (a fixed part, the set-up and the day after, and a part per day)."""
    days = float(build_scenario(task).spec.days)
    slices = slice_days(task.controller)
    if days <= slices[1] * 1.5:
        row = run_task(task.as_dict())
        return float(row["wall_s"]), row, "run whole"
    rows = [run_task(replace(task, axes={**task.axes, "days": d}, id=f"{task.id}-{d:g}d", keep_dir=None).as_dict())
            for d in slices]
    (d0, d1), (t0, t1) = slices, [float(r["wall_s"]) for r in rows]
    per_day = max((t1 - t0) / (d1 - d0), t1 / d1 * 0.5)  # (timing noise: never below half the mean rate)
    fixed = max(t1 - per_day * d1, 0.0)
    how = f"{d0:g} and {d1:g} days run, {days:g} on their line"
    return fixed + per_day * days, rows[-1], how
