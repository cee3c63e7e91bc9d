"""``pems replay``: every controller on the calibrated twin over the home's own history."""

from __future__ import annotations

import argparse
import html
import json
import math
import time
from pathlib import Path

from pems.commands.arguments import CLI, model_step, output_dir, parse_time
from pems.commands.history import HISTORY_DOC, URL_FORMS, check_source, open_between
from pems.commands.progress import progress_bar
from pems.errors import InputError


def cmd_replay(args: argparse.Namespace) -> int:
    from pems.controllers import available
    from pems.scenarios.bench import day_after_cost, kpi_frame
    from pems.scenarios.outputs import write_run
    from pems.scenarios.replay import replay_frame, replay_prepared
    from pems.scenarios.report import write_bench_report
    from pems.scenarios.runner import run
    from pems.scenarios.spec import ForecastSpec
    from pems.twin.house import load_house

    from pems.commands.arguments import check_controller
    from pems.commands.simulate import kpi_lines

    house = load_house(args.house, source=CLI, key="--house")
    check_source(args.history, "--history")
    start, end = parse_time(args.start, "--start"), parse_time(args.end, "--end")
    step = model_step(args.step_minutes)
    names = (["rule-based", "mpc", "oracle"] if args.controllers is None
             else list(dict.fromkeys(n.strip() for n in args.controllers.split(",") if n.strip())))
    if not names:
        raise InputError(CLI, "--controllers", f"no controller named; expected some of {', '.join(available())}")
    for n in names:
        check_controller(n, CLI, "--controllers", learning=False)
    if "rule-based" not in names:  # the home's own logic on the twin: the twin's bias, and the savings' base
        names.insert(0, "rule-based")
    out = output_dir(args.out, writes=("kpis.csv", "replay.json", "report.html"),
                     inputs={"--history": args.history, "--house": args.house})
    h = open_between(args.history, house, step, start, end, args.mapping, not args.no_cache)
    archive, why = _archive(args, h) if args.forecast in ("auto", "archived") else (None, "")
    if args.archive and args.forecast not in ("auto", "archived"):
        raise InputError(CLI, "--archive", f"archived forecasts are planned on with --forecast auto or archived, "
                                           f"not {args.forecast}")
    if archive is None and args.forecast == "archived":
        raise InputError(args.history, "--forecast archived", why)
    model = "archived" if archive is not None else ("noisy" if args.forecast == "auto" else args.forecast)
    noisy = ForecastSpec(model="noisy", seed=args.seed)
    rep = replay_prepared(h, house, ForecastSpec(model=model, seed=args.seed), prices=args.prices,
                          base_dir=Path.cwd(), archive=archive,
                          fallback=noisy if args.forecast == "auto" else None)
    if archive is None and why:
        rep.forecast_note += f" (no archived forecasts: {why})"
    prep = rep.prep
    print(f"replay of {h.source}: {prep.n_steps} steps from {prep.scenario.start:%Y-%m-%d %H:%M} UTC "
          f"({prep.scenario.spec.days:g} days) on {house.name} ({len(house.rooms)} rooms); the controllers plan on "
          f"{rep.forecast_note}")
    if rep.filled:
        print("  bridged gaps (steps): " + ", ".join(f"{k} {v}" for k, v in rep.filled.items()))
    t0 = time.perf_counter()
    results, day_after = [], {}
    for ctrl in names:
        bar, update = progress_bar(f"replay · {ctrl}")
        with bar:
            r = run(prep, ctrl, progress=update)
        write_run(r, out / ctrl, subtitle=f"replay of {h.source}")
        results.append(r)
        day_after[(r.scenario, r.controller)] = day_after_cost(prep, r)
    frame = kpi_frame(results, day_after)
    frame.to_csv(out / "kpis.csv", index=False)
    rf = replay_frame(rep, frame)
    paid = rep.actual.get("cost", math.nan)
    cur = prep.scenario.spec.tariff.currency
    summary = {"source": str(h.source), "house": house.name, "start": prep.scenario.start.isoformat(),
               "steps": prep.n_steps, "forecast": rep.forecast_note, "bridged_steps": rep.filled,
               "paid": rep.actual, "currency": cur,
               "controllers": json.loads(rf.to_json(orient="records"))}
    (out / "replay.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    write_bench_report(out / "report.html", results, frame, title=f"Replay of {house.name}",
                       preface=_preface(rep, rf, cur, h.source))
    for line in kpi_lines(frame):
        print(line)
    base = rf[rf.controller == "rule-based"].iloc[0]
    if math.isfinite(paid):
        print(f"the home paid {paid:.2f} {cur}; the twin's replay of its own logic {base['cost']:.2f} "
              f"({base['vs_paid_pct']:+.1f} %: the twin's bias), heating {base['heating_kWh']:.0f} kWh against "
              f"{rep.actual['heating_kWh']:.0f} kWh measured")
    else:
        print("the history has no grid power: what the home paid is not known; savings are against its own "
              "logic on the twin")
    for _, row in rf[rf.controller != "rule-based"].iterrows():
        print(f"  {row['controller']}: saves {row['saving_vs_own_logic']:.2f} {cur} against the home's own logic "
              f"(settled with the day after)")
    print(f"wrote {out}/report.html, kpis.csv, replay.json and one folder per controller "
          f"({time.perf_counter() - t0:.0f} s)")
    return 0


