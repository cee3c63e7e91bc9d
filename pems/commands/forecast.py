"""``pems forecast backtest {pv,load,price,correctors}``: rolling-origin backtests on the real public data
(and, for residual correctors, on the unmodelled-gains scenarios); ``pems forecast fit``: a home's
own forecasters and correctors from its history, registered.

Each run writes ``OUT/report.html``, ``OUT/metrics.json`` and ``OUT/predictions.parquet``
(``--household all``: one folder per household and a summary page in ``OUT``) and prints a summary
table. Bad input (no data folder, an unknown household, zone or variant) ends with one line naming
the key and exit code 2.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pems.commands.arguments import CLI, model_step, output_dir, parse_time
from pems.commands.history import HISTORY_DOC, URL_FORMS, check_source, database_window, open_between
from pems.commands.progress import progress_bar, status
from pems.errors import InputError

#: Variants of the PV backtest when ``pems.controllers.forecast.pv`` does not list its own ``VARIANTS``.
PV_VARIANTS = ("nsrdb", "degraded", "persistence")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``forecast backtest …`` and ``forecast fit …`` to the ``pems`` sub-commands."""
    f = sub.add_parser("forecast", help="forecasters: rolling-origin backtests on real data → report.html")
    fsub = f.add_subparsers(dest="forecast_command", required=True, metavar="ACTION")
    b = fsub.add_parser("backtest", help="backtest a forecaster on public data (pv: NREL PVDAQ, load: Konstanz "
                                         "households, price: ENTSO-E day-ahead)")
    b.add_argument("what", choices=("pv", "load", "price", "correctors"), help="which forecaster")
    b.add_argument("--scenario", default="unmodelled-winter",
                   help="correctors: a scenario with a [truth] section (default unmodelled-winter)")
    b.add_argument("--registry", help="store the fitted model in this model registry (see `pems models`)")
    b.add_argument("--data", metavar="DIR", help="the folder of the public datasets, not shipped with PEMS: "
                                                 "pv-nrel/ (NREL PVDAQ system 50), households-konstanz/ (CoSSMic), "
                                                 "dayahead-prices/ (ENTSO-E) (default: $PEMS_SHARED/data, "
                                                 "else ../shared/data)")
    b.add_argument("--household", default="1", help="load: household 1–6 or 'all' (default 1)")
    b.add_argument("--zone", default="CZ", help="price: bidding zone CZ, DE_LU or AT (default CZ)")
    b.add_argument("--variant", help="pv: weather input (nsrdb, degraded, persistence; default nsrdb); "
                                     "load: default or pv-oracle")
    b.add_argument("--days", type=int, help="only the last DAYS days of forecast origins (a quicker look)")
    b.add_argument("--issue-hour", type=int, help="price: local issue hour (default 13, after the auction)")
    b.add_argument("--out", required=True, help="output folder")
    b.set_defaults(func=cmd_forecast_backtest)

    fit = fsub.add_parser("fit", help="learn a home's PV or load forecaster, or its twin's residual correctors, "
                                      "from its own history → model registry")
    fit.add_argument("what", choices=("pv", "load", "correctors"),
                     help="which forecaster (correctors: per-room heat the twin of --house misses)")
    fit.add_argument("--history", required=True,
                     help=f"the home's history: CSV/Parquet (the columns of {HISTORY_DOC}) or {URL_FORMS}")
    fit.add_argument("--house", required=True, help="house file or built-in name (site, time zone, holidays)")
    fit.add_argument("--registry", help="model registry (default: $PEMS_MODELS, else ~/.local/share/pems/models)")
    fit.add_argument("--name", help="model name in the registry (default: the house's name)")
    fit.add_argument("--promote", action="store_true", help="make it the champion of its role (the first one is)")
    fit.add_argument("--days", type=int,
                     help="pv, load: score the last DAYS day-ahead origins (default 90; earlier data still "
                          "train); correctors: hold out and score the last DAYS days (default 14)")
    fit.add_argument("--mapping", help="InfluxDB sources: mapping preset or file (default loxone-growatt)")
    fit.add_argument("--start", help="first time (InfluxDB default: two years before --end; files: all)")
    fit.add_argument("--end", help="end time (InfluxDB default: today 00:00 UTC; files: all)")
    fit.add_argument("--step-minutes", type=float, default=15.0, help="resampling step, dividing the day (default 15)")
    fit.add_argument("--out", required=True, help="output folder of the backtest report")
    fit.set_defaults(func=cmd_forecast_fit)


