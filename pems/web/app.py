"""The results browser (``pems serve DIR``): every output PEMS wrote under a folder, side by side.

Server-rendered pages (FastAPI), in the same style as the reports; the reports themselves are
served as they are (self-contained HTML). Nothing outside the folder is ever served: the static
files go through Starlette's ``StaticFiles``, which refuses paths that leave its directory, and the
pages only link what :func:`~pems.web.results.find_results` found.
"""

from __future__ import annotations

import html
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from pems.reporting import page
from pems.web.results import Result, find_model_cards, find_results

KIND_TEXT = {"bench": "benchmark", "run": "simulation", "calibration": "calibration", "backtest": "forecast backtest"}

EXTRA_CSS = """<style>
.chips span{display:inline-block;margin:0 .4em .2em 0;padding:0 .4em;border-radius:3px;background:#eef2f6;font-size:90%}
.side{display:grid;grid-template-columns:1fr 1fr;gap:8px}.side iframe{width:100%;height:85vh;border:1px solid #ccd}
.problem{color:#a33}</style>"""


def results_app(root: Path) -> FastAPI:
    """The app serving the results under ``root``."""
    root = root.resolve()
    app = FastAPI(title="PEMS results", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/files", StaticFiles(directory=root, html=True), name="files")

    def results() -> list[Result]:
        return find_results(root)  # read again on every request: results appear while it runs

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        rs = results()
        reports = [r for r in rs if r.report]
        rows = "".join(_row(r) for r in rs) or "<tr><td colspan='4'>No PEMS outputs under this folder.</td></tr>"
        options = "".join(f"<option value='{html.escape(r.report)}'>{html.escape(r.title)} ({KIND_TEXT[r.kind]})</option>"
                          for r in reports)
        compare = ("<h2>Side by side</h2><form action='/compare'><select name='a'>" + options + "</select> "
                   "<select name='b'>" + options + "</select> <button type='submit'>Compare</button></form>"
                   if len(reports) >= 2 else "")
        cards = find_model_cards(root)
        models = (f"<p><a href='/models'>{len(cards)} model card{'s' if len(cards) != 1 else ''}</a> "
                  "(forecasters and correctors in a registry).</p>" if cards else "")
        body = (EXTRA_CSS + f"<h2>Results</h2><table><tr><th>what</th><th>kind</th><th>numbers</th><th>report</th></tr>"
                f"{rows}</table>{compare}{models}")
        return page("PEMS results", html.escape(str(root)), body)

    @app.get("/compare", response_class=HTMLResponse)
    def compare(a: str = Query(...), b: str = Query(...)) -> str:
        known = {r.report: r for r in results() if r.report}
        for x in (a, b):
            if x not in known:
                raise HTTPException(404, f"no report {x!r} in this folder")
        frames = "".join(f"<div><h2>{html.escape(known[x].title)}</h2><iframe src='/files/{quote(x)}' "
                         f"title='{html.escape(known[x].title)}'></iframe></div>" for x in (a, b))
        return page("PEMS results side by side", "<a href='/'>all results</a>", EXTRA_CSS + f"<div class='side'>{frames}</div>")

    @app.get("/models", response_class=HTMLResponse)
    def models() -> str:
        cards = find_model_cards(root)
        rows = "".join(
            f"<tr><td>{html.escape(str(c.get('role')))}/{html.escape(str(c.get('name')))}/v{int(c.get('version', 0)):03d}</td>"
            f"<td>{html.escape(str(c.get('kind', '')))}</td><td>{html.escape(str(c.get('created', '')))}</td>"
            f"<td class='chips'>{_chips({k: v for k, v in (c.get('metrics') or {}).items() if not isinstance(v, dict)})}</td>"
            f"<td><a href='/files/{quote(c['_path'])}'>card.json</a></td></tr>" for c in cards)
        body = (EXTRA_CSS + "<table><tr><th>model</th><th>kind</th><th>created</th><th>metrics</th><th>card</th></tr>"
                + (rows or "<tr><td colspan='5'>No model cards.</td></tr>") + "</table>")
        return page("PEMS model cards", "<a href='/'>all results</a>", body)

    @app.get("/api/results")
    def api_results() -> JSONResponse:
        return JSONResponse([r.__dict__ for r in results()])

    return app


def _row(r: Result) -> str:
    link = f"<a href='/files/{quote(r.report)}'>open</a>" if r.report else "–"
    nums = _chips(r.summary) + (f"<span class='problem'>{html.escape(r.problem)}</span>" if r.problem else "")
    return (f"<tr><td>{html.escape(r.title)}<br><small>{html.escape(r.path)}</small></td><td>{KIND_TEXT[r.kind]}</td>"
            f"<td class='chips'>{nums}</td><td>{link}</td></tr>")


def _chips(d: dict) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, list):
            return ", ".join(map(str, v))
        return str(v)
    return "".join(f"<span>{html.escape(str(k))}: {html.escape(fmt(v))}</span>" for k, v in d.items())
