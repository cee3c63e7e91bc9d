"""``pems sweep``: axes expanded into tasks, run on Dask (a LocalCluster, or a real scheduler and
workers on 127.0.0.1), resumable, a failed task recorded beside the others, a killed worker losing
no task, a bad axis refused before anything runs."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tomli_w

sys.path.insert(0, str(Path(__file__).parents[1]))
from helpers import BATTERY_HOUSE, write_scenario  # noqa: E402

from pems.cli import main  # noqa: E402

#: What two runs of one task must agree on (the same table, whoever ran it).
COMPARED = ["cost", "discomfort_Kh", "heating_kWh", "energy_import_kWh", "energy_export_kWh", "battery_cycles",
            "day_after_cost", "saving_per_year"]


def sweep_file(folder: Path, axes: dict, controllers=("rule-based", "mpc"), **extra) -> Path:
    """A one-day scenario of the two-room battery house and a sweep over it."""
    sc = write_scenario(folder, BATTERY_HOUSE, weather="greensboro-tmy3", load="h25", prices="two-rate")
    path = folder / "sweep.toml"
    path.write_text(tomli_w.dumps({"name": "t", "scenario": sc.name, "controllers": list(controllers),
                                   "axes": axes, **extra}), encoding="utf-8")
    return path


def table(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "results.parquet")


@pytest.mark.parametrize(("axes", "key", "what"), [
    ({"battery_kwh": [5, -5]}, "axes.battery_kwh", "expected 0 (none) or more"),
    ({"insulation": [0]}, "axes.insulation", "more than 0"),
    ({"heating": ["steam"]}, "axes.heating", "heat_pump"),
    ({"windows": [1, 2]}, "axes.windows", "unknown axis"),
    ({"days": [0]}, "axes.days", "greater than 0"),
    ({"pv_kwp": []}, "axes.pv_kwp", "at least one value"),
    ({"house.grid.import_limit_w": [-1]}, "axes.house.grid.import_limit_w", "greater than 0"),
    ({"tariff.vat": ["a lot"]}, "axes.tariff.vat", "number"),
    # written without quotes, a dotted axis is a table in TOML: read as the axis it means
    ({"house": {"grid": {"import_limit_w": [-1]}}}, "axes.house.grid.import_limit_w", "greater than 0"),
    ({"tariff": {"vat": ["a lot"]}}, "axes.tariff.vat", "number"),
])
def test_a_bad_axis_is_refused_before_anything_runs(tmp_path, capsys, axes, key, what):
    path = sweep_file(tmp_path, axes)
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and key in err and what in err, err
    assert "Traceback" not in err and not (out / "tasks").exists()


def test_an_unknown_base_scenario_is_the_sweep_files_own_key(tmp_path, capsys):
    path = sweep_file(tmp_path, {"battery_kwh": [0]})
    path.write_text(path.read_text().replace('scenario = "', 'scenario = "no-such-'), encoding="utf-8")
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{path}: scenario: " in err and "not found" in err and "Traceback" not in err, err


def test_an_unknown_controller_and_a_cluster_address_that_is_not_one(tmp_path, capsys):
    path = sweep_file(tmp_path, {"battery_kwh": [0]}, controllers=["rule-based", "magic"])
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "controllers" in capsys.readouterr().err
    path = sweep_file(tmp_path, {"battery_kwh": [0]})
    assert main(["sweep", str(path), "--scheduler", "localhost", "--out", str(tmp_path / "out")]) == 2
    assert "--scheduler" in capsys.readouterr().err


def test_the_axes_change_the_house_and_the_scenario_as_they_say(tmp_path):
    from pems.scenarios.sweep import build_scenario, load_sweep

    path = sweep_file(tmp_path, {"battery_kwh": [0, 10], "pv_kwp": [2.5], "insulation": [0.5],
                                 "house.grid.import_limit_w": [12000], "seed": [3], "tariff.vat": [0.1]},
                      controllers=["rule-based"])
    spec, tasks = load_sweep(path)
    assert len(tasks) == 2 and len({t.id for t in tasks}) == 2
    none, big = (build_scenario(t) for t in tasks)
    assert none.house.battery is None
    b = big.house.battery  # 10 kWh at the house's own C-rate (5 kWh, 2.5/3 kW)
    assert (b.capacity_kwh, b.max_charge_w, b.max_discharge_w) == (10.0, 5000.0, 6000.0)
    assert sum(a.kwp for a in big.house.pv) == pytest.approx(2.5)
    assert big.house.grid.import_limit_w == 12000 and big.spec.forecast.seed == 3 and big.spec.tariff.vat == 0.1
    from pems.twin.priors import room_priors
    from pems.scenarios.spec import load_scenario

    base = load_scenario(tmp_path / "scenario.toml").house
    for r0, r1 in zip(base.rooms, big.house.rooms):
        h0 = r0.params.H_out if r0.params.H_out is not None else room_priors(r0, base)["H_out"]
        assert r1.params.H_out == pytest.approx(0.5 * h0)


@pytest.mark.slow
def test_a_sweep_on_a_local_cluster_resumes_and_records_a_failed_task(tmp_path, capsys):
    """Four tasks on a LocalCluster of two workers; a task that fails (a controller that learns from a
    history the scenario lacks) is a row with its error and the others finish; run again, only what
    did not finish runs."""
    path = sweep_file(tmp_path, {"battery_kwh": [0, 5]}, controllers=["rule-based", "mpc+correctors"])
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--workers", "2", "--out", str(out)]) == 5  # one controller failed
    said = capsys.readouterr().out.splitlines()
    # no terminal here (a log): a line per task as it finishes, its axes, cost and time, or its error
    done = [line for line in said if line.startswith("[")]
    assert sorted(line[:5] for line in done) == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"], said
    assert sum("rule-based (battery_kwh 5): cost " in line and " EUR in " in line for line in done) == 1, done
    assert sum("mpc+correctors (battery_kwh 0): failed: " in line and "history" in line for line in done) == 1
    t = table(out)
    assert list(t["status"]) == ["ok", "failed", "ok", "failed"]
    assert t.loc[t.status == "failed", "error"].str.contains("history").all()
    ok = t[t.status == "ok"]
    assert ok["cost"].notna().all() and list(ok["battery_kwh"]) == [0, 5]
    # the battery saves against none, at the house's own price of capacity
    assert ok["saving_per_year"].iloc[1] > 0 and ok["investment"].iloc[1] == pytest.approx(5 * 450.0)
    report = (out / "report.html").read_text()
    assert report.count("<img") >= 2
    # each controller's compute, measured in the sweep (the failed controller has none)
    compute = report.split("Compute per controller", 1)[1].split("</table>", 1)[0]
    assert "<td>rule-based</td><td>2</td>" in compute and "mpc+correctors" not in compute
    # resumed: the finished tasks are not run again, the failed ones are tried again
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "tasks").glob("*.json")}
    assert main(["sweep", str(path), "--workers", "2", "--out", str(out)]) == 5
    said = capsys.readouterr().out
    assert "ran 2 tasks (2 failed), 2 already finished" in said and "(the sweep in all: " in said and " in 2 runs)" in said
    # each run of the sweep is logged, so a sweep run in pieces has its wall time as their sum
    runs = [json.loads(line) for line in (out / "sessions.jsonl").read_text().splitlines()]
    assert [(r["ran"], r["failed"], r["workers"], r["completed"]) for r in runs] == [(4, 2, 2, True), (2, 2, 2, True)]
    assert all(0 < r["wall_s"] < 600 and r["started"] < r["ended"] for r in runs)
    assert "in 2 runs (interrupted and resumed), on 2 local workers" in (out / "report.html").read_text()
    again = {p.name: p.stat().st_mtime_ns for p in (out / "tasks").glob("*.json")}
    ids = dict(zip(t["task"], t["status"]))
    assert all(again[f"{k}.json"] == stamps[f"{k}.json"] for k, s in ids.items() if s == "ok")


def test_a_sweep_run_in_pieces_apart_is_merged_into_one_table_without_running_them_again(tmp_path, capsys):
    """A piece of a sweep run in another folder (another machine, no shared disk): ``--merge`` takes
    its finished tasks and the log of its runs, so only the rest runs and the table holds both; a
    file of another sweep or an unfinished task is not taken, nothing here is overwritten, a dry run
    copies nothing, and a folder that is not a sweep's output is refused with the flag named."""
    from pems.scenarios.sweep import load_sweep

    piece = sweep_file(tmp_path, {"battery_kwh": [0]}, controllers=["rule-based"])
    piece = piece.rename(tmp_path / "piece.toml")
    whole = sweep_file(tmp_path, {"battery_kwh": [0, 5]}, controllers=["rule-based"])
    elsewhere, here = tmp_path / "elsewhere", tmp_path / "here"
    assert main(["sweep", str(piece), "--workers", "1", "--out", str(elsewhere)]) == 0
    (elsewhere / "tasks" / "0123456789ab.json").write_text(json.dumps({"task": "0123456789ab", "status": "ok"}))
    _, tasks = load_sweep(whole)
    bigger = tasks[1].id  # battery 5: failed there, so it runs here
    (elsewhere / "tasks" / f"{bigger}.json").write_text(json.dumps({"task": bigger, "status": "failed"}))
    capsys.readouterr()
    # a dry run says what it would take and copies nothing
    assert main(["sweep", str(whole), "--dry-run", "--merge", str(elsewhere), "--out", str(here)]) == 0
    said = capsys.readouterr().out
    assert (f"would merge 1 finished task from {elsewhere} (1 not of this sweep; 1 unfinished: they run here); "
            "1 run of the command") in said, said
    assert not here.exists()
    assert main(["sweep", str(whole), "--workers", "1", "--merge", str(elsewhere), "--out", str(here)]) == 0
    said = capsys.readouterr().out
    assert f"merged 1 finished task from {elsewhere} (1 not of this sweep; 1 unfinished" in said, said
    assert "ran 1 tasks (0 failed), 1 already finished" in said and "(the sweep in all: " in said
    t = table(here)
    assert list(t["battery_kwh"]) == [0, 5] and (t["status"] == "ok").all()
    first = t["task"].iloc[0]
    assert (here / "tasks" / f"{first}.json").read_text() == (elsewhere / "tasks" / f"{first}.json").read_text()
    assert not (here / "tasks" / "0123456789ab.json").exists()
    assert json.loads((here / "tasks" / f"{bigger}.json").read_text())["status"] == "ok"  # run here
    runs = [json.loads(line) for line in (here / "sessions.jsonl").read_text().splitlines()]
    assert [r["ran"] for r in runs] == [1, 1] and runs[0]["merged_from"] == str(elsewhere.resolve())
    assert "pieces run apart and merged" in (here / "report.html").read_text()
    # merged again: its task is finished here too (kept as it is), its run already logged
    stamp = (here / "tasks" / f"{first}.json").stat().st_mtime_ns
    assert main(["sweep", str(whole), "--workers", "1", "--merge", str(elsewhere), "--out", str(here)]) == 0
    said = capsys.readouterr().out
    assert "merged 0 finished tasks from" in said and "1 finished here too" in said and " run of " not in said
    assert (here / "tasks" / f"{first}.json").stat().st_mtime_ns == stamp
    assert len((here / "sessions.jsonl").read_text().splitlines()) == 2
    for bad in (tmp_path / "nothing-here", here):
        assert main(["sweep", str(whole), "--merge", str(bad), "--out", str(here)]) == 2
        err = capsys.readouterr().err
        assert "--merge" in err and str(bad) in err and "Traceback" not in err, err