#: The public data each backtest reads (not shipped with PEMS): its folder in the data folder, and what it is.
DATASETS = {
    "pv": ("pv-nrel", "NREL PVDAQ system 50 (PV power, with NSRDB weather)"),
    "load": ("households-konstanz", "the CoSSMic Konstanz households (Open Power System Data)"),
    "price": ("dayahead-prices", "the ENTSO-E day-ahead prices"),
}


def _root(text: str | None, what: str) -> Path:
    """The data folder holding the public dataset of the ``what`` backtest, checked."""
    if text is None:
        from pems.calibration.datasets import shared_data

        root, key = shared_data(), "--data (default)"
    else:
        root, key = Path(text), "--data"
    folder, dataset = DATASETS[what]
    need = (f"the {what} backtest reads {dataset} from DIR/{folder}/, public data not shipped with PEMS; "
            "pass --data DIR or set PEMS_SHARED (DIR = $PEMS_SHARED/data)")
    if not root.is_dir():
        raise InputError(str(root), key, f"data folder not found: {need}")
    if not (root / folder).is_dir():
        raise InputError(str(root), key, f"no {folder}/ in this data folder: {need}")
    return root


def _households(text: str, variant: str) -> list[int]:
    if text.strip().lower() == "all":
        return [3, 4, 6] if variant == "pv-oracle" else [1, 2, 3, 4, 5, 6]
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= 6:
        raise InputError(CLI, "--household", f"{text!r} is not a household; expected 1–6 or 'all'")
    return [n]


def _print_result(name: str, r) -> None:
    """Model and baselines, one line each."""
    print(f"{name}: {r.role} → {r.target} [{r.unit}], {r.settings.get('origins')} origins")
    print(f"  {'':<12} {'MAE':>9} {'RMSE':>9} {'pinball':>9} {'coverage':>9} {'MAE skill':>10}")
    for k in ["model", *[b for b in r.metrics if b not in ("model", "skill")]]:
        m = r.metrics[k]
        skill = "" if k == "model" else f"{100 * r.metrics['skill'].get(f'mae_vs_{k}', float('nan')):+9.1f} %"
        cov = f"{m['coverage']:.3f}" if "coverage" in m else ""
        print(f"  {k:<12} {m['mae']:>9.4g} {m['rmse']:>9.4g} {m['pinball']:>9.4g} {cov:>9} {skill:>10}")


