"""``pems sweep``: every combination of a sweep file's axes × controllers, on Dask."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from pems.commands.arguments import CLI, output_dir
from pems.commands.progress import progress_bar, stderr_console
from pems.errors import InputError

if TYPE_CHECKING:
    from pems.scenarios.sweep import Merged


def _duration(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM ends the sweep as Ctrl-C does (its cluster closed, what finished kept), not halfway
    through its clean-up; the previous handler comes back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _task_line(row: dict, k: int, n: int, axes: list[str]) -> str:
    """One finished task as a line: where no bar is drawn (a log, a batch job), a sweep of hours says
    what it has done as it goes."""
    where = ", ".join(f"{a} {row.get('axis:' + a)}" for a in axes)
    head = f"[{k}/{n}] {row.get('controller')}" + (f" ({where})" if where else "")
    if row.get("status") != "ok":
        return f"{head}: failed: {row.get('error')}"
    took = _duration(float(row.get("wall_s") or 0.0))
    cost = row.get("cost")
    money = f" {row['currency']}" if row.get("currency") else ""
    return f"{head}: cost {cost:.2f}{money} in {took}" if cost is not None else f"{head}: done in {took}"


def _merged_line(m: Merged, dry_run: bool) -> str:
    """What a ``--merge`` took from another output folder."""
    notes = [f"{n} {what}" for n, what in ((m.already, "finished here too: kept as they are"),
                                            (m.foreign, "not of this sweep"),
                                            (m.unfinished, "unfinished: they run here")) if n]
    runs = f"; {_plural(m.runs, 'run')} of the command logged there" if m.runs else ""
    return (f"{'would merge' if dry_run else 'merged'} {_plural(m.copied, 'finished task')} from {m.source}"
            + (f" ({'; '.join(notes)})" if notes else "") + runs)


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run a sweep (or, with ``--dry-run``, count its tasks and time one)."""
    from pems.scenarios.sweep import finished, load_sweep, merge_finished, run_sweep, sessions, wall_time

    if args.workers is not None and args.workers < 1:
        raise InputError(CLI, "--workers", f"{args.workers}; expected 1 or more")
    if args.workers is not None and args.scheduler:
        raise InputError(CLI, "--workers", "a cluster (--scheduler) has its own workers; give one of the two")
    if args.scheduler and not args.scheduler.startswith(("tcp://", "tls://", "ws://", "wss://", "inproc://")):
        raise InputError(CLI, "--scheduler", f"{args.scheduler!r}; expected an address like tcp://HOST:8786")
    out = output_dir(args.out, writes=("results.parquet", "report.html"), inputs={"SWEEP": args.sweep})
    spec, tasks = load_sweep(args.sweep)  # every task built and checked before anything runs
    for src in args.merge or []:
        print(_merged_line(merge_finished(out, tasks, Path(src), dry_run=args.dry_run), args.dry_run))
    done = finished(out, tasks) if out.is_dir() else set()
    axes = " × ".join(f"{k} ({len(v)})" for k, v in spec.axes.items()) or "no axes"
    print(f"sweep {spec.name}: {len(tasks)} tasks = {axes} × {_plural(len(spec.controllers), 'controller')} "
          f"({', '.join(spec.controllers)}); {len(done)} finished in {out}")
    if args.dry_run:
        import os

        from pems.scenarios.sweep import estimate

        todo = [t for t in tasks if t.id not in done]
        if not todo:
            print("nothing to run")
            return 0
        n = args.workers or (os.cpu_count() or 1)
        # one task of each controller: an MPC run and a rule-based one differ by orders of magnitude
        per: dict[str, float] = {}
        for ctrl in dict.fromkeys(t.controller for t in todo):
            first = next(t for t in todo if t.controller == ctrl)
            wall, row, how = estimate(first)
            per[ctrl] = wall
            state = "" if row.get("status") == "ok" else f" (it failed: {row.get('error')})"
            print(f"  one task of {ctrl}: {_duration(wall)} ({how}){state}")
        total = sum(per[t.controller] for t in todo)
        where = f"the cluster at {args.scheduler}" if args.scheduler else f"{n} local workers"
        print(f"{len(todo)} tasks to run: about {_duration(total)} of compute, {_duration(total / n)} on {where} "
              "(measured from one task of each controller, run here)")
        return 0
    bar, update = progress_bar(f"sweep {spec.name}", unit="tasks")

    def started(client, n_todo: int) -> None:
        link = getattr(client, "dashboard_link", None)
        n = len(client.scheduler_info().get("workers", {}))
        print(f"{n_todo} tasks on {_plural(n, 'worker')}" + (f"; Dask's dashboard: {link}" if link else ""), flush=True)

    failed_rows: list[dict] = []
    lines = stderr_console() is None  # no bar: a line per task

    def on_row(row: dict, k: int, n: int) -> None:
        update(k, n)
        if lines:
            print(_task_line(row, k, n, list(spec.axes)), flush=True)
        if row.get("status") != "ok":
            failed_rows.append(row)

    t0 = time.perf_counter()
    from pems.errors import ExitCode

    try:
        with bar, _terminate_as_interrupt():
            res = run_sweep(spec, tasks, out, scheduler=args.scheduler, workers=args.workers, on_row=on_row,
                            on_start=started)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (kill, a batch system's time limit): the cluster is closed
        kept = len(finished(out, tasks))
        print(f"pems: sweep interrupted after {_duration(time.perf_counter() - t0)}; {kept} of {len(tasks)} tasks "
              f"finished and kept in {out}: the same command resumes it", file=sys.stderr)
        return ExitCode.INTERRUPTED
    from pems.scenarios.sweep_report import write_sweep_report

    logged = sessions(out)
    write_sweep_report(out / "report.html", spec, res.table, logged)
    for row in failed_rows:
        print(f"  task {row['task']} ({row.get('controller')}) failed: {row.get('error')}")
    wall, runs = wall_time(logged)
    so_far = f" (the sweep in all: {_duration(wall)} in {len(runs)} runs)" if len(runs) > 1 else ""
    print(f"ran {res.ran} tasks ({res.failed} failed), {res.skipped} already finished, in "
          f"{_duration(time.perf_counter() - t0)}{so_far}; wrote {out}/results.parquet and {out}/report.html")
    return ExitCode.TASKS_FAILED if res.failed else 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("sweep", help="every combination of a sweep file's axes × controllers, on Dask "
                                     "→ results.parquet and report.html (resumable)")
    s.add_argument("sweep", help="the sweep file (TOML): base scenario, controllers, [axes], [costs]")
    s.add_argument("--scheduler", help="a Dask scheduler's address (tcp://HOST:8786); default: a local cluster")
    s.add_argument("--workers", type=int, help="local worker processes (default: this machine's cores)")
    s.add_argument("--dry-run", action="store_true", help="count the tasks and time one of each controller; run nothing")
    s.add_argument("--merge", action="append", metavar="DIR",
                   help="first take the finished tasks of this sweep from another output folder (a piece run "
                        "elsewhere), with the log of its runs; repeatable")
    s.add_argument("--out", default="out/sweep", help="output folder; a sweep run again there resumes (default: out/sweep)")
    s.set_defaults(func=cmd_sweep)
