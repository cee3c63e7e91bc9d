"""The words and numbers of the run and bench reports: the KPI table, the period line and the "why".

Numbers are shown as a person reads them: each KPI with the digits its unit deserves (money to the
cent, energy to 0.1 kWh, shares in %, controller time in ms), float noise shown as 0, the tariff's
currency instead of "currency". The table has one row per KPI and one column per controller, so
it stays narrow however many KPIs there are; a handful of controllers fit a laptop's window.
"""

from __future__ import annotations

import html
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from pems.reporting import utc_offset

# -- numbers ------------------------------------------------------------------------------------------


def _missing(v: object) -> bool:
    return not isinstance(v, numbers.Real) or not math.isfinite(v)  # numpy's numbers are Real too


def fixed(decimals: int) -> Callable[[float], str]:
    """A formatter with ``decimals`` digits after the point and thousands separators.

    Values that round to zero show as zero, without a sign: an export of 4e-16 kWh is float noise
    from netting imports and exports per step, not a number to read.
    """
    def fmt(v: float) -> str:
        if _missing(v):
            return "–"
        return f"{round(float(v), decimals) + 0.0:,.{decimals}f}"  # + 0.0 turns -0.0 into 0.0
    return fmt


def energy(v: float) -> str:
    """kWh: one decimal below 100 kWh, whole kWh above (a week's heating is 738 kWh, not 738.4)."""
    return fixed(0)(v) if not _missing(v) and abs(v) >= 100 else fixed(1)(v)


def share(v: float) -> str:
    """A 0–1 share as a percentage."""
    return "–" if _missing(v) else f"{fixed(1)(100 * v)} %"


def gap(v: float) -> str:
    """A relative distance (0.152) as a signed percentage (+15.2 %); zero has no sign."""
    if _missing(v):
        return "–"
    text = fixed(1)(100 * v)
    return f"{text} %" if text in ("0.0", "-0.0") else f"{100 * v:+.1f} %"


def milliseconds(v: float) -> str:
    """Seconds shown in ms; a thermostat's microseconds are "< 0.1"."""
    if _missing(v):
        return "–"
    return "< 0.1" if 0 <= v < 0.5e-4 else fixed(1)(1000 * v) if v < 1 else fixed(0)(1000 * v)


# -- the KPI table ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One line of the KPI table: a KPI's key, its name, its unit as shown and how to format it."""

    key: str
    label: str
    unit: str  # "{cur}" stands for the tariff's currency
    fmt: Callable[[float], str]


#: The KPI table's lines in reading order: money, comfort, energy, grid and battery, controller.
#: ``cost_gap_to_oracle`` and ``fallbacks`` come from a bench (kpis.csv); a line whose KPI no
#: run has is left out.
ROWS: tuple[Row, ...] = (
    Row("cost", "Cost", "{cur}", fixed(2)),
    Row("cost_gap_to_oracle", "Cost above oracle", "", gap),
    Row("import_price_avg", "Mean import price", "{cur}/kWh", fixed(3)),
    Row("discomfort_Kh", "Discomfort", "K·h", fixed(2)),
    Row("discomfort_Kh_per_room", "Discomfort per room", "K·h", fixed(2)),
    Row("heating_kWh", "Heating", "kWh", energy),
    Row("energy_import_kWh", "Grid import", "kWh", energy),
    Row("energy_export_kWh", "Grid export", "kWh", energy),
    Row("pv_kWh", "PV production", "kWh", energy),
    Row("curtailed_kWh", "PV curtailed", "kWh", energy),
    Row("load_kWh", "Household load", "kWh", energy),
    Row("peak_import_kW", "Peak import", "kW", fixed(2)),
    Row("self_consumption", "Self-consumption", "", share),
    Row("self_sufficiency", "Self-sufficiency", "", share),
    Row("battery_cycles", "Battery cycles", "", fixed(2)),
    Row("relay_switches", "Relay switches", "", fixed(0)),
    Row("compute_s_per_step", "Compute per step, median", "ms", milliseconds),
    Row("compute_s_per_step_max", "Compute per step, max", "ms", milliseconds),
    Row("compute_s_mean", "Compute per step, mean", "ms", milliseconds),
    Row("fallbacks", "Controller fallbacks", "steps", fixed(0)),
)