@pytest.mark.slow
@pytest.mark.service
def test_the_same_table_on_a_local_cluster_and_on_a_real_scheduler_with_two_workers(tmp_path):
    from services import dask_cluster

    path = sweep_file(tmp_path, {"battery_kwh": [0, 5], "pv_kwp": [5]})
    local, remote = tmp_path / "local", tmp_path / "remote"
    assert main(["sweep", str(path), "--workers", "2", "--out", str(local)]) == 0
    with dask_cluster(tmp_path / "dask", workers=2) as cluster:
        assert main(["sweep", str(path), "--scheduler", cluster.address, "--out", str(remote)]) == 0
    a, b = table(local), table(remote)
    assert list(a["task"]) == list(b["task"]) and (a["status"] == "ok").all() and (b["status"] == "ok").all()
    pd.testing.assert_frame_equal(a[COMPARED], b[COMPARED], rtol=1e-9, atol=1e-9)
    assert b["worker"].nunique() == 2  # both workers of the cluster ran tasks


@pytest.mark.slow
@pytest.mark.service
def test_a_worker_killed_mid_sweep_loses_no_task_and_finished_tasks_are_not_run_again(tmp_path):
    from services import dask_cluster

    from pems.scenarios.sweep import load_sweep, run_sweep

    path = sweep_file(tmp_path, {"battery_kwh": [0, 2, 4, 6, 8, 10]}, controllers=["mpc"])
    spec, tasks = load_sweep(path)
    trace = tmp_path / "trace"
    trace.mkdir()
    got: list[str] = []
    with dask_cluster(tmp_path / "dask", workers=2, env={"PEMS_SWEEP_TRACE": str(trace)}) as cluster:
        killed = threading.Event()

        def on_row(row: dict, k: int, n: int) -> None:
            got.append(row["task"])
            if k == 2 and not killed.is_set():  # two finished: a machine of the cluster dies
                cluster.kill_worker(0)
                killed.set()

        res = run_sweep(spec, tasks, tmp_path / "out", scheduler=cluster.address, on_row=on_row)
    assert killed.is_set() and res.ran == 6 and res.failed == 0
    assert (res.table["status"] == "ok").all() and len(res.table) == 6
    starts = {p.stem: len(p.read_text().splitlines()) for p in trace.glob("*.log")}
    assert set(starts) == {t.id for t in tasks}
    assert all(starts[t] == 1 for t in got[:2])  # finished before the kill: run once
    assert res.table["worker"].nunique() >= 1


