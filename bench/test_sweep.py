"""Sweep throughput: one-week tasks of the reference house on a Dask ``LocalCluster`` of this machine.

Issue 19 asks for tasks per minute of a sweep of one-week simulations with the rule-based controller
and with the MPC, and the speed-up from one worker to two. Each benchmark runs the same sweep twice
in the same session, on one worker and on two (a new cluster each: its start is part of the wall
time, as a user meets it), into fresh output folders (nothing resumed). ``extra_info`` carries the
tasks per minute on each and the speed-up; the timed round is the two-worker run.

The tasks are a sizing grid of the built-in winter week (17 rooms, 1-minute plant step, 15-minute
control step): battery 0, 5, 10 and 15 kWh (× PV 5 and 10 kWp for the rule-based sweep), so every
task is a different house, as in a real sweep.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pems.scenarios.sweep import load_sweep, run_sweep

GRIDS = {
    "rule-based": "battery_kwh = [0, 5, 10, 15]\npv_kwp = [5, 10]\n",
    "mpc": "battery_kwh = [0, 5, 10, 15]\n",
}


def _sweep(tmp_path: Path, controller: str):
    path = tmp_path / f"{controller}.toml"
    path.write_text(f'name = "bench-{controller}"\nscenario = "winter-week"\ncontrollers = ["{controller}"]\n'
                    f"[axes]\n{GRIDS[controller]}")
    return load_sweep(path)


@pytest.mark.parametrize("controller", list(GRIDS))
def test_one_week_sweep_tasks_per_minute(benchmark, tmp_path, controller):
    spec, tasks = _sweep(tmp_path, controller)
    walls: dict[int, float] = {}

    def on(workers: int) -> None:
        t0 = time.perf_counter()
        res = run_sweep(spec, tasks, tmp_path / f"out-{workers}", workers=workers)
        walls[workers] = time.perf_counter() - t0
        assert (res.ran, res.failed, res.workers) == (len(tasks), 0, workers)

    on(1)
    benchmark.pedantic(on, args=(2,), rounds=1, iterations=1)
    per_min = {w: 60.0 * len(tasks) / s for w, s in walls.items()}
    benchmark.extra_info.update(tasks=len(tasks), wall_1_worker_s=round(walls[1], 1),
                                wall_2_workers_s=round(walls[2], 1),
                                tasks_per_minute_1_worker=round(per_min[1], 2),
                                tasks_per_minute_2_workers=round(per_min[2], 2),
                                speedup_1_to_2=round(walls[1] / walls[2], 2))
    # Two workers on two cores: not slower than one (each task is one core; the scheduler and the
    # cluster's start are the overhead). A ratio below 1 means the tasks fought over something.
    assert walls[2] < walls[1]