#: What the KPIs mean, under every KPI table.
KPI_NOTE = ("<p class='note'>Cost: import × import price − export × export price, netted per step. "
            "Discomfort: Σ rooms ∫ distance outside the comfort band dt (BOPTEST tdis_tot). "
            "Self-consumption: PV used on site / PV produced. Self-sufficiency: 1 − import / (load + heating "
            "+ losses). Battery cycles: discharge / usable capacity. Compute: the controller's wall time "
            "per control step.</p>")


def unit_text(unit: str, currency: str) -> str:
    """A unit as shown, with the tariff's currency (``{cur}/kWh`` → ``EUR/kWh``)."""
    return unit.replace("{cur}", currency)


def kpi_table(runs: Sequence[tuple[str, Mapping[str, float]]], currency: str) -> str:
    """The KPI table (HTML): one row per KPI (name and unit), one column per controller.

    Parameters
    ----------
    runs
        ``(controller, kpis)`` pairs, in the order of the columns.
    currency
        The tariff's currency code, shown in money units [–].
    """
    head = "".join(f"<th>{html.escape(name)}</th>" for name, _ in runs)
    lines = []
    for row in ROWS:
        values = [k.get(row.key) for _, k in runs]
        if all(v is None for v in values):
            continue
        unit = unit_text(row.unit, currency)
        name = html.escape(row.label) + (f" <small>[{html.escape(unit)}]</small>" if unit else "")
        cells = "".join(f"<td>{html.escape(row.fmt(v))}</td>" for v in values)  # "< 0.1" is text
        lines.append(f"<tr><th>{name}</th>{cells}</tr>")
    return f"<table class='kpi'><tr><th>KPI</th>{head}</tr>{''.join(lines)}</table>"


def frame_runs(frame: pd.DataFrame) -> list[tuple[str, dict[str, float]]]:
    """``(controller, kpis)`` pairs from rows of a bench's KPI frame (NaN cells become absent)."""
    out = []
    for _, r in frame.iterrows():
        kpis = {k: float(v) for k, v in r.items() if k not in ("scenario", "controller")
                and isinstance(v, numbers.Real) and pd.notna(v)}
        out.append((str(r["controller"]), kpis))
    return out


# -- the period ---------------------------------------------------------------------------------------


def period_text(index: pd.DatetimeIndex, tz: str) -> str:
    """The simulated period in the house's local time: from the first step's start to the last
    step's end ("2024-01-22 00:00 – 2024-01-23 00:00 Europe/Prague (UTC+01:00), 96 steps of 15 min").

    Parameters
    ----------
    index
        Step starts of a trajectory (tz-aware).
    tz
        The house's IANA time zone.
    """
    step = pd.Series(index).diff().median() if len(index) > 1 else pd.Timedelta(0)
    start, end = index[0].tz_convert(tz), (index[-1] + step).tz_convert(tz)
    minutes = step.total_seconds() / 60
    return (f"{start:%Y-%m-%d %H:%M} – {end:%Y-%m-%d %H:%M} {tz} ({utc_offset(start)}), "
            f"{len(index)} steps of {minutes:g} min")


# -- why: where the money went against the rule-based home --------------------------------------------


@dataclass(frozen=True)
class CostDifference:
    """How one controller's bill differs from a baseline's, split three ways [currency].

    With import energy ``E``, mean import price ``p`` and export earnings ``X``, a bill is
    ``E·p − X``, so ``saved = (E₀ − E)·p₀ + (p₀ − p)·E + (X − X₀)`` holds exactly: importing less
    (valued at the baseline's price), paying less per kWh bought (on what was bought) and earning
    more from export. Positive amounts are savings.
    """

    saved: float  # baseline cost − cost
    volume: float  # from importing less
    price: float  # from paying less per kWh bought
    export: float  # from earning more for export
    import_kwh_less: float  # [kWh]
    heating_kwh_less: float  # [kWh]
    price_pct_less: float  # [%] of the baseline's mean import price
    export_kwh_more: float  # [kWh]


