"""Benchmarks: every scenario × controller on identical inputs, scored by the harness.

``pems bench`` writes ``kpis.csv`` (one row per scenario × controller: every KPI of docs/reference/kpis.md plus
the distance to the perfect-foresight oracle) and ``report.html`` (KPI tables, comparison charts,
where the money goes by hour of day and by price, trajectories overlaid), and each run's own outputs
under ``<scenario>/<controller>/``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pems.scenarios.kpis import KPI_UNITS
from pems.scenarios.runner import RunResult, prepare, run
from pems.controllers import needs_history
from pems.scenarios.spec import load_scenario

#: Columns of kpis.csv after ``scenario`` and ``controller``.
EXTRA_COLUMNS = ("cost_gap_to_oracle", "discomfort_Kh_per_room_vs_rule_based", "fallbacks", "wall_s")

ProgressFactory = Callable[[str], tuple[object, Callable[[int, int], None]]]


def kpi_frame(results: Sequence[RunResult]) -> pd.DataFrame:
    """One row per run: scenario, controller, every KPI, distance to the oracle and to rule-based."""
    rows = []
    for r in results:
        row = {"scenario": r.scenario, "controller": r.controller, **r.kpis}
        row["fallbacks"] = sum(1 for e in r.events if e.get("kind") == "fallback")
        row["wall_s"] = r.wall_s
        rows.append(row)
    df = pd.DataFrame(rows)
    df["cost_gap_to_oracle"] = np.nan
    df["discomfort_Kh_per_room_vs_rule_based"] = np.nan
    for sc, grp in df.groupby("scenario"):
        oracle = grp[grp["controller"] == "oracle"]
        if len(oracle):
            c0 = float(oracle["cost"].iloc[0])
            df.loc[grp.index, "cost_gap_to_oracle"] = (grp["cost"] - c0) / abs(c0) if c0 else np.nan
        rb = grp[grp["controller"] == "rule-based"]
        if len(rb):
            df.loc[grp.index, "discomfort_Kh_per_room_vs_rule_based"] = (
                grp["discomfort_Kh_per_room"] - float(rb["discomfort_Kh_per_room"].iloc[0]))
    cols = ["scenario", "controller", *KPI_UNITS, *EXTRA_COLUMNS]
    return df[[c for c in cols if c in df.columns]]


def run_bench(scenarios: Sequence[str], controllers: Sequence[str], out: Path,
              progress: ProgressFactory | None = None, extra_runs: Callable | None = None) -> pd.DataFrame:
    """Run, write outputs and the report; returns the KPI frame."""
    from pems.scenarios.outputs import write_run
    from pems.scenarios.report import write_bench_report

    out.mkdir(parents=True, exist_ok=True)
    results: list[RunResult] = []
    for name in scenarios:
        sc = load_scenario(name)
        prep = prepare(sc)
        for ctrl in controllers:
            if needs_history(ctrl) and prep.history is None:
                print(f"skipped {ctrl} on {sc.name}: it learns from a history, which only scenarios "
                      "with a [truth] section provide")
                continue
            if progress is not None:
                bar, update = progress(f"{sc.name} · {ctrl}")
                with bar:
                    r = run(prep, ctrl, progress=update)
            else:
                r = run(prep, ctrl)
            write_run(r, out / sc.name / ctrl, subtitle=f"house {sc.house.name}")
            results.append(r)
            frame = kpi_frame(results)
            frame.to_csv(out / "kpis.csv", index=False)  # after every run: a long bench can be watched
        if extra_runs is not None:
            results += list(extra_runs(prep, out))
    frame = kpi_frame(results)
    frame.to_csv(out / "kpis.csv", index=False)
    write_bench_report(out / "report.html", results, frame)
    return frame
