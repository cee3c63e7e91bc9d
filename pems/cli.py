"""The ``pems`` command line.

Bad input ends with one line per problem naming the file and key, and exit code 2; no traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pems import __version__
from pems.errors import InputError


def _progress(description: str):
    """A rich progress bar on stderr (steps done, steps per second, time left), returned as
    (context manager, callback)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    prog = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("steps"), TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                    console=Console(stderr=True), transient=True)
    task = prog.add_task(description, total=None, rate="")
    t0 = time.perf_counter()
    every = 10

    def update(done: int, total: int) -> None:
        if done == 1 or done == total or done % every == 0:
            rate = done / max(time.perf_counter() - t0, 1e-9)
            prog.update(task, completed=done, total=total, rate=f"{rate:,.1f} steps/s")

    return prog, update


def _check_controller(name: str, source: str, key: str) -> str:
    from pems.controllers import available

    if name not in available(peers=True):
        hint = " (EMHASS runs after `make bench-peers`)" if name == "emhass" else ""
        raise InputError(source, key, f"unknown controller {name!r}; expected one of "
                                      f"{', '.join(available(peers=True))}{hint}")
    return name


def cmd_simulate(args: argparse.Namespace) -> int:
    from pems.scenarios.spec import load_scenario

    sc = load_scenario(args.scenario)  # validate everything before the heavy imports
    if args.controller:
        name = _check_controller(args.controller, "command line", "--controller")
    else:
        name = _check_controller(sc.spec.controller, str(sc.path), "controller")
    from pems.scenarios.outputs import write_run
    from pems.scenarios.runner import prepare, run
    out = Path(args.out or f"out/{sc.name}-{name}")
    t0 = time.perf_counter()
    prep = prepare(sc)
    prog, update = _progress(f"{sc.name} · {name}")
    with prog:
        result = run(prep, name, progress=update)
    write_run(result, out, subtitle=f"house {sc.house.name}, {len(sc.house.rooms)} rooms")
    k = result.kpis
    print(f"{sc.name} · {name}: cost {k['cost']:.2f} {result.currency}, discomfort {k['discomfort_Kh']:.1f} K·h, "
          f"heating {k['heating_kWh']:.0f} kWh, import {k['energy_import_kWh']:.0f} kWh, "
          f"PV {k['pv_kWh']:.0f} kWh ({time.perf_counter() - t0:.1f} s)")
    print(f"wrote {out}/trajectory.parquet, kpis.json, events.jsonl, report.html")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Every scenario × controller; kpis.csv and report.html."""
    from pems.controllers import available
    from pems.scenarios.spec import load_scenario

    scenarios = args.scenarios or ["winter-week"]
    for s in scenarios:
        load_scenario(s)  # validate every input before the first (long) run
    learning = any(load_scenario(s).spec.truth is not None for s in scenarios)
    names = [n.strip() for n in (args.controllers or ",".join(available(learning=learning))).split(",") if n.strip()]
    for n in names:
        _check_controller(n, "command line", "--controllers")
    from pems.scenarios.bench import run_bench

    out = Path(args.out)
    t0 = time.perf_counter()
    frame = run_bench(scenarios, names, out, progress=_progress)
    show = ["scenario", "controller", "cost", "cost_gap_to_oracle", "discomfort_Kh_per_room", "heating_kWh",
            "energy_import_kWh", "self_consumption", "peak_import_kW", "compute_s_per_step"]
    with __import__("pandas").option_context("display.width", 160, "display.float_format", "{:.3g}".format):
        print(frame[[c for c in show if c in frame]].to_string(index=False))
    print(f"wrote {out}/kpis.csv and {out}/report.html ({time.perf_counter() - t0:.0f} s)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The winter week with every available controller, one report comparing them."""
    from pems.controllers import available
    from pems.scenarios.bench import run_bench
    from pems.scenarios.spec import load_scenario

    out = Path(args.out)
    scenario = "winter-week"
    if args.days is not None:  # a shorter look at the same week
        sc = load_scenario(scenario)
        text = sc.path.read_text(encoding="utf-8").replace("days = 7", f"days = {args.days}")
        out.mkdir(parents=True, exist_ok=True)
        short = out / "winter-week-short.toml"
        short.write_text(text.replace('name = "winter-week"', 'name = "winter-week-short"'), encoding="utf-8")
        scenario = str(short)
    t0 = time.perf_counter()
    frame = run_bench([scenario], list(available(learning=False)), out, progress=_progress)
    print(f"{'controller':<19} {'cost':>8} {'vs oracle':>9} {'discomfort':>12} {'heating':>9} {'import':>9} {'compute/step':>12}")
    for _, k in frame.iterrows():
        gap = "" if k["cost_gap_to_oracle"] != k["cost_gap_to_oracle"] else f"{100 * k['cost_gap_to_oracle']:+.1f} %"
        print(f"{k['controller']:<19} {k['cost']:>8.2f} {gap:>9} {k['discomfort_Kh']:>8.1f} K·h {k['heating_kWh']:>5.0f} kWh"
              f" {k['energy_import_kWh']:>5.0f} kWh {k['compute_s_per_step']:>10.3f} s")
    print(f"wrote {out}/report.html, {out}/kpis.csv and one folder per run ({time.perf_counter() - t0:.0f} s)")
    return 0