def cmd_forecast_backtest(args: argparse.Namespace) -> int:
    """Backtest a forecaster on public data → report.html, metrics.json, predictions.parquet."""
    if args.days is not None and args.days < 1:
        raise InputError(CLI, "--days", f"{args.days} must be at least 1")
    if args.issue_hour is not None and not 0 <= args.issue_hour <= 23:
        raise InputError(CLI, "--issue-hour", f"{args.issue_hour} is outside 0…23")
    out = output_dir(args.out, writes=("report.html", "metrics.json", "predictions.parquet"))
    if args.what == "correctors":
        return _backtest_correctors(args, out, t0=time.perf_counter())
    if args.what == "load":
        _households(args.household, args.variant or "default")  # a flag's problem before the data folder's
    root = _root(args.data, args.what)
    t0 = time.perf_counter()
    from pems.controllers.forecast.report import write_backtest, write_summary

    if args.what == "pv":
        variant = args.variant or PV_VARIANTS[0]
        try:
            from pems.controllers.forecast.pv import backtest_nrel
        except ImportError as exc:
            raise InputError(CLI, "pv", f"the PV forecaster is not available ({exc})") from None
        from pems.controllers.forecast import pv as pv_module

        known = tuple(getattr(pv_module, "VARIANTS", PV_VARIANTS))
        if variant not in known:
            raise InputError(CLI, "--variant",
                             f"unknown PV variant {variant!r}; expected one of {', '.join(known)}")
        prog, update = progress_bar(f"pv · {variant}")
        with prog:
            res = backtest_nrel(root / "pv-nrel", variant=variant, progress=update, days=args.days)
        path = write_backtest(res, out, f"PV forecast backtest · NREL PVDAQ · {variant}")
        _print_result(f"pv ({variant})", res)
        _register(args, res, f"nrel-system50-{variant}", "NREL PVDAQ system 50")
    elif args.what == "price":
        from pems.controllers.forecast.prices import ZONES, backtest_entsoe

        if args.zone not in ZONES:
            raise InputError(CLI, "--zone",
                             f"unknown zone {args.zone!r}; expected one of {', '.join(ZONES)}")
        if args.variant not in (None, "default"):
            raise InputError(CLI, "--variant", f"the price backtest has no variant {args.variant!r}")
        prog, update = progress_bar(f"price · {args.zone}")
        with prog:
            res = backtest_entsoe(root, args.zone, days=args.days,
                                  issue_hour=13 if args.issue_hour is None else args.issue_hour, progress=update)
        path = write_backtest(res, out, f"Day-ahead price forecast backtest · {args.zone}")
        _print_result(f"price ({args.zone})", res)
        _register(args, res, f"entsoe-{args.zone.lower()}", f"ENTSO-E day-ahead {args.zone}")
    else:
        from pems.controllers.forecast.load import VARIANTS, backtest_konstanz

        variant = args.variant or "default"
        if variant not in VARIANTS:
            raise InputError(CLI, "--variant", f"unknown load variant {variant!r}; expected one of "
                                                          f"{', '.join(VARIANTS)}")
        houses = _households(args.household, variant)
        results = {}
        for n in houses:
            prog, update = progress_bar(f"load · household {n}")
            with prog:
                res = backtest_konstanz(root, n, variant=variant, days=args.days, progress=update)
            results[f"household {n}"] = res
            folder = out / f"household-{n}" if len(houses) > 1 else out
            path = write_backtest(res, folder, f"Household load forecast backtest · Konstanz household {n}"
                                               + ("" if variant == "default" else f" · {variant}"))
            _print_result(f"household {n}", res)
            _register(args, res, f"konstanz-{n}" + ("" if variant == "default" else f"-{variant}"),
                      f"CoSSMic Konstanz household {n}")
        if len(houses) > 1:
            from pems.controllers.forecast.report import summary_frame

            path = write_summary(results, out, f"Household load forecast backtests · {variant}",
                                 links=[f"household-{n}/report.html" for n in houses],
                                 note="Day-ahead, issued at local midnight; skill = 1 − MAE/MAE(baseline).")
            with __import__("pandas").option_context("display.width", 160, "display.float_format", "{:.3g}".format):
                print(summary_frame(results).to_string(index=False))
    print(f"wrote {path} ({time.perf_counter() - t0:.0f} s)")
    return 0


def _register(args: argparse.Namespace, res, name: str, source: str) -> None:
    """Store the backtest's last-fitted model with its scores (``--registry``)."""
    if not args.registry or res.model is None:
        return
    from pems.controllers.forecast.registry import ModelRegistry

    desc = res.model.describe() if hasattr(res.model, "describe") else {}
    card = ModelRegistry(args.registry).register(
        res.model, res.role, name, data={**res.trained_on, "source": source}, metrics=res.card_metrics(),
        features=list(desc.get("features", [])), settings=desc.get("settings") or {})
    print(f"registered {card.ref} in {args.registry}")


def _backtest_correctors(args: argparse.Namespace, out: Path, t0: float) -> int:
    """Learn residual correctors from a [truth] scenario's history; score 24 h-ahead predictions."""
    from pems.controllers.forecast.corrector_scores import write_corrector_report
    from pems.scenarios.spec import load_scenario
    from pems.scenarios.unmodelled import corrector_backtest

    sc = load_scenario(args.scenario)
    if sc.spec.truth is None:
        raise InputError(str(sc.path), "truth", "the scenario has no [truth] section (unmodelled heat to learn)")
    with status(f"correctors · {sc.name}: simulating the history, learning, predicting"):
        bt = corrector_backtest(sc)
    path = write_corrector_report(bt, out)
    print(f"{sc.name}: 24 h-ahead room RMSE {bt.rmse_physics:.3f} K (twin alone) → {bt.rmse_corrected:.3f} K "
          f"(twin + correctors), −{100 * bt.reduction:.0f} %; rooms corrected: "
          f"{int(bt.rooms['enabled'].sum())}/{len(bt.rooms)}")
    if args.registry:
        from pems.controllers.forecast.registry import ModelRegistry

        from pems.controllers.forecast.home import corrector_card_metrics

        card = ModelRegistry(args.registry).register(bt.corrector, "corrector", sc.name,
                                                     metrics=corrector_card_metrics(bt))
        print(f"registered {card.ref} in {args.registry}")
    print(f"wrote {path} ({time.perf_counter() - t0:.0f} s)")
    return 0


