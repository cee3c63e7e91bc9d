"""Regenerate the README's report picture: ``python tools/readme_figure.py`` → docs/report-winter-week.png."""

from __future__ import annotations

from pathlib import Path

from pems.scenarios.report import overview_figure
from pems.scenarios.runner import prepare, run
from pems.scenarios.spec import load_scenario

OUT = Path(__file__).resolve().parent.parent / "docs" / "report-winter-week.png"

if __name__ == "__main__":
    prep = prepare(load_scenario("winter-week"))
    fig = overview_figure([run(prep, "rule-based")])
    fig.savefig(OUT, dpi=60, bbox_inches="tight")
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} kB)")