def _time(text: str | None, key: str):
    import pandas as pd

    if text is None:
        return None
    try:
        t = pd.Timestamp(text)
    except (ValueError, TypeError):
        raise InputError("command line", key, f"cannot read {text!r} as a time (ISO 8601)") from None
    return t.tz_localize("UTC") if t.tz is None else t.tz_convert("UTC")


def _open(args: argparse.Namespace, house, step, start=None, end=None):
    """A history from a file or an InfluxDB URL, with a progress bar for extraction."""
    from pems.calibration.sources import is_url, open_history

    if not is_url(args.history):
        return open_history(args.history, house, step, start=start, end=end)
    prog, update = _progress("extracting")
    with prog:
        return open_history(args.history, house, step, mapping=args.mapping, start=start, end=end,
                            use_cache=not getattr(args, "no_cache", False), progress=update)


def _step(minutes: float) -> "pd.Timedelta":
    import pandas as pd

    if not 1 <= minutes <= 240:
        raise InputError("command line", "--step-minutes", f"{minutes} is outside 1…240")
    return pd.Timedelta(minutes=minutes)


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Fit the twin to a history; write house.toml, calibration.json and report.html."""
    from pems.twin.house import load_house

    house = load_house(args.house) if args.house else None
    import pandas as pd

    from pems.calibration.sources import is_url

    start, end = _time(args.start, "--start"), _time(args.end, "--end")
    if is_url(args.history):  # a database holds years: default to the last one
        end = end or pd.Timestamp.now(tz="UTC").floor("D")
        start = start or end - pd.Timedelta(days=365)
    history = _open(args, house, _step(args.step_minutes), start, end)
    if len(history.data) < 2:
        raise InputError(args.history, "time", "no data in the requested period")
    if not 0.2 <= args.train_fraction <= 0.95:
        raise InputError("command line", "--train-fraction", "expected a value between 0.2 and 0.95")
    from pems.calibration.calibrate import calibrate
    from pems.calibration.infer import house_from_history
    from pems.calibration.outputs import write_calibration

    if house is None:
        house = house_from_history(history, name=Path(args.history).stem)
    out = Path(args.out)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    prog = Progress(TextColumn("[bold]calibrating[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("rooms"), console=Console(stderr=True), transient=True)
    task = prog.add_task("", total=len(history.rooms))
    with prog:
        result = calibrate(house, history, train_fraction=args.train_fraction,
                           progress=lambda room, i, n: prog.update(task, completed=i, total=n, description=room))
    write_calibration(result, out, str(args.history))
    s = result.summary
    print(f"{house.name}: {len(result.fits)} rooms, {result.quality.trusted_days:.0f} trusted days, quality "
          f"{result.quality.score:.2f}; validation ({s.get('validation_days', 0)} days): 24 h-ahead RMSE "
          f"{s.get('rmse_24h_k_mean', float('nan')):.3f} K, one-step {s.get('rmse_1step_k_mean', float('nan')):.3f} K "
          f"({result.wall_s:.0f} s)")
    print(f"wrote {out}/house.toml, calibration.json, report.html")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Estimate the state from the history before START, then predict H hours ahead."""
    import pandas as pd

    from pems.twin.house import load_house

    house = load_house(args.house)
    start = _time(args.start, "--start")
    if not 0 < args.hours <= 24 * 14:
        raise InputError("command line", "--hours", "expected a horizon between 0 and 336 hours")
    from pems.calibration.sources import is_url

    window = (start - pd.Timedelta(days=14), start + pd.Timedelta(hours=args.hours)) if is_url(args.history) else (None, None)
    history = _open(args, house, _step(args.step_minutes), *window)
    d = history.data
    end = start + pd.Timedelta(hours=args.hours)
    if start <= d.index[0] or end > d.index[-1] + history.step:
        raise InputError(args.history, "time", f"covers {d.index[0]:%Y-%m-%d %H:%M} .. "
                                                f"{d.index[-1] + history.step:%Y-%m-%d %H:%M} UTC; the prediction needs "
                                                f"history before {start:%Y-%m-%d %H:%M} and inputs until {end:%Y-%m-%d %H:%M}")
    from pems.calibration.predict import predict_ahead
    from pems.twin.model import build_model

    out = predict_ahead(build_model(house), d, history.step, start, args.hours)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    out.to_parquet(path)
    print(f"predicted {len(out)} steps of {len(house.rooms)} rooms from {start:%Y-%m-%d %H:%M} UTC; wrote {path}")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    """The canonical history table from a file or InfluxDB, cleaned and on the model step."""
    from pems.calibration.quality import assess
    from pems.twin.house import load_house

    house = load_house(args.house) if args.house else None
    start, end = _time(args.start, "--start"), _time(args.end, "--end")
    args.history = args.source
    h = _open(args, house, _step(args.step_minutes), start, end)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    h.data.to_parquet(path)
    q = assess(h)
    print(f"{len(h.data)} steps × {len(h.data.columns)} columns, {len(h.rooms)} rooms; quality {q.score:.2f}, "
          f"{q.trusted_days:.0f} trusted days; wrote {path}")
    for sig in q.signals.values():
        for p in sig.problems:
            print(f"  {sig.name}: {p}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pems", description="Physics-first digital twin of a home energy system.")
    p.add_argument("--version", action="version", version=f"pems {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("simulate", help="run one scenario with one controller")
    s.add_argument("scenario", help="built-in scenario name or path to a scenario TOML file")
    s.add_argument("--controller", help="controller name (default: the scenario's, else rule-based)")
    s.add_argument("--out", help="output directory (default: out/SCENARIO-CONTROLLER)")
    s.set_defaults(func=cmd_simulate)

    d = sub.add_parser("demo", help="the winter week with every available controller; no configuration")
    d.add_argument("--out", default="out/demo", help="output directory (default: out/demo)")
    d.add_argument("--days", type=float, help="only the first DAYS of the week (a quicker look)")
    d.set_defaults(func=cmd_demo)

    b = sub.add_parser("bench", help="every scenario × controller → kpis.csv and report.html")
    b.add_argument("scenarios", nargs="*", metavar="SCENARIO", help="built-in names or TOML paths (default: winter-week)")
    b.add_argument("--controllers", help="comma-separated controller names (default: all)")
    b.add_argument("--out", default="out/bench", help="output directory (default: out/bench)")
    b.set_defaults(func=cmd_bench)

    c = sub.add_parser("calibrate", help="fit the twin to a home's history → house.toml, calibration.json, report.html")
    c.add_argument("--history", required=True, help="history table: CSV or Parquet with DESIGN.md columns")
    c.add_argument("--house", help="house file or built-in name (default: inferred from the history)")
    c.add_argument("--out", required=True, help="output directory")
    c.add_argument("--step-minutes", type=float, default=15.0, help="model step (default 15)")
    c.add_argument("--train-fraction", type=float, default=0.7, help="share of the history used to fit (default 0.7)")
    c.add_argument("--mapping", help="InfluxDB sources: mapping preset or file (default loxone-growatt)")
    c.add_argument("--start", help="first time (InfluxDB default: a year before --end; files: all)")
    c.add_argument("--end", help="end time (InfluxDB default: today 00:00 UTC; files: all)")
    c.add_argument("--no-cache", action="store_true", help="InfluxDB sources: query again, ignore the cache")
    c.set_defaults(func=cmd_calibrate)

    pr = sub.add_parser("predict", help="estimate the state before START, predict every room H hours ahead")
    pr.add_argument("--house", required=True, help="house file (e.g. a calibrated one) or built-in name")
    pr.add_argument("--history", required=True, help="history table: CSV or Parquet")
    pr.add_argument("--start", required=True, help="start of the prediction (ISO 8601; UTC without a zone)")
    pr.add_argument("--hours", type=float, required=True, help="prediction horizon [h]")
    pr.add_argument("--out", required=True, help="output Parquet file")
    pr.add_argument("--step-minutes", type=float, default=15.0, help="model step (default 15)")
    pr.add_argument("--mapping", help="InfluxDB sources: mapping preset or file (default loxone-growatt)")
    pr.add_argument("--no-cache", action="store_true", help="InfluxDB sources: ignore the cache")
    pr.set_defaults(func=cmd_predict)

    hi = sub.add_parser("history", help="the canonical history table from a file or InfluxDB → Parquet")
    hi.add_argument("source", metavar="SOURCE", help="CSV/Parquet file, influx://HOST:PORT/DB or influx2://HOST:PORT?org=ORG")
    hi.add_argument("--start", required=True, help="first time (ISO 8601)")
    hi.add_argument("--end", required=True, help="end time (ISO 8601)")
    hi.add_argument("--mapping", help="mapping preset or file (default loxone-growatt)")
    hi.add_argument("--house", help="house file (for relay ratings and room names)")
    hi.add_argument("--out", required=True, help="output Parquet file")
    hi.add_argument("--step-minutes", type=float, default=15.0, help="model step (default 15)")
    hi.add_argument("--no-cache", action="store_true", help="query again, ignore the cache")
    hi.set_defaults(func=cmd_history)

    from pems.controllers.forecast.models_cli import add_models_parser

    add_models_parser(sub)

    ls = sub.add_parser("list", help="list built-in houses, scenarios, weather, prices and controllers")
    ls.set_defaults(func=cmd_list)
    from pems.controllers.forecast.cli import add_forecast_parser
    from pems.live.cli import add_emulate_parser, add_live_parser

    add_forecast_parser(sub)
    add_emulate_parser(sub)
    add_live_parser(sub)
    return p


def cmd_list(args: argparse.Namespace) -> int:
    from pems.controllers import available
    from pems.scenarios.spec import builtin_scenarios
    from pems.twin.house import BUILTIN_HOUSES
    from pems.twin.load import BUILTIN_LOADS
    from pems.twin.prices import BUILTIN_PRICES
    from pems.twin.weather import BUILTIN_WEATHER

    print("houses:     ", ", ".join(BUILTIN_HOUSES))
    print("scenarios:  ", ", ".join(builtin_scenarios()))
    print("controllers:", ", ".join(available(peers=True)))
    print("prices:     ", ", ".join(BUILTIN_PRICES))
    print("loads:      ", ", ".join(BUILTIN_LOADS))
    print("weather:")
    for name, what in BUILTIN_WEATHER.items():
        print(f"  {name:<24} {what}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from pems.threads import limit_threads

    limit_threads()  # before the solvers load: their runtimes read the limit then
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InputError as exc:
        for p in exc.problems:
            print(f"pems: error: {p}", file=sys.stderr)
        return 2
    except Exception as exc:  # a data source that is down or refuses: one line, no traceback
        from pems.calibration.influx import SourceError

        if isinstance(exc, SourceError):
            print(f"pems: error: {exc}", file=sys.stderr)
            return 3
        raise
    except KeyboardInterrupt:
        print("pems: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
