"""Writing a run's outputs: ``trajectory.parquet``, ``kpis.json``, ``events.jsonl``, ``report.html``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pems.scenarios.report import write_report
from pems.scenarios.runner import RunResult


def _jsonable(v):
    if isinstance(v, pd.Timestamp):
        return v.isoformat()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def write_run(result: RunResult, out: Path, title: str | None = None, subtitle: str = "",
              report_runs: Sequence[RunResult] | None = None) -> None:
    """Write one run's files into ``out`` (created if needed)."""
    out.mkdir(parents=True, exist_ok=True)
    result.trajectory.to_parquet(out / "trajectory.parquet")
    kpis = {k: _jsonable(v) for k, v in result.kpis.items()}
    kpis = {"scenario": result.scenario, "controller": result.controller, "currency": result.currency, **kpis}
    (out / "kpis.json").write_text(json.dumps(kpis, indent=2) + "\n", encoding="utf-8")
    with open(out / "events.jsonl", "w", encoding="utf-8") as f:
        for e in result.events:
            f.write(json.dumps({k: _jsonable(v) for k, v in e.items()}) + "\n")
    write_report(out / "report.html", list(report_runs or [result]),
                 title or f"{result.scenario} · {result.controller}", subtitle)
