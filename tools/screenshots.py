"""The README's pictures, taken from the demo's report as a browser shows it.

``pems demo`` writes ``out/demo/report.html`` (the winter week with every controller: the same
report ``pems bench winter-week`` writes); this tool opens it in headless Chromium (Debian's
``chromium``, through :mod:`pems.browser`) in a 1366 px window, checks that its tables fit and its
figures loaded, and crops the README's pictures out of it::

    python tools/screenshots.py                    # runs `pems demo --out out/demo` if its report is missing
    python tools/screenshots.py --run              # runs the demo again first (after a model or data change)
    python tools/screenshots.py --report out/bench-peers/report.html   # another bench's report
    python tools/screenshots.py --docs /tmp/pics   # write somewhere else to look first

Each picture is one element of the report (a heading down to its figure), named in :data:`SHOTS`.
Exit code 1 when the report has a layout problem (the pictures are written all the same) or a
picture's element is missing; 2 when Chromium is not installed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pems.browser import BrowserError, Chromium, find_chromium

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Shot:
    """One picture: the report's element from ``start`` down to ``end`` (CSS selectors), at ``scale``."""

    name: str
    start: str
    end: str | None = None
    scale: float = 1.0


#: The README's pictures. The first scenario section of the report is the winter week.
SHOTS = (
    # the energy system of the week: weather, prices, heating, powers, state of charge
    Shot("report-winter-week.png", "section.scenario h3.overview", "section.scenario img[alt=overview]", 0.6),
    # every KPI per controller as bars
    Shot("bench-winter-week.png", "img[alt=comparison]"),
    # net cost by hour of day and imports by price decile
    Shot("bench-winter-week-where.png", "section.scenario img[alt=where]"),
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", type=Path, default=ROOT / "out" / "demo" / "report.html",
                    help="the bench or demo report to photograph (default: out/demo/report.html)")
    ap.add_argument("--run", action="store_true", help="run `pems demo` first, even when the report exists")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs", help="where the PNGs go (default: docs/)")
    ap.add_argument("--width", type=int, default=1366, help="the browser window's width [px] (default: 1366)")
    args = ap.parse_args(argv)

    if find_chromium() is None:
        print("screenshots: Chromium not found (Debian: apt-get install chromium, or tools/install_services.sh)",
              file=sys.stderr)
        return 2
    if args.run or not args.report.exists():
        print(f"running pems demo --out {args.report.parent} (every controller on the winter week) …")
        subprocess.run([sys.executable, "-m", "pems", "demo", "--out", str(args.report.parent)], check=True)
    t0 = time.perf_counter()
    code = 0
    with Chromium() as browser:
        page = browser.open(args.report, width=args.width)
        for problem in page.layout_problems():
            print(f"screenshots: {args.report}: {problem}", file=sys.stderr)
            code = 1
        for shot in SHOTS:
            try:
                out = page.screenshot(args.docs / shot.name, shot.start, shot.end, scale=shot.scale)
            except BrowserError as e:
                print(f"screenshots: {shot.name}: {e}", file=sys.stderr)
                code = 1
                continue
            print(f"wrote {out} ({out.stat().st_size / 1024:.0f} kB)")
    print(f"from {args.report} in {time.perf_counter() - t0:.1f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
