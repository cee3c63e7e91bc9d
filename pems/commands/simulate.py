"""``pems simulate``, ``pems bench``, ``pems demo`` and ``pems list``: scenarios in the simulated home."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pems.commands.arguments import CLI, check_controller, output_dir
from pems.commands.progress import progress_bar
from pems.errors import InputError

#: What a run writes into its folder.
RUN_FILES = ("trajectory.parquet", "kpis.json", "events.jsonl", "report.html")


def _inputs(sc) -> dict[str, Path]:
    """A scenario's own files by key (none of them may be overwritten by an output)."""
    files = {"scenario": sc.path}
    for key in ("weather", "prices", "load"):
        value = getattr(sc.spec, key)
        path = sc.base_dir / value
        if path.suffix:
            files[key] = path
    if Path(sc.spec.house).suffix:
        files["house"] = sc.base_dir / sc.spec.house
    return files


def cmd_simulate(args: argparse.Namespace) -> int:
    """One scenario with one controller → trajectory.parquet, kpis.json, events.jsonl, report.html."""
    from pems.scenarios.spec import load_scenario

    sc = load_scenario(args.scenario)  # validate everything before the heavy imports
    if args.controller:
        name = check_controller(args.controller, CLI, "--controller")
    else:
        name = check_controller(sc.spec.controller, str(sc.path), "controller")
    out = output_dir(args.out or f"out/{sc.name}-{name}", writes=RUN_FILES, inputs=_inputs(sc))
    from pems.scenarios.outputs import write_run
    from pems.scenarios.runner import prepare, run

    t0 = time.perf_counter()
    prep = prepare(sc)
    prog, update = progress_bar(f"{sc.name} · {name}")
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
    """Every scenario × controller → kpis.csv and report.html."""
    from pems.controllers import available
    from pems.scenarios.spec import load_scenario

    scenarios = args.scenarios or ["winter-week"]
    loaded = [load_scenario(s) for s in scenarios]  # validate every input before the first (long) run
    learning = any(sc.spec.truth is not None for sc in loaded)
    if args.controllers is None:
        names = list(available(learning=learning))
    else:
        names = list(dict.fromkeys(n.strip() for n in args.controllers.split(",") if n.strip()))
        if not names:
            raise InputError(CLI, "--controllers", f"no controller named; expected a comma-separated list of "
                                                   f"{', '.join(available(peers=True))} (leave the flag out for all)")
    for n in names:
        check_controller(n, CLI, "--controllers")
    inputs = {f"{sc.name}: {k}": p for sc in loaded for k, p in _inputs(sc).items()}
    out = output_dir(args.out, writes=("kpis.csv", "report.html"), inputs=inputs)
    from pems.scenarios.bench import run_bench

    t0 = time.perf_counter()
    frame = run_bench(scenarios, names, out, progress=progress_bar)
    for line in kpi_lines(frame):
        print(line)
    print(f"wrote {out}/report.html, {out}/kpis.csv and one folder per run ({time.perf_counter() - t0:.0f} s)")
    return 0


def _compute(row) -> str:
    """The controller's compute per step: the median in ms (or s); the oracle's one solve of the whole run."""
    med, top = row.get("compute_s_per_step"), row.get("compute_s_per_step_max")
    if med is None or med != med:
        return ""
    if row["controller"] == "oracle" and top == top and top is not None:
        # it plans the whole run in its first step, then follows the plan
        return f"{1000 * top:.0f} ms once" if top < 1 else f"{top:.1f} s once"
    text = "< 0.1 ms" if med < 1e-4 else (f"{1000 * med:.1f} ms" if med < 1 else f"{med:.2f} s")
    if top == top and top is not None and top > 0.5 and top > 20 * med:
        # a controller that plans now and then (EMHASS hourly or daily) and plays the plan between
        text += f", plans ≤ {top:.1f} s"
    return text