def _archive(args: argparse.Namespace, h):
    """The archived weather forecasts over the history's period (``--archive``, or the InfluxDB source's
    ``[[forecast]]`` tables), or None and why there are none. Whether they cover the replay enough is
    for :func:`~pems.scenarios.replay.replay_prepared` to say (over its own steps, the warm-up not)."""
    import pandas as pd

    from pems.calibration.sources import is_url
    from pems.scenarios.replay import Archive

    idx = h.data.index
    src = args.archive or (args.history if is_url(args.history) else None)
    if src is None:
        return None, "a file history has none; give them with --archive"
    if is_url(src):  # the mapping's [[forecast]] tables (the real home: bucket weather_forecast)
        from pems.calibration.mapping import load_mapping
        from pems.live.fetched import FetchError
        from pems.live.influx_forecast import stored_forecast

        mapping = load_mapping(args.mapping or "loxone-growatt")
        try:  # on the stored series' own grid: hourly
            data = stored_forecast(src, mapping, "weather", idx[0] - pd.Timedelta(days=1), idx[-1] + pd.Timedelta(days=1),
                                   pd.Timedelta(hours=1))
        except FetchError as exc:
            if args.forecast == "archived" or args.archive:
                raise InputError(src, "[[forecast]]", str(exc)) from None
            return None, str(exc)
        buckets = sorted({s.bucket for s in mapping.forecast if s.column in ("T_out", "ghi")})
        archive = Archive(data, f"{src} ({', '.join(buckets)})")
    else:
        from pems.twin.tables import read_time_csv

        archive = Archive(read_time_csv(Path(src), ("T_out", "ghi"), ("dni", "dhi")), str(src), "as the file gives them")
    return archive, ""


def _preface(rep, rf, cur: str, source: str) -> str:
    paid = rep.actual.get("cost", math.nan)
    rows = [f"<tr><th>what the home paid (measured)</th><td>{paid:,.2f}</td><td></td><td>"
            f"{rep.actual.get('heating_kWh', math.nan):,.0f}</td><td></td></tr>"]
    for _, r in rf.iterrows():
        who = "the home's own logic, on the twin" if r["controller"] == "rule-based" else r["controller"]
        save = r.get("saving_vs_own_logic", math.nan)
        rows.append(f"<tr><th>{html.escape(str(who))}</th><td>{r['cost']:,.2f}</td><td>{r['vs_paid_pct']:+.1f} %</td>"
                    f"<td>{r['heating_kWh']:,.0f}</td><td>{'' if not math.isfinite(save) else f'{save:,.2f}'}</td></tr>")
    return (f"<h2>Against what the home paid</h2><p class='sub'>{html.escape(str(source))}; the controllers plan on "
            f"{html.escape(rep.forecast_note)}.</p>"
            f"<table class='kpi'><tr><th></th><th>cost<br><small>{cur}</small></th><th>vs paid</th>"
            f"<th>heating<br><small>kWh</small></th><th>saving vs own logic<br><small>{cur}, settled</small></th></tr>"
            f"{''.join(rows)}</table><p class='note'>The twin's replay of the home's own logic against the bill is "
            "the twin's bias; the savings are against that replay, on the same twin, so the bias cancels.</p>")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("replay", help="every controller on the calibrated twin over the home's own history, against "
                                      "what it paid → report.html, kpis.csv, replay.json")
    r.add_argument("--history", required=True, help=f"the home's history: CSV/Parquet ({HISTORY_DOC}) or {URL_FORMS}")
    r.add_argument("--house", required=True, help="the calibrated house file (pems calibrate's house.toml)")
    r.add_argument("--controllers", help="comma-separated (default: rule-based,mpc,oracle; rule-based always runs: "
                                         "the home's own logic)")
    r.add_argument("--forecast", choices=("auto", "archived", "noisy", "persistence", "perfect"), default="auto",
                   help="what the controllers plan on (default auto: the archived weather forecasts where the history "
                        "has them, else noisy: day-ahead errors)")
    r.add_argument("--archive", help="archived weather forecasts: a CSV of time, T_out, ghi [, dni, dhi] (values at "
                                     "their stamps: an hour's mean radiation at mid-hour), or an InfluxDB URL read "
                                     "through the mapping's [[forecast]] tables (default for an InfluxDB history: "
                                     "its own server)")
    r.add_argument("--seed", type=int, default=0, help="seed of the noisy forecasts (default 0)")
    r.add_argument("--prices", help="where the history has no prices: a built-in name or a CSV")
    r.add_argument("--mapping", help="InfluxDB sources: mapping preset or file (default loxone-growatt)")
    r.add_argument("--start", help="first time (default: the history's)")
    r.add_argument("--end", help="end time (default: the history's)")
    r.add_argument("--step-minutes", type=float, default=15.0, help="model step, dividing the day (default 15)")
    r.add_argument("--no-cache", action="store_true", help="InfluxDB sources: query again, ignore the cache")
    r.add_argument("--out", required=True, help="output folder")
    r.set_defaults(func=cmd_replay)
