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

from pems.scenarios.kpis import EV_KPIS, KPI_UNITS
from pems.scenarios.runner import RunResult, prepare, run
from pems.controllers import needs_history
from pems.scenarios.spec import load_scenario

#: Columns of kpis.csv after ``scenario`` and ``controller``.
EXTRA_COLUMNS = ("cost_gap_to_oracle", "day_after_cost", "discomfort_Kh_per_room_vs_rule_based", "fallbacks",
                 "wall_s")

ProgressFactory = Callable[[str], tuple[object, Callable[[int, int], None]]]


def day_after_cost(prep, result: RunResult) -> float:
    """What the state a run leaves is worth: the optimal cost of the day after it from there [currency].

    Runs end in different states: one controller leaves the battery full and the slabs warm, another
    empties both in the last hours and looks cheaper for it. Charging every run the cost of the best
    possible next day (perfect foresight, the scenario's weights, the OCP's terminal value at its end)
    from the state it left makes their costs comparable; the oracle, which plans through that day,
    is then a true lower bound. NaN where the run has no end state or the table no day after it.
    """
    import dataclasses

    from pems.controllers.oracle import solve_plan
    from pems.controllers.registry import weights
    from pems.scenarios.forecast import ForecastProvider
    from pems.scenarios.spec import ForecastSpec

    sc, n = prep.scenario, prep.n_steps
    day = int(round(pd.Timedelta(days=1) / sc.step))
    if result.x_end is None or len(prep.inputs) < n + day:
        return float("nan")
    # the truth only: no forecasters to fit (a learned scenario's would be fitted again per run)
    truth = ForecastProvider(ForecastSpec(), prep.inputs, prep.model.sym.d.names, prep.comfort_low,
                             prep.comfort_high, sc.horizon_steps, sc.step)
    after = dataclasses.replace(truth.perfect(n, n + day), extras={})
    return float(solve_plan(prep.model, sc.step.total_seconds(), weights(sc.spec.mpc.model_dump()),
                            result.x_end, after)[1])


def kpi_frame(results: Sequence[RunResult], day_after: dict[tuple[str, str], float] | None = None) -> pd.DataFrame:
    """One row per run: scenario, controller, every KPI, distance to the oracle and to rule-based.

    With ``day_after`` (per scenario and controller, :func:`day_after_cost`) the distance to the
    oracle counts what each run leaves: ``(cost + day after) − (oracle's cost + its day after)``,
    relative to the oracle's cost; without it, costs alone.
    """
    day_after = day_after or {}
    rows = []
    for r in results:
        row = {"scenario": r.scenario, "controller": r.controller, **r.kpis}
        row["day_after_cost"] = day_after.get((r.scenario, r.controller), np.nan)
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
            settled = grp["cost"] + grp["day_after_cost"] - float(oracle["day_after_cost"].iloc[0])
            cost = settled if settled.notna().all() else grp["cost"]
            df.loc[grp.index, "cost_gap_to_oracle"] = (cost - c0) / abs(c0) if c0 else np.nan
        rb = grp[grp["controller"] == "rule-based"]
        if len(rb):
            df.loc[grp.index, "discomfort_Kh_per_room_vs_rule_based"] = (
                grp["discomfort_Kh_per_room"] - float(rb["discomfort_Kh_per_room"].iloc[0]))
    cols = ["scenario", "controller", *KPI_UNITS, *EV_KPIS, *EXTRA_COLUMNS]  # the cars' where a house has one
    return df[[c for c in cols if c in df.columns]]


def run_bench(scenarios: Sequence[str], controllers: Sequence[str], out: Path,
              progress: ProgressFactory | None = None, extra_runs: Callable | None = None) -> pd.DataFrame:
    """Run, write outputs and the report; returns the KPI frame."""
    from pems.scenarios.outputs import write_run
    from pems.scenarios.report import write_bench_report

    out.mkdir(parents=True, exist_ok=True)
    results: list[RunResult] = []
    day_after: dict[tuple[str, str], float] = {}
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
            day_after[(r.scenario, r.controller)] = day_after_cost(prep, r)
            frame = kpi_frame(results, day_after)
            frame.to_csv(out / "kpis.csv", index=False)  # after every run: a long bench can be watched
        if extra_runs is not None:
            for r in extra_runs(prep, out):
                results.append(r)
                day_after[(r.scenario, r.controller)] = day_after_cost(prep, r)
    frame = kpi_frame(results, day_after)
    frame.to_csv(out / "kpis.csv", index=False)
    write_bench_report(out / "report.html", results, frame)
    return frame
