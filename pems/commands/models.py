"""``pems models list|show|promote|drift``: the model registry from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pems.errors import ExitCode, InputError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``models list|show|promote|drift`` to the ``pems`` sub-commands."""
    m = sub.add_parser("models", help="the model registry: list, show, promote, check drift")
    m.add_argument("--registry", type=Path, default=None,
                   help="registry folder (default: $PEMS_MODELS, else ~/.local/share/pems/models)")
    ms = m.add_subparsers(dest="models_cmd", required=True)
    ls = ms.add_parser("list", help="every model version; * marks the champion of its role")
    ls.add_argument("--role", help="only this role (pv, load, price, corrector)")
    ls.set_defaults(func=cmd_models_list)
    sh = ms.add_parser("show", help="a model card (REF: role, role/name or role/name/vNNN)")
    sh.add_argument("ref")
    sh.set_defaults(func=cmd_models_show)
    pr = ms.add_parser("promote", help="make REF the champion of its role")
    pr.add_argument("ref")
    pr.set_defaults(func=cmd_models_promote)
    dr = ms.add_parser("drift", help="Page–Hinkley check of live residuals against the model's reference MAE "
                                     f"(exit code {int(ExitCode.DRIFT)}: retrain due)")
    dr.add_argument("ref")
    dr.add_argument("--residuals", type=Path, required=True,
                    help="CSV or Parquet with a column 'residual' (or 'y' and 'p50')")
    dr.set_defaults(func=cmd_models_drift)


def _registry(args: argparse.Namespace):
    from pems.controllers.forecast.registry import ModelRegistry

    return ModelRegistry(args.registry)


def cmd_models_list(args: argparse.Namespace) -> int:
    reg = _registry(args)
    cards = reg.cards(args.role)
    if not cards:
        print(f"no models in {reg.root}" + (f" for role {args.role!r}" if args.role else ""))
        return 0
    print(f"  {'model':<40} {'created':<20} {'data':<25} {'MAE':>9}  status")
    for c in cards:
        star = "*" if reg.is_champion(c) else " "
        span = f"{str(c.data.get('start', ''))[:10]}..{str(c.data.get('end', ''))[:10]}" if c.data else ""
        mae = c.reference_mae
        status = "retrain due" if c.drift and c.drift.get("retrain_due") else ""
        print(f"{star} {c.ref:<40} {c.created[:19]:<20} {span:<25} {'' if mae is None else f'{mae:9.4g}'}  {status}")
    return 0


def cmd_models_show(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    reg = _registry(args)
    card = reg.card(args.ref)
    out = asdict(card)
    out["champion"] = reg.is_champion(card)
    print(json.dumps(out, indent=2))
    return 0


def cmd_models_promote(args: argparse.Namespace) -> int:
    reg = _registry(args)
    card = reg.promote(args.ref)
    print(f"{card.ref} is now the champion of role {card.role!r}")
    return 0


def cmd_models_drift(args: argparse.Namespace) -> int:
    import numpy as np

    import pandas as pd

    if not args.residuals.is_file():
        raise InputError(str(args.residuals), "", "file not found")
    try:
        table = (pd.read_parquet(args.residuals) if args.residuals.suffix.lower() in (".parquet", ".pq")
                 else pd.read_csv(args.residuals))
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad input file
        raise InputError(str(args.residuals), "", f"cannot read ({exc.__class__.__name__}: {exc})") from None
    if "residual" in table:
        res = table["residual"].to_numpy(dtype=float)
    elif {"y", "p50"} <= set(table.columns):
        res = (table["y"] - table["p50"]).to_numpy(dtype=float)
    else:
        raise InputError(str(args.residuals), "columns", "expected a column 'residual', or 'y' and 'p50'")
    reg = _registry(args)
    rep = reg.check_drift(args.ref, np.abs(res))
    verdict = "RETRAIN DUE" if rep.retrain_due else "no drift"
    print(f"{args.ref}: {verdict} (Page–Hinkley {rep.statistic:.3g} vs threshold {rep.threshold:.3g}; "
          f"reference MAE {rep.reference_mae:.3g}, recent MAE {rep.recent_mae:.3g}, n={rep.n})")
    return ExitCode.DRIFT if rep.retrain_due else ExitCode.OK
