"""What a results folder holds: the outputs PEMS writes, recognised by their files.

``pems bench`` (``kpis.csv`` beside ``report.html``), ``pems simulate`` (``kpis.json``),
``pems calibrate`` (``calibration.json``), ``pems forecast backtest``/``fit`` (``metrics.json``) and a
model registry (``*/*/v###/card.json``). Each becomes a :class:`Result` with the few numbers that say
what it is, read from its own files; a file that cannot be read is listed with the problem, never
a crash.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The marker file of each kind of output, in the order they are recognised (a bench's folder
#: holds runs' folders below it, each its own result).
MARKERS = (("bench", "kpis.csv"), ("run", "kpis.json"), ("calibration", "calibration.json"),
           ("backtest", "metrics.json"))


@dataclass
class Result:
    """One output folder."""

    kind: str  # bench | run | calibration | backtest
    path: str  # the folder, relative to the served root ("." for the root itself)
    title: str
    summary: dict[str, Any] = field(default_factory=dict)
    report: str | None = None  # its report.html, relative to the root
    problem: str | None = None  # why its numbers could not be read


def find_results(root: Path, max_depth: int = 4) -> list[Result]:
    """Every output folder under ``root`` (at most ``max_depth`` levels down), sorted by path."""
    root = root.resolve()
    out = []
    for folder in _folders(root, max_depth):
        for kind, marker in MARKERS:
            if (folder / marker).is_file():
                out.append(_result(root, folder, kind, folder / marker))
                break
    return sorted(out, key=lambda r: r.path)


def _folders(root: Path, max_depth: int):
    stack = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        yield folder
        if depth < max_depth:
            try:
                subs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
            except OSError:
                continue
            stack.extend((p, depth + 1) for p in reversed(subs))


def _result(root: Path, folder: Path, kind: str, marker: Path) -> Result:
    rel = folder.relative_to(root).as_posix() or "."
    report = folder / "report.html"
    res = Result(kind, rel, rel if rel != "." else root.name,
                 report=report.relative_to(root).as_posix() if report.is_file() else None)
    try:
        if kind == "bench":
            with marker.open(encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
            res.summary = {"runs": len(rows), "scenarios": sorted({r.get("scenario", "") for r in rows}),
                           "controllers": sorted({r.get("controller", "") for r in rows})}
            best = _best(rows)
            if best:
                res.summary["lowest cost"] = best
        elif kind == "run":
            k = json.loads(marker.read_text(encoding="utf-8"))
            res.title = f"{k.get('scenario', rel)} · {k.get('controller', '')}"
            res.summary = {key: k[key] for key in ("cost", "discomfort_Kh", "heating_kWh", "self_sufficiency")
                           if key in k}
            if "currency" in k:
                res.summary["currency"] = k["currency"]
        elif kind == "calibration":
            c = json.loads(marker.read_text(encoding="utf-8"))
            s = c.get("summary", {})
            res.title = f"calibration · {c.get('house', {}).get('name', rel) if isinstance(c.get('house'), dict) else rel}"
            res.summary = {k: s[k] for k in ("rmse_24h_k_mean", "rmse_1step_k_mean", "validation_days", "warnings")
                           if k in s}
        elif kind == "backtest":
            m = json.loads(marker.read_text(encoding="utf-8"))
            res.summary = {k: v for k, v in m.items() if isinstance(v, (int, float, str))}
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        res.problem = f"{marker.name}: {exc}"
    return res


def _best(rows: list[dict[str, str]]) -> str | None:
    """The controller with the lowest cost per scenario, as text."""
    by: dict[str, tuple[float, str]] = {}
    for r in rows:
        try:
            cost = float(r.get("cost", "nan"))
        except ValueError:
            continue
        s = r.get("scenario", "")
        if cost == cost and (s not in by or cost < by[s][0]):
            by[s] = (cost, r.get("controller", ""))
    return "; ".join(f"{s}: {c} ({v:.2f})" for s, (v, c) in sorted(by.items())) or None


def find_model_cards(root: Path) -> list[dict[str, Any]]:
    """The model cards of every registry under ``root`` (``role/name/v###/card.json``)."""
    out = []
    for p in sorted(root.resolve().glob("**/*/*/v[0-9][0-9][0-9]/card.json")):
        try:
            card = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        card["_path"] = p.relative_to(root.resolve()).as_posix()
        out.append(card)
    return out