def kpi_lines(frame) -> list[str]:
    """The KPI table ``pems demo`` and ``pems bench`` print: one line per run (a scenario column when
    there are several), the cost and its distance to the oracle (with what the run leaves for the day
    after), discomfort, heating and import energy, and the compute per step."""
    several = frame["scenario"].nunique() > 1
    gaps = "cost_gap_to_oracle" in frame and frame["cost_gap_to_oracle"].notna().any()
    sw = max([8, *(len(str(x)) for x in frame["scenario"])]) if several else 0
    cw = max([10, *(len(str(x)) for x in frame["controller"])])
    head = (f"{'scenario':<{sw}} " if several else "") + f"{'controller':<{cw}} {'cost':>8}"
    head += f" {'vs oracle':>9}" if gaps else ""
    head += f" {'discomfort':>10} {'heating':>9} {'import':>9} {'compute/step':>13}"
    lines = [head]
    for _, k in frame.iterrows():
        line = (f"{k['scenario']:<{sw}} " if several else "") + f"{k['controller']:<{cw}} {k['cost']:>8.2f}"
        if gaps:
            g = k["cost_gap_to_oracle"]
            text = "" if g != g else "bound" if k["controller"] == "oracle" else f"{100 * g:+.1f} %"
            line += f" {text:>9}"
        line += (f" {k['discomfort_Kh']:>6.1f} K·h {k['heating_kWh']:>5.0f} kWh {k['energy_import_kWh']:>5.0f} kWh"
                 f" {_compute(k):>13}")
        lines.append(line)
    if gaps:
        lines.append("vs oracle: the cost above the perfect-foresight bound, counting what each run leaves for "
                     "the day after (docs/reference/kpis.md)")
    return lines


def _demo_days(days: float | None) -> float | None:
    """``--days``: more than 0, at most the week, a whole number of the week's 15-minute steps."""
    if days is None:
        return None
    if not (0 < days <= 7) or abs(days * 96 - round(days * 96)) > 1e-9:
        raise InputError(CLI, "--days", f"{days:g}: expected a number of days above 0 and at most 7, "
                                        "in steps of 15 minutes (e.g. 1, 2 or 0.5)")
    return days


def cmd_demo(args: argparse.Namespace) -> int:
    """The winter week with every available controller, one report comparing them."""
    from pems.controllers import available
    from pems.scenarios.spec import load_scenario

    days = _demo_days(args.days)
    out = output_dir(args.out, writes=("kpis.csv", "report.html"))
    from pems.scenarios.bench import run_bench

    scenario = "winter-week"
    if days is not None:  # a shorter look at the same week
        sc = load_scenario(scenario)
        text = sc.path.read_text(encoding="utf-8").replace("days = 7", f"days = {days:g}")
        out.mkdir(parents=True, exist_ok=True)
        short = out / "winter-week-short.toml"
        short.write_text(text.replace('name = "winter-week"', 'name = "winter-week-short"'), encoding="utf-8")
        scenario = str(short)
    t0 = time.perf_counter()
    frame = run_bench([scenario], list(available(learning=False)), out, progress=progress_bar)
    for line in kpi_lines(frame):
        print(line)
    print(f"wrote {out}/report.html, {out}/kpis.csv and one folder per run ({time.perf_counter() - t0:.0f} s)")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """The built-in houses, scenarios, weather sets, prices, loads and controllers, each with what it
    is (the registry of the README's table, :func:`pems.docs.builtin_catalog`)."""
    from pems.controllers import available
    from pems.docs import builtin_catalog

    runnable = set(available(peers=True))
    catalog = builtin_catalog()
    width = max(len(name) for _, items in catalog for name, _ in items)
    for kind, items in catalog:
        print(f"{kind}s:" if kind not in ("weather", "prices") else f"{kind}:")
        for name, what in items:
            if kind == "controller" and name not in runnable:
                what += " (not installed here)"
            print(f"  {name:<{width}}  {what}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``simulate``, ``demo``, ``bench`` and ``list`` to the ``pems`` sub-commands."""
    s = sub.add_parser("simulate", help="run one scenario with one controller")
    s.add_argument("scenario", help="built-in scenario name or path to a scenario TOML file")
    s.add_argument("--controller", help="controller name (default: the scenario's, else rule-based)")
    s.add_argument("--out", help="output folder (default: out/SCENARIO-CONTROLLER)")
    s.set_defaults(func=cmd_simulate)

    d = sub.add_parser("demo", help="the winter week with every available controller; no configuration")
    d.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    d.add_argument("--days", type=float, help="only the first DAYS of the week, 0 < DAYS ≤ 7 (a quicker look)")
    d.set_defaults(func=cmd_demo)

    b = sub.add_parser("bench", help="every scenario × controller → kpis.csv and report.html")
    b.add_argument("scenarios", nargs="*", metavar="SCENARIO", help="built-in names or TOML paths (default: winter-week)")
    b.add_argument("--controllers", help="comma-separated controller names (default: all)")
    b.add_argument("--out", default="out/bench", help="output folder (default: out/bench)")
    b.set_defaults(func=cmd_bench)

    ls = sub.add_parser("list", help="the built-in houses, scenarios, weather, prices, loads and controllers, "
                                     "each with what it is")
    ls.set_defaults(func=cmd_list)
