"""``pems serve DIR``: the results browser over real outputs, by HTTP and in headless Chromium."""

from __future__ import annotations

import json
import re
import socket
import threading
import time

import pytest
from fastapi.testclient import TestClient

from pems.browser import Chromium, find_chromium
from pems.cli import main
from pems.scenarios.spec import load_scenario
from pems.web.app import results_app
from pems.web.results import find_results


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two real simulations of the built-in winter week's first day, a calibration's and a backtest's
    summaries, a model card, and a run whose kpis.json is broken."""
    root = tmp_path_factory.mktemp("results")
    text = load_scenario("winter-week").path.read_text(encoding="utf-8")
    text = re.sub(r"(?m)^days\s*=\s*\d+", "days = 1", text)
    sc = root / "winter-day.toml"
    sc.write_text(text, encoding="utf-8")
    for ctrl in ("rule-based", "rule-based-preheat"):
        assert main(["simulate", str(sc), "--controller", ctrl, "--out", str(root / "runs" / ctrl)]) == 0
    cal = root / "cal"
    cal.mkdir()
    (cal / "calibration.json").write_text(json.dumps(
        {"house": {"name": "my house"}, "summary": {"rmse_24h_k_mean": 0.146, "validation_days": 109}}))
    (cal / "report.html").write_text("<html><title>cal</title><body>calibration</body></html>")
    card = root / "models" / "load" / "home" / "v001"
    card.mkdir(parents=True)
    (card / "card.json").write_text(json.dumps({"role": "load", "name": "home", "version": 1, "kind": "LoadForecaster",
                                                "created": "2026-12-01", "metrics": {"mae": 210.5}}))
    bad = root / "broken"
    bad.mkdir()
    (bad / "kpis.json").write_text("{not json")
    return root


def test_the_index_lists_every_output_with_its_numbers(folder):
    rs = {r.path: r for r in find_results(folder)}
    assert set(rs) == {"runs/rule-based", "runs/rule-based-preheat", "cal", "broken"}
    run = rs["runs/rule-based"]
    kpis = json.loads((folder / "runs" / "rule-based" / "kpis.json").read_text())
    assert run.kind == "run" and run.summary["cost"] == kpis["cost"] and run.report == "runs/rule-based/report.html"
    assert rs["broken"].problem and "kpis.json" in rs["broken"].problem
    c = TestClient(results_app(folder))
    page = c.get("/").text
    assert "rule-based-preheat" in page and "0.146" in page and "calibration" in page
    assert "/files/runs/rule-based/report.html" in page and "kpis.json" in page  # the broken one says why
    assert "1 model card" in page


def test_reports_are_served_and_nothing_outside_the_folder(folder):
    c = TestClient(results_app(folder))
    r = c.get("/files/runs/rule-based/report.html")
    assert r.status_code == 200 and "<html" in r.text.lower()
    (folder.parent / "secret.txt").write_text("not yours")
    for path in ("/files/../secret.txt", "/files/%2e%2e/secret.txt", "/files/runs/../../secret.txt"):
        assert c.get(path).status_code == 404, path


def test_two_reports_side_by_side_and_an_unknown_one_refused(folder):
    c = TestClient(results_app(folder))
    r = c.get("/compare", params={"a": "runs/rule-based/report.html", "b": "runs/rule-based-preheat/report.html"})
    assert r.status_code == 200 and r.text.count("<iframe") == 2
    assert c.get("/compare", params={"a": "runs/rule-based/report.html", "b": "../x.html"}).status_code == 404
    m = c.get("/models").text
    assert "load/home/v001" in m and "210.5" in m


def test_serve_refuses_a_missing_folder(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "nope")]) == 2
    assert "DIR" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(find_chromium() is None, reason="Chromium not installed (Debian: apt-get install chromium, "
                                                    "or tools/install_services.sh)")
def test_in_a_browser_the_index_and_the_comparison_render(folder):
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(results_app(folder), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        end = time.monotonic() + 10
        while not server.started and time.monotonic() < end:
            time.sleep(0.05)
        assert server.started
        with Chromium() as b:
            page = b.open(f"http://127.0.0.1:{port}/", width=1366)
            assert page.evaluate("document.querySelectorAll('table tr').length") >= 5
            assert page.layout_problems() == []
            cmp = b.open(f"http://127.0.0.1:{port}/compare?a=runs/rule-based/report.html"
                         f"&b=runs/rule-based-preheat/report.html", width=1366)
            # both reports loaded inside their frames, with their figures
            assert cmp.evaluate("[...document.querySelectorAll('iframe')].map(f => "
                                "f.contentDocument.images.length).every(n => n >= 2)")
    finally:
        server.should_exit = True
        thread.join(5)