def test_the_house_axes_do_as_they_say_whatever_their_order_and_a_task_is_what_it_runs(tmp_path):
    """A scenario's own cars are not added twice; battery_kw wins over battery_kwh's C-rate in any
    order; a value with a slash is not taken for a file unless its axis reads files; an edited input
    file makes new task ids (it runs again), an unchanged one the same."""
    from pems.scenarios.sweep import build_scenario, load_sweep

    ev = tmp_path / "ev"
    ev.mkdir()
    ev_sweep = ev / "s.toml"
    ev_sweep.write_text(tomli_w.dumps({"scenario": "winter-week-ev", "controllers": ["rule-based"],
                                       "axes": {"battery_kwh": [5]}}))
    _, tasks = load_sweep(ev_sweep)
    assert len(build_scenario(tasks[0]).house.ev) == 1
    a = sweep_file(tmp_path, {"battery_kw": [3], "battery_kwh": [20]}, controllers=["rule-based"])
    b_dir = tmp_path / "b"
    b_dir.mkdir()
    b = sweep_file(b_dir, {"battery_kwh": [20], "battery_kw": [3]}, controllers=["rule-based"])
    for path in (a, b):
        bat = build_scenario(load_sweep(path)[1][0]).house.battery
        assert (bat.capacity_kwh, bat.max_charge_w, bat.max_discharge_w) == (20.0, 3000.0, 3000.0)
    tz = sweep_file(tmp_path, {"house.site.timezone": ["Europe/Prague"]}, controllers=["rule-based"])
    assert build_scenario(load_sweep(tz)[1][0]).house.site.timezone == "Europe/Prague"
    # a task is what it runs
    (tmp_path / "load.csv").write_text("time,P_load\n2024-01-09T00:00:00Z,300\n2024-01-12T00:00:00Z,300\n")
    path = sweep_file(tmp_path, {"load": ["load.csv"]}, controllers=["rule-based"])
    ids = [t.id for t in load_sweep(path)[1]]
    assert [t.id for t in load_sweep(path)[1]] == ids
    (tmp_path / "load.csv").write_text("time,P_load\n2024-01-09T00:00:00Z,400\n2024-01-12T00:00:00Z,400\n")
    assert [t.id for t in load_sweep(path)[1]] != ids


