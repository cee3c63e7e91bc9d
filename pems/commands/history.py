"""``pems calibrate``, ``pems predict`` and ``pems history``: the commands that read a home's history."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pems.commands.arguments import CLI, model_step, output_dir, output_file, parse_time, time_range
from pems.commands.progress import progress_bar
from pems.errors import InputError

#: Where users read which columns a history may have.
HISTORY_DOC = "docs/reference/history.md"

#: The InfluxDB source URLs (as :data:`pems.calibration.influx.URL_FORMS`, without importing requests here).
URL_FORMS = "influx://HOST:PORT[/DATABASE] or influx2://HOST:PORT?org=ORG"


def check_source(text: str, key: str) -> None:
    """An InfluxDB URL given as ``key`` (``--history``, ``SOURCE``): readable, before any work."""
    from pems.calibration.sources import is_url

    if is_url(text):
        from pems.calibration.influx import InfluxSource

        InfluxSource.parse(text, CLI, key)


def on_step(t, step, key: str = "--start") -> None:
    """Refuse a time between the model's steps (the steps start at 00:00 UTC)."""
    if t == t.floor(step):
        return
    minutes = int(step.total_seconds() // 60)
    if minutes < 60:
        marks = [f":{m:02d}" for m in range(0, 60, minutes)]
        valid = "at " + (f"{', '.join(marks[:-1])} or {marks[-1]}" if len(marks) > 1 else marks[0]) + " of each hour"
    elif minutes == 60:
        valid = "on the full hour"
    else:
        valid = f"every {minutes // 60} h from 00:00 UTC" if minutes % 60 == 0 else f"every {minutes} min from 00:00 UTC"
    raise InputError(CLI, key, f"{t:%Y-%m-%d %H:%M} UTC is not on a {minutes}-minute model step; valid starts "
                               f"are {valid} (e.g. {t.floor(step):%H:%M} or {t.ceil(step):%H:%M})")


def trusted(days: float) -> str:
    """``1 trusted day``, ``12 trusted days``."""
    n = round(days)
    return f"{n} trusted day{'' if n == 1 else 's'}"


def open_between(source: str, house, step, start=None, end=None, mapping: str | None = None,
                 use_cache: bool = True, require_rooms: bool = True):
    """A history from a file or an InfluxDB URL between ``start`` and ``end`` (a progress bar while
    InfluxDB is read); refused when nothing of it lies in that period.

    Returns
    -------
    pems.calibration.history.History
    """
    from pems.calibration.sources import is_url, open_history

    time_range(start, end)
    if is_url(source):
        prog, update = progress_bar("extracting")
        with prog:
            return open_history(source, house, step, mapping=mapping, start=start, end=end,
                                use_cache=use_cache, progress=update, require_rooms=require_rooms)
    whole = open_history(source, house, step, require_rooms=require_rooms)
    if whole.data.empty:
        raise InputError(source, "time", "no data")
    h = whole.between(start, end)
    if len(h.data) < 2:
        first, last = whole.data.index[0], whole.data.index[-1] + whole.step
        asked = f"{'…' if start is None else f'{start:%Y-%m-%d %H:%M}'} .. {'…' if end is None else f'{end:%Y-%m-%d %H:%M}'}"
        raise InputError(source, "--start/--end", f"the history covers {first:%Y-%m-%d %H:%M} .. {last:%Y-%m-%d %H:%M} "
                                                  f"UTC; nothing (or a single step) in {asked} UTC")
    return h


def database_window(source: str, start, end, days: int = 365):
    """A database holds years: without bounds, the ``days`` before today 00:00 UTC."""
    import pandas as pd

    from pems.calibration.sources import is_url

    if is_url(source):
        end = end or pd.Timestamp.now(tz="UTC").floor("D")
        start = start or end - pd.Timedelta(days=days)
    return start, end


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Fit the twin to a history; write house.toml, calibration.json and report.html."""
    from pems.calibration.history import check_rooms
    from pems.twin.house import load_house

    house = load_house(args.house, source=CLI, key="--house") if args.house else None
    check_source(args.history, "--history")
    if not 0.2 <= args.train_fraction <= 0.95:
        raise InputError(CLI, "--train-fraction", f"{args.train_fraction:g}: expected a value between 0.2 and 0.95")
    step = model_step(args.step_minutes)
    if not 0 <= args.joint <= 366:
        raise InputError(CLI, "--joint", f"{args.joint}: expected a number of days between 0 (off) and 366")
    out = output_dir(args.out, writes=("house.toml", "calibration.json", "report.html"),
                     inputs={"--house": args.house, "--history": args.history})
    start, end = database_window(args.history, parse_time(args.start, "--start"), parse_time(args.end, "--end"))
    history = open_between(args.history, house, step, start, end, args.mapping, not args.no_cache)
    from pems.calibration.calibrate import calibrate
    from pems.calibration.fit import FitSettings
    from pems.calibration.infer import house_from_history
    from pems.calibration.outputs import write_calibration

    if house is None:
        house = house_from_history(history, name=Path(args.history).stem)
    check_rooms(history, house)
    prog, update = progress_bar(f"calibrating {house.name}", unit="rooms")
    with prog:
        settings = FitSettings(joint=args.joint > 0, joint_segments=max(2, args.joint))
        result = calibrate(house, history, settings, train_fraction=args.train_fraction,
                           progress=lambda room, i, n: update(i, n))
    write_calibration(result, out, str(args.history))
    s = result.summary
    print(f"{house.name}: {len(result.fits)} room{'' if len(result.fits) == 1 else 's'}, "
          f"{trusted(result.quality.trusted_days)}, quality "
          f"{result.quality.score:.2f}; validation ({s.get('validation_days', 0)} days): 24 h-ahead RMSE "
          f"{s.get('rmse_24h_k_mean', float('nan')):.3f} K, one-step {s.get('rmse_1step_k_mean', float('nan')):.3f} K "
          f"({result.wall_s:.0f} s)")
    if result.warnings:
        from pems.calibration.diagnose import by_room

        groups = by_room(result.warnings)
        print(f"warning: not a good fit: {len(result.warnings)} warning{'' if len(result.warnings) == 1 else 's'} "
              f"in {len(groups)} of {len(result.fits)} rooms (each with its likely cause in report.html):",
              file=sys.stderr)
        for room, ws in groups.items():
            print(f"  {room or 'house'}: " + "; ".join(w.kind for w in ws) + f" — {ws[0].message}", file=sys.stderr)
    print(f"wrote {out}/house.toml, calibration.json, report.html")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Estimate the state from the history before START, then predict H hours ahead."""
    import pandas as pd

    from pems.calibration.history import check_rooms
    from pems.calibration.sources import is_url
    from pems.twin.house import load_house

    house = load_house(args.house, source=CLI, key="--house")
    check_source(args.history, "--history")
    start = parse_time(args.start, "--start")
    if not 0 < args.hours <= 24 * 14:
        raise InputError(CLI, "--hours", f"{args.hours:g}: expected a horizon above 0 and at most 336 hours")
    step = model_step(args.step_minutes)
    on_step(start, step)
    path = output_file(args.out, inputs={"--history": args.history, "--house": args.house})
    end = start + pd.Timedelta(hours=args.hours)
    window = (start - pd.Timedelta(days=14), end) if is_url(args.history) else (None, None)
    history = open_between(args.history, house, step, *window, args.mapping, not args.no_cache)
    check_rooms(history, house)
    d = history.data
    if start <= d.index[0] or end > d.index[-1] + history.step:
        raise InputError(args.history, "time", f"covers {d.index[0]:%Y-%m-%d %H:%M} .. "
                                                f"{d.index[-1] + history.step:%Y-%m-%d %H:%M} UTC; the prediction needs "
                                                f"history before {start:%Y-%m-%d %H:%M} and inputs until {end:%Y-%m-%d %H:%M}")
    from pems.calibration.predict import predict_ahead
    from pems.twin.model import build_model

    out = predict_ahead(build_model(house), d, history.step, start, args.hours)
    path.parent.mkdir(parents=True, exist_ok=True)
    out.to_parquet(path)
    print(f"predicted {len(out)} steps of {len(house.rooms)} rooms from {start:%Y-%m-%d %H:%M} UTC; wrote {path}")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    """The canonical history table from a file or InfluxDB, cleaned and on the model step."""
    from pems.calibration.quality import assess
    from pems.twin.house import load_house

    house = load_house(args.house, source=CLI, key="--house") if args.house else None
    check_source(args.source, "SOURCE")
    start, end = parse_time(args.start, "--start"), parse_time(args.end, "--end")
    step = model_step(args.step_minutes)
    path = output_file(args.out, inputs={"SOURCE": args.source, "--house": args.house})
    h = open_between(args.source, house, step, start, end, args.mapping, not args.no_cache)
    path.parent.mkdir(parents=True, exist_ok=True)
    h.data.to_parquet(path)
    q = assess(h)
    print(f"{len(h.data)} steps × {len(h.data.columns)} columns, {len(h.rooms)} room{'' if len(h.rooms) == 1 else 's'}; "
          f"quality {q.score:.2f}, {trusted(q.trusted_days)}; wrote {path}")
    for sig in q.signals.values():
        for p in sig.problems:
            print(f"  {sig.name}: {p}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``calibrate``, ``predict`` and ``history`` to the ``pems`` sub-commands."""
    c = sub.add_parser("calibrate", help="fit the twin to a home's history → house.toml, calibration.json, report.html")
    c.add_argument("--history", required=True,
                   help=f"history table: CSV or Parquet with the columns of {HISTORY_DOC}, or {URL_FORMS}")
    c.add_argument("--house", help="house file or built-in name (default: inferred from the history)")
    c.add_argument("--out", required=True, help="output folder")
    c.add_argument("--step-minutes", type=float, default=15.0, help="model step, dividing the day (default 15)")
    c.add_argument("--train-fraction", type=float, default=0.7, help="share of the history used to fit (default 0.7)")
    c.add_argument("--mapping", help="InfluxDB sources: mapping preset or file (default loxone-growatt)")
    c.add_argument("--start", help="first time (InfluxDB default: a year before --end; files: all)")
    c.add_argument("--end", help="end time (InfluxDB default: today 00:00 UTC; files: all)")
    c.add_argument("--no-cache", action="store_true", help="InfluxDB sources: query again, ignore the cache")
    c.add_argument("--joint", type=int, metavar="DAYS", default=0,
                   help="after the per-room fits, refine all rooms jointly on DAYS training days spread over the "
                        "history (default 0: off; see docs/calibration.md for what it changed when measured)")
    c.set_defaults(func=cmd_calibrate)

    pr = sub.add_parser("predict", help="estimate the state before START, predict every room H hours ahead")
    pr.add_argument("--house", required=True, help="house file (e.g. a calibrated one) or built-in name")
    pr.add_argument("--history", required=True, help=f"history table: CSV or Parquet with the columns of {HISTORY_DOC}")
    pr.add_argument("--start", required=True, help="start of the prediction (ISO 8601; UTC without a zone)")
    pr.add_argument("--hours", type=float, required=True, help="prediction horizon [h]")
    pr.add_argument("--out", required=True, help="output Parquet file")
    pr.add_argument("--step-minutes", type=float, default=15.0, help="model step, dividing the day (default 15)")
    pr.add_argument("--mapping", help="InfluxDB sources: mapping preset or file (default loxone-growatt)")
    pr.add_argument("--no-cache", action="store_true", help="InfluxDB sources: ignore the cache")
    pr.set_defaults(func=cmd_predict)

    hi = sub.add_parser("history", help="the canonical history table from a file or InfluxDB → Parquet")
    hi.add_argument("source", metavar="SOURCE", help=f"CSV/Parquet file, or {URL_FORMS}")
    hi.add_argument("--start", required=True, help="first time (ISO 8601)")
    hi.add_argument("--end", required=True, help="end time (ISO 8601)")
    hi.add_argument("--mapping", help="mapping preset or file (default loxone-growatt)")
    hi.add_argument("--house", help="house file (for relay ratings and room names)")
    hi.add_argument("--out", required=True, help=f"output Parquet file (the columns of {HISTORY_DOC})")
    hi.add_argument("--step-minutes", type=float, default=15.0, help="model step, dividing the day (default 15)")
    hi.add_argument("--no-cache", action="store_true", help="query again, ignore the cache")
    hi.set_defaults(func=cmd_history)
