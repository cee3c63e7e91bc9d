"""The README's pictures of the web app, taken in headless Chromium as a person sees them.

- ``docs/web-results.png``: ``pems serve`` on a results folder (default ``out/demo``, from ``make demo``);
- ``docs/web-live.png``: the live page of the loop running the built-in winter week's emulated home
  (MPC, a real mosquitto on 127.0.0.1 from Debian's package, the emulated clock at 1500×), taken
  after a day and a half of the home's time, and ``docs/web-live-why.png``: why the plan does what it
  does and the savings against the rule-based twin, below it on the same page::

    python tools/web_screenshots.py                 # both
    python tools/web_screenshots.py --results out/bench-peers --docs /tmp/pics

Exit code 2 when Chromium or mosquitto is not installed (``tools/install_services.sh``).
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test suite's mosquitto starter (services.py)

from pems.browser import Chromium, find_chromium  # noqa: E402


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def results_picture(results: Path, out: Path) -> None:
    from pems.web.app import results_app
    from pems.web.live_app import Server

    server = Server(results_app(results), "127.0.0.1", _port()).start()
    try:
        with Chromium() as b:
            page = b.open(server.url, width=1366)
            page.screenshot(out, selector="h1", until="table", scale=0.7)
    finally:
        server.stop()


def live_picture(out: Path, hours: float = 36.0) -> None:
    from services import mosquitto

    from pems.live.emulated_run import EmulatedRun
    from pems.scenarios.runner import prepare
    from pems.scenarios.spec import load_scenario
    from pems.web.live_app import Server, live_app

    with tempfile.TemporaryDirectory() as tmp, mosquitto(Path(tmp)) as broker:
        run = EmulatedRun(prepare(load_scenario("winter-week")), broker.host, broker.port, speed=1500.0,
                          hours=hours + 2, events_path=Path(tmp) / "events.jsonl", state_dir=Path(tmp) / "state")
        run.start()
        server = Server(live_app(run.loop.view, "PEMS live · winter week (emulated)"), "127.0.0.1", _port()).start()
        try:
            end = time.monotonic() + hours * 3600 / 1500 + 60
            while run.loop.home.k < hours * 4 and time.monotonic() < end:
                time.sleep(1.0)
            with Chromium() as b:
                page = b.open(server.url, width=1366, height=1400)
                page.evaluate("document.getElementById('room').value = 0")
                time.sleep(1.0)
                page.screenshot(out, selector="h1", until="#battery_plot", scale=0.6)
                page.screenshot(out.with_name(out.stem + "-why.png"), selector="#why_head", until="#savings_plot",
                                scale=0.6)
        finally:
            server.stop()
            run.finish()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=ROOT / "out" / "demo", help="results folder (default out/demo)")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs", help="where the pictures go (default docs/)")
    ap.add_argument("--only", choices=("results", "live"))
    args = ap.parse_args()
    if find_chromium() is None:
        print("web_screenshots: Chromium is not installed (tools/install_services.sh)", file=sys.stderr)
        return 2
    if args.only in (None, "results"):
        if not args.results.is_dir():
            print(f"web_screenshots: {args.results} not found (make demo writes out/demo)", file=sys.stderr)
            return 2
        results_picture(args.results, args.docs / "web-results.png")
        print(f"wrote {args.docs / 'web-results.png'}")
    if args.only in (None, "live"):
        try:
            live_picture(args.docs / "web-live.png")
        except BaseException as exc:  # pytest.skip from the mosquitto starter when it is not installed
            if type(exc).__name__ == "Skipped":
                print(f"web_screenshots: {exc}", file=sys.stderr)
                return 2
            raise
        print(f"wrote {args.docs / 'web-live.png'} and {args.docs / 'web-live-why.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