@pytest.mark.slow
def test_a_scheduler_that_does_not_answer_is_one_line_and_exit_3(tmp_path, capsys):
    from services import free_port

    path = sweep_file(tmp_path, {"battery_kwh": [0]}, controllers=["rule-based"])
    rc = main(["sweep", str(path), "--scheduler", f"tcp://127.0.0.1:{free_port()}", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 3 and "--scheduler" in err and "Traceback" not in err, err


@pytest.mark.slow
def test_a_dry_run_counts_and_times_without_running_and_kept_runs_go_under_the_output(tmp_path, capsys):
    path = sweep_file(tmp_path, {"battery_kwh": [0, 5, 10]}, controllers=["rule-based"], keep_runs=True)
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--dry-run", "--workers", "2", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "3 tasks = battery_kwh (3) × 1 controller (" in said and "one task of rule-based:" in said
    assert "3 tasks to run: about" in said and "on 2 local workers" in said
    assert not (out / "tasks").exists() and not (out / "runs").exists()  # nothing run, nothing written
    # a long task (a month here, a year in a sizing sweep) is timed on two slices of it, not run whole
    (tmp_path / "m").mkdir()
    month = sweep_file(tmp_path / "m", {"days": [30]}, controllers=["rule-based"])
    assert main(["sweep", str(month), "--dry-run", "--workers", "1", "--out", str(tmp_path / "out-m")]) == 0
    said = capsys.readouterr().out
    assert "(3 and 7 days run, 30 on their line)" in said and not (tmp_path / "out-m" / "tasks").exists()
    assert main(["sweep", str(path), "--workers", "1", "--out", str(out)]) == 0
    t = table(out)
    for task in t["task"]:
        kept = out / "runs" / task
        assert (kept / "trajectory.parquet").is_file()
        assert json.loads((kept / "kpis.json").read_text())["cost"] == pytest.approx(
            float(t.loc[t.task == task, "cost"].iloc[0]))


@pytest.mark.slow
def test_a_sweep_sent_sigterm_closes_its_cluster_keeps_what_finished_and_resumes(tmp_path):
    """``kill`` (or a batch system's time limit) ends a sweep as Ctrl-C does: exit 130, one line
    saying what is kept, no worker process left behind; the same command then runs only the rest."""
    import os
    import signal
    import subprocess
    import time

    path = sweep_file(tmp_path, {"battery_kwh": [0, 2, 4, 6, 8, 10]}, controllers=["rule-based"])
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pems", "sweep", str(path), "--workers", "1", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 180
    while not any((out / "tasks").glob("*.json")):  # (nothing while the folder does not exist yet)
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    said, err = proc.communicate(timeout=60)
    kept = {p.name: p.stat().st_mtime_ns for p in (out / "tasks").glob("*.json")}
    assert proc.returncode == 130, (said, err)
    assert "Traceback" not in err and f"finished and kept in {out}" in err and "the same command resumes" in err, err
    assert 1 <= len(kept) < 6
    # the session's processes (the sweep's cluster and its workers) are gone (a zombie waits for init)
    ps = subprocess.run(["ps", "-s", str(proc.pid), "-o", "pid=,stat=,args="], capture_output=True, text=True)
    left = [line for line in ps.stdout.splitlines() if line.split()[1][0] != "Z"]
    assert not left, left
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"ran {6 - len(kept)} tasks (0 failed), {len(kept)} already finished" in again.stdout
    assert all((out / "tasks" / k).stat().st_mtime_ns == v for k, v in kept.items())
    runs = [json.loads(line) for line in (out / "sessions.jsonl").read_text().splitlines()]
    assert [(r["ran"], r["completed"]) for r in runs] == [(len(kept), False), (6 - len(kept), True)]