def cmd_forecast_fit(args: argparse.Namespace) -> int:
    """Backtest a forecaster on the home's history, fit it for deployment, register it."""

    from pems.controllers.forecast.home import fit_home, register_fit
    from pems.controllers.forecast.registry import ModelRegistry, check_name, default_root
    from pems.controllers.forecast.report import write_backtest
    from pems.twin.house import load_house

    if args.days is not None and args.days < 1:
        raise InputError(CLI, "--days", f"{args.days} must be at least 1")
    house = load_house(args.house, source=CLI, key="--house")
    check_source(args.history, "--history")
    check_name(args.name or house.name, "--name")  # now, not after a long backtest
    start, end = parse_time(args.start, "--start"), parse_time(args.end, "--end")
    step = model_step(args.step_minutes)
    out = output_dir(args.out, writes=("report.html", "metrics.json", "predictions.parquet"),
                     inputs={"--history": args.history, "--house": args.house})
    t0 = time.perf_counter()
    rooms = args.what == "correctors"
    # a database holds years: default to the last two (the correctors: one)
    start, end = database_window(args.history, start, end, days=365 if rooms else 730)
    history = open_between(args.history, house, step, start, end, args.mapping, require_rooms=rooms)
    registry = ModelRegistry(args.registry if args.registry else default_root())
    if args.what == "correctors":
        return _fit_correctors(args, house, history, registry, out, t0)
    prog, update = progress_bar(f"{args.what} · backtest")
    with prog:
        fit = fit_home(args.what, history.data, house.site, str(args.history),
                       days=90 if args.days is None else args.days, progress=update)
    path = write_backtest(fit.backtest, out, f"{args.what.upper() if args.what == 'pv' else 'Load'} forecast "
                                             f"backtest · {house.name} · {args.history}")
    _print_result(args.what, fit.backtest)
    if fit.deployed != "model":
        print(f"deployed {fit.backtest.settings['deployed']}")
    card = register_fit(fit, registry, args.name or house.name, promote=args.promote)
    return _registered(registry, card, path, t0)


def _registered(registry, card, path: Path, t0: float) -> int:
    """Say what ``pems forecast fit`` registered and wrote."""
    champion = " (champion)" if registry.is_champion(card) else ""
    print(f"registered {card.ref}{champion} in {registry.root}")
    print(f"wrote {path} ({time.perf_counter() - t0:.0f} s)")
    return 0


def _fit_correctors(args: argparse.Namespace, house, history, registry, out: Path, t0: float) -> int:
    """``pems forecast fit correctors``: learn, score on held-out days, register the deployed ones."""
    import pandas as pd

    from pems.controllers.forecast.corrector_scores import write_corrector_report
    from pems.controllers.forecast.home import corrector_card_metrics, fit_home_correctors

    holdout = pd.Timedelta(days=14 if args.days is None else args.days)
    with status(f"correctors · {house.name}: learning, predicting the held-out days"):
        bt = fit_home_correctors(house, history.data, history.step, str(args.history), holdout=holdout)
    path = write_corrector_report(bt, out)
    print(f"{house.name}: 24 h-ahead room RMSE on the held-out days {bt.rmse_physics:.3f} K (twin alone) → "
          f"{bt.rmse_corrected:.3f} K (twin + correctors), {-100 * bt.reduction:+.0f} %; rooms corrected: "
          f"{int(bt.rooms['enabled'].sum())}/{len(bt.rooms)}")
    card = registry.register(bt.corrector, "corrector", args.name or house.name,
                             data={**bt.corrector.trained_on, "source": str(args.history)},
                             metrics=corrector_card_metrics(bt))
    if args.promote:
        card = registry.promote(card.ref)
    return _registered(registry, card, path, t0)
