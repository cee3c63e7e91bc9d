"""The live home's page: rooms against their comfort bands, power, battery and prices, the plan ahead,
the adapters' and the watchdog's health, recent events — updated as the loop steps, without reloading.

The page is one HTML document with plotly (served from the installed ``plotly`` package: no
network) that reads ``/api/state`` once and then listens to ``/api/stream`` (server-sent events): a
message per recorded step or event, with the newest steps, the plan and forecast ahead, events and
health. The data come from :class:`~pems.live.view.LiveView`, which the loop fills.
"""

from __future__ import annotations

import asyncio
import html
import json
import threading
import time
from functools import lru_cache

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from pems.live.view import LiveView
from pems.reporting import CSS

#: Seconds between keep-alive comments on an idle stream (proxies close silent connections).
KEEPALIVE_S = 15.0


@lru_cache(maxsize=1)
def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def live_app(view: LiveView, title: str = "PEMS live") -> FastAPI:
    """The app of one live home (see the module notes)."""
    app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return PAGE.replace("{{TITLE}}", html.escape(title)).replace("{{CSS}}", CSS)

    @app.get("/static/plotly.min.js")
    def plotly_js() -> Response:
        return Response(_plotly_js(), media_type="application/javascript",
                        headers={"Cache-Control": "public, max-age=86400"})

    @app.get("/api/state")
    def state(days: float = Query(2.0, gt=0, le=31)) -> JSONResponse:
        return JSONResponse(view.snapshot(days))

    @app.get("/api/stream")
    async def stream(request: Request, since: int = Query(-1)) -> StreamingResponse:
        async def messages():
            seen = view.version if since < 0 else since
            last_sent = time.monotonic()
            while not await request.is_disconnected():
                version = await asyncio.to_thread(view.wait, seen, 1.0)
                if version > seen:
                    snap = view.snapshot(days=(version - seen + 1) * view.step_s / 86400)
                    snap["steps"] = snap["steps"][-min(len(snap["steps"]), version - seen + 1):]
                    seen = version
                    last_sent = time.monotonic()
                    yield f"data: {json.dumps(snap)}\n\n"
                elif time.monotonic() - last_sent > KEEPALIVE_S:
                    last_sent = time.monotonic()
                    yield ": keep-alive\n\n"
        return StreamingResponse(messages(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


class Server:
    """A uvicorn server of an app in a daemon thread (the live loop keeps the main thread)."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 8766) -> None:
        import uvicorn

        self.host, self.port = host, port
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="pems-web", daemon=True)

    def start(self, timeout: float = 10.0) -> Server:
        self.thread.start()
        end = time.monotonic() + timeout
        while not self.server.started and self.thread.is_alive() and time.monotonic() < end:
            time.sleep(0.02)
        if not self.server.started:
            raise OSError(f"the web page could not listen on {self.host}:{self.port}")
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(5.0)


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{TITLE}}</title><style>{{CSS}}
.bar{display:flex;gap:1.5em;align-items:baseline;flex-wrap:wrap}.badge{padding:.1em .6em;border-radius:4px;font-weight:bold}
.active{background:#d8f0dc}.fallback,.handed_back{background:#f6d5d5}.starting{background:#eee}
.plot{width:100%;height:340px}.cols{display:grid;grid-template-columns:1fr 1fr;gap:1em}
#events li{font-size:90%}</style>
<script src="/static/plotly.min.js"></script></head>
<body><h1>{{TITLE}}</h1>
<div class="bar"><span>watchdog <span id="state" class="badge starting">—</span></span>
<span>last reading <b id="last">—</b></span><span>steps <b id="steps">0</b></span>
<span>room <select id="room"></select></span><span id="live">connecting…</span></div>
<h2>Room temperature and comfort band</h2><div id="room_plot" class="plot"></div>
<h2>Power</h2><div id="power_plot" class="plot"></div>
<h2>Battery and price</h2><div id="battery_plot" class="plot"></div>
<div class="cols"><div><h2>Rooms now</h2><table id="rooms"></table></div>
<div><h2>Health</h2><table id="health"></table></div></div>
<h2>Recent events</h2><ul id="events"></ul>
<script>
const S = {steps: [], ahead: {}, events: [], health: {}, rooms: [], version: -1};
const roomSel = document.getElementById('room');
function merge(snap) {
  const seen = new Set(S.steps.map(s => s.time));
  for (const s of snap.steps) if (!seen.has(s.time)) S.steps.push(s);
  S.steps.sort((a, b) => a.time < b.time ? -1 : 1);
  if (snap.ahead && Object.keys(snap.ahead).length) S.ahead = snap.ahead;
  S.events = snap.events; S.health = snap.health; S.rooms = snap.rooms; S.version = snap.version;
}
function col(key, i) { return S.steps.map(s => i === undefined ? s[key] : (s[key] || [])[i]); }
function draw() {
  if (!roomSel.options.length) S.rooms.forEach((r, i) => roomSel.add(new Option(r, i)));
  const i = +roomSel.value || 0, r = S.rooms[i], t = col('time'), A = S.ahead, L = {margin: {t: 10, r: 50}, legend: {orientation: 'h'}};
  const band = [
    {x: t, y: col('low', i), name: 'band low', line: {width: 0}, mode: 'lines', showlegend: false, line: {shape: 'hv', width: 0}},
    {x: t, y: col('high', i), name: 'comfort band', fill: 'tonexty', fillcolor: 'rgba(60,160,90,0.15)', line: {shape: 'hv', width: 0}, mode: 'lines'},
    {x: t, y: col('T_room', i), name: r + ' measured', mode: 'lines'},
    {x: A.plan_time || [], y: A['T_room__' + r] || [], name: 'planned', line: {dash: 'dot'}, mode: 'lines'},
    {x: A.time || [], y: (A.low || {})[r] || [], name: 'band ahead', line: {shape: 'hv', dash: 'dash', width: 1}, mode: 'lines'},
    {x: t, y: col('P_heat', i), name: 'heating [W]', yaxis: 'y2', line: {shape: 'hv', width: 1}, mode: 'lines'},
    {x: A.plan_time || [], y: A['P_heat__' + r] || [], name: 'planned heating [W]', yaxis: 'y2', line: {shape: 'hv', dash: 'dot', width: 1}, mode: 'lines'}];
  Plotly.react('room_plot', band, {...L, yaxis: {title: '°C'}, yaxis2: {title: 'W', overlaying: 'y', side: 'right'}});
  Plotly.react('power_plot', [
    {x: t, y: col('P_pv'), name: 'PV', line: {shape: 'hv'}}, {x: t, y: col('P_load'), name: 'load', line: {shape: 'hv'}},
    {x: t, y: col('P_grid'), name: 'grid (import +)', line: {shape: 'hv'}}, {x: t, y: col('P_bat'), name: 'battery (charge +)', line: {shape: 'hv'}},
    {x: A.time || [], y: A.P_pv || [], name: 'PV forecast', line: {dash: 'dot', shape: 'hv'}},
    {x: A.time || [], y: A.P_load || [], name: 'load forecast', line: {dash: 'dot', shape: 'hv'}},
    {x: A.plan_time || [], y: A.P_bat || [], name: 'battery plan', line: {dash: 'dot', shape: 'hv'}}], {...L, yaxis: {title: 'W'}});
  Plotly.react('battery_plot', [
    {x: t, y: col('soc'), name: 'state of charge [%]'}, {x: A.plan_time || [], y: A.soc || [], name: 'planned SOC [%]', line: {dash: 'dot'}},
    {x: t, y: col('price'), name: 'import price', yaxis: 'y2', line: {shape: 'hv'}},
    {x: A.time || [], y: A.price_import || [], name: 'price ahead', yaxis: 'y2', line: {shape: 'hv', dash: 'dot'}}],
    {...L, yaxis: {title: '%'}, yaxis2: {title: 'per kWh', overlaying: 'y', side: 'right'}});
  const last = S.steps[S.steps.length - 1] || {};
  const st = document.getElementById('state'); const w = (S.health || {}).watchdog || last.state || 'starting';
  st.textContent = w; st.className = 'badge ' + w;
  document.getElementById('last').textContent = last.time || '—';
  document.getElementById('steps').textContent = S.steps.length;
  document.getElementById('rooms').innerHTML = '<tr><th>room</th><th>°C</th><th>band</th><th>heating W</th></tr>' +
    S.rooms.map((r, j) => `<tr><td>${r}</td><td>${(last.T_room || [])[j] ?? '–'}</td><td>${(last.low || [])[j] ?? '–'}–${(last.high || [])[j] ?? '–'}</td><td>${(last.P_heat || [])[j] ?? '–'}</td></tr>`).join('');
  document.getElementById('health').innerHTML = Object.entries(S.health || {}).map(([k, v]) =>
    `<tr><th>${k}</th><td>${typeof v === 'object' && v !== null ? Object.entries(v).map(([a, b]) => a + ': ' + b).join(', ') : v}</td></tr>`).join('');
  document.getElementById('events').innerHTML = (S.events || []).slice(0, 30).map(e =>
    `<li><b>${e.kind}</b> ${e.time} ${e.reason || e.why || e.state || ''}</li>`).join('');
}
roomSel.onchange = draw;
fetch('/api/state').then(r => r.json()).then(snap => {
  merge(snap); draw();
  const es = new EventSource('/api/stream?since=' + S.version);
  es.onopen = () => { document.getElementById('live').textContent = 'live'; };
  es.onerror = () => { document.getElementById('live').textContent = 'reconnecting…'; };
  es.onmessage = m => { merge(JSON.parse(m.data)); draw(); };
});
</script></body></html>"""