def cost_difference(base: Mapping[str, float], run: Mapping[str, float]) -> CostDifference:
    """The :class:`CostDifference` of ``run`` against ``base`` (two KPI dicts of one scenario)."""
    e0, e1 = base["energy_import_kWh"], run["energy_import_kWh"]
    p0, p1 = base.get("import_price_avg", math.nan), run.get("import_price_avg", math.nan)
    # A run that imported nothing has no mean price: value its (absent) imports at the other's.
    p0 = p0 if math.isfinite(p0) else p1 if math.isfinite(p1) else 0.0
    p1 = p1 if math.isfinite(p1) else p0
    saved = base["cost"] - run["cost"]
    volume = (e0 - e1) * p0
    price = (p0 - p1) * e1
    return CostDifference(
        saved=saved, volume=volume, price=price,
        export=saved - volume - price,  # = X − X₀, since cost = E·p − X for both runs
        import_kwh_less=e0 - e1, heating_kwh_less=base["heating_kWh"] - run["heating_kWh"],
        price_pct_less=100 * (p0 - p1) / p0 if p0 else 0.0,
        export_kwh_more=run.get("energy_export_kWh", 0.0) - base.get("energy_export_kWh", 0.0))


def _more_less(x: float, unit: str, decimals: int = 0) -> str:
    return f"{abs(x):.{decimals}f} {unit} {'less' if x > 0 else 'more'}"


def why_sentence(controller: str, d: CostDifference, currency: str, baseline: str = "rule-based") -> str:
    """One controller's bill against the baseline's, said as a person would say it.

    "saves 1.73 EUR against rule-based: 3.22 from paying 12.5 % less per kWh bought, minus 1.49 for
    importing 7 kWh more (heating 6 kWh more)" — or, the other way round, "costs 0.40 EUR more than
    rule-based: …". The parts add up to the total, the main direction first, each part larger than
    half a cent once, in the order of their size.
    """
    heating = ("heating the same" if round(d.heating_kwh_less) == 0
               else f"heating {_more_less(d.heating_kwh_less, 'kWh')}")
    parts = [
        (d.volume, ("importing the same energy" if round(d.import_kwh_less) == 0
                    else f"importing {_more_less(d.import_kwh_less, 'kWh')}") + f" ({heating})"),
        (d.price, f"paying {_more_less(d.price_pct_less, '%', 1)} per kWh bought"),
        (d.export, "earning " + ("more" if d.export > 0 else "less") + " for export"
         + ("" if round(d.export_kwh_more) == 0 else
            f" ({abs(d.export_kwh_more):.0f} kWh {'more' if d.export_kwh_more > 0 else 'less'} exported)")),
    ]
    parts = sorted([p for p in parts if abs(p[0]) >= 0.005], key=lambda p: -abs(p[0]))
    name = f"<b>{html.escape(controller)}</b>"
    if abs(d.saved) < 0.005:
        head, sign = f"{name} costs the same as {html.escape(baseline)}", 1.0
    elif d.saved > 0:
        head, sign = f"{name} saves {d.saved:.2f} {html.escape(currency)} against {html.escape(baseline)}", 1.0
    else:
        head, sign = f"{name} costs {-d.saved:.2f} {html.escape(currency)} more than {html.escape(baseline)}", -1.0
    # "from" a saving, "for" a cost; the parts against the total's direction are subtracted.
    main = [f"{abs(a):.2f} {'from' if a > 0 else 'for'} {html.escape(t)}" for a, t in parts if sign * a > 0]
    against = [f"minus {abs(a):.2f} {'from' if a > 0 else 'for'} {html.escape(t)}" for a, t in parts if sign * a <= 0]
    return head + (": " + ", ".join(main + against) if parts else "")


def why_text(frame: pd.DataFrame, currency: str, baseline: str = "rule-based") -> str:
    """The "Why" list of a bench section: each controller's bill against the baseline's, and its
    comfort; empty when the baseline did not run."""
    if baseline not in set(frame.controller):
        return ""
    base = frame[frame.controller == baseline].iloc[0]
    items = []
    for _, r in frame.iterrows():
        if r.controller == baseline:
            continue
        d = cost_difference(base, r)
        items.append(f"<li>{why_sentence(str(r.controller), d, currency, baseline)}. Discomfort "
                     f"{r.discomfort_Kh_per_room:.2f} K·h per room ({html.escape(baseline)} "
                     f"{base.discomfort_Kh_per_room:.2f}).</li>")
    return f"<h3>Why</h3><ul class='why'>{''.join(items)}</ul>"
