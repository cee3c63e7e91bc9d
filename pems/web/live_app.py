"""The live home's page: rooms against their comfort bands, power, battery and prices, the plan ahead
with the forecasts' P10–P90 bands and why it does what it does, the savings against the rule-based
twin, the adapters' and the watchdog's health, recent events — updated as the loop steps, without
reloading.

The page is one HTML document with plotly (served from the installed ``plotly`` package: no
network) that reads ``/api/state`` once and then listens to ``/api/stream`` (server-sent events): a
message per recorded step or event, with the newest steps, the plan and forecast ahead, events and
health. The data come from :class:`~pems.live.view.LiveView`, which the loop fills.
"""

from __future__ import annotations

import asyncio
import html
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import lru_cache

import pandas as pd
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel

from pems.live.overrides import Overrides, OverrideError
from pems.live.view import LiveView
from pems.reporting import CSS


class OverrideRequest(BaseModel):
    """An override as the page sends it."""

    kind: str
    hours: float
    room: str | None = None
    low: float | None = None
    high: float | None = None
    soc: float | None = None  # a reserve [%]


#: Seconds between keep-alive comments on an idle stream (proxies close silent connections).
KEEPALIVE_S = 15.0


@lru_cache(maxsize=1)
def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def live_app(view: LiveView, title: str = "PEMS live", overrides: Overrides | None = None,
             credentials: tuple[str, str] | None = None, now: Callable[[], pd.Timestamp] | None = None) -> FastAPI:
    """The app of one live home (see the module notes).

    ``overrides``: the loop's (:class:`~pems.live.overrides.Overrides`), taken and cancelled with
    HTTP basic authentication against ``credentials`` (user name, password; the user is recorded
    with the override); without them overrides are refused (no default credentials). ``now``: the
    loop's clock."""
    app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None)
    basic = HTTPBasic(auto_error=False)
    clock = now or (lambda: pd.Timestamp.now(tz="UTC"))

    def user(cred: HTTPBasicCredentials | None = Depends(basic)) -> str:
        if overrides is None:
            raise HTTPException(404, "this loop takes no overrides")
        if not credentials or not credentials[1]:
            raise HTTPException(403, "overrides are off: no password is set for the page (PEMS_WEB_USERNAME and "
                                     "PEMS_WEB_PASSWORD, or [web] credentials_file)")
        ok = cred is not None and secrets.compare_digest(cred.username.encode(), credentials[0].encode()) \
            and secrets.compare_digest(cred.password.encode(), credentials[1].encode())
        if not ok:
            raise HTTPException(401, "wrong or missing user name or password",
                                headers={"WWW-Authenticate": 'Basic realm="pems"'})
        return cred.username

    @app.get("/api/overrides")
    def list_overrides() -> JSONResponse:
        return JSONResponse(overrides.as_list() if overrides is not None else [])

    @app.post("/api/overrides")
    def add_override(body: OverrideRequest, who: str = Depends(user)) -> JSONResponse:
        try:
            o = overrides.add(clock(), body.kind, body.hours, body.room, body.low, body.high, by=who, soc=body.soc)
        except OverrideError as exc:
            raise HTTPException(422, str(exc)) from None
        return JSONResponse(asdict(o), status_code=201)

    @app.delete("/api/overrides/{oid}")
    def cancel_override(oid: str, who: str = Depends(user)) -> JSONResponse:
        if not overrides.cancel(clock(), oid, by=who):
            raise HTTPException(404, f"no override {oid}")
        return JSONResponse({"cancelled": oid})

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
<h2 id="why_head">Why the plan does what it does</h2><p id="why_plan">—</p>
<h2>Savings against the rule-based home</h2>
<p class="sub">The home's own logic (room thermostats, the inverter's load first) run by the twin beside it, on
the same weather, load, PV, prices and bands; both bills at the prices each step was planned with.</p>
<p id="why_saved">—</p><table id="savings"></table><div id="savings_plot" class="plot" style="height:220px"></div>
<div class="cols"><div><h2>Rooms now</h2><table id="rooms"></table><table id="cars"></table></div>
<div><h2>Health</h2><table id="health"></table></div></div>
<h2>Overrides</h2><table id="overrides"></table>
<form id="override_form" class="bar"><select id="o_kind"><option value="boost">boost a room</option>
<option value="band">set a room's band</option><option value="reserve">keep a battery reserve</option>
<option value="pause">pause the optimiser</option></select>
<select id="o_room"></select> for <input id="o_hours" type="number" value="2" min="0.25" step="0.25" style="width:5em"> h
band <input id="o_low" type="number" value="21" step="0.5" style="width:4em">–<input id="o_high" type="number" value="23" step="0.5" style="width:4em"> °C
reserve <input id="o_soc" type="number" value="50" min="1" max="100" step="5" style="width:4em"> %
user <input id="o_user" autocomplete="username" style="width:6em">
password <input id="o_pass" type="password" autocomplete="current-password" style="width:8em">
<button type="submit">apply</button> <span id="o_msg"></span></form>
<h2>Recent events</h2><ul id="events"></ul>
<script>
const S = {steps: [], ahead: {}, events: [], health: {}, rooms: [], cars: [], version: -1};
const roomSel = document.getElementById('room');
function merge(snap) {
  const seen = new Set(S.steps.map(s => s.time));
  for (const s of snap.steps) if (!seen.has(s.time)) S.steps.push(s);
  S.steps.sort((a, b) => a.time < b.time ? -1 : 1);
  if (snap.ahead && Object.keys(snap.ahead).length) S.ahead = snap.ahead;
  S.events = snap.events; S.health = snap.health; S.rooms = snap.rooms; S.cars = snap.cars || []; S.version = snap.version;
  S.overrides = snap.overrides; S.savings = snap.savings;
}
function col(key, i) { return S.steps.map(s => i === undefined ? s[key] : (s[key] || [])[i]); }
function draw() {
  if (!roomSel.options.length) S.rooms.forEach((r, i) => roomSel.add(new Option(r, i)));
  const i = +roomSel.value || 0, r = S.rooms[i], t = col('time'), A = S.ahead, L = {margin: {t: 10, r: 50}, legend: {orientation: 'h'}};
  const B = A.bands || {};
  const bandOf = (c, name, color) => B[c] ? [
    {x: A.time, y: B[c].p10, mode: 'lines', line: {width: 0, shape: 'hv'}, showlegend: false, hoverinfo: 'skip', name: name + ' P10'},
    {x: A.time, y: B[c].p90, mode: 'lines', fill: 'tonexty', fillcolor: color, line: {width: 0, shape: 'hv'},
     name: name + ' P10–P90 (' + B[c].source + ')'}] : [];
  const band = [
    {x: t, y: col('low', i), name: 'band low', line: {width: 0}, mode: 'lines', showlegend: false, line: {shape: 'hv', width: 0}},
    {x: t, y: col('high', i), name: 'comfort band', fill: 'tonexty', fillcolor: 'rgba(60,160,90,0.15)', line: {shape: 'hv', width: 0}, mode: 'lines'},
    {x: t, y: col('T_room', i), name: r + ' measured', mode: 'lines'},
    {x: A.plan_time || [], y: A['T_room__' + r] || [], name: 'planned', line: {dash: 'dot'}, mode: 'lines'},
    {x: A.time || [], y: (A.low || {})[r] || [], name: 'band ahead', line: {shape: 'hv', dash: 'dash', width: 1}, mode: 'lines'},
    {x: t, y: col('P_heat', i), name: 'heating [W]', yaxis: 'y2', line: {shape: 'hv', width: 1}, mode: 'lines'},
    {x: A.plan_time || [], y: A['P_heat__' + r] || [], name: 'planned heating [W]', yaxis: 'y2', line: {shape: 'hv', dash: 'dot', width: 1}, mode: 'lines'}];
  band.push({x: t, y: col('T_out'), name: 'outdoor', line: {color: '#888', width: 1}, mode: 'lines'},
            ...bandOf('T_out', 'outdoor', 'rgba(130,130,130,0.15)'),
            {x: A.time || [], y: A.T_out || [], name: 'outdoor forecast', line: {color: '#888', width: 1, dash: 'dot'}, mode: 'lines'});
  Plotly.react('room_plot', band, {...L, yaxis: {title: '°C'}, yaxis2: {title: 'W', overlaying: 'y', side: 'right'}});
  Plotly.react('power_plot', [...bandOf('P_pv', 'PV', 'rgba(240,180,0,0.18)'), ...bandOf('P_load', 'load', 'rgba(90,120,220,0.15)'),
    {x: t, y: col('P_pv'), name: 'PV', line: {shape: 'hv'}}, {x: t, y: col('P_load'), name: 'load', line: {shape: 'hv'}},
    {x: t, y: col('P_grid'), name: 'grid (import +)', line: {shape: 'hv'}}, {x: t, y: col('P_bat'), name: 'battery (charge +)', line: {shape: 'hv'}},
    {x: A.time || [], y: A.P_pv || [], name: 'PV forecast', line: {dash: 'dot', shape: 'hv'}},
    {x: A.time || [], y: A.P_load || [], name: 'load forecast', line: {dash: 'dot', shape: 'hv'}},
    {x: A.plan_time || [], y: A.P_bat || [], name: 'battery plan', line: {dash: 'dot', shape: 'hv'}},
    ...S.cars.map((c, j) => ({x: t, y: col('P_ev', j), name: c + ' charging', line: {shape: 'hv'}}))], {...L, yaxis: {title: 'W'}});
  Plotly.react('battery_plot', [
    {x: t, y: col('soc'), name: 'state of charge [%]'}, {x: A.plan_time || [], y: A.soc || [], name: 'planned SOC [%]', line: {dash: 'dot'}},
    ...S.cars.map((c, j) => ({x: t, y: col('ev_soc', j), name: c + ' [%] (as the car reports it)', connectgaps: false})),
    {x: t, y: col('price'), name: 'import price', yaxis: 'y2', line: {shape: 'hv'}},
    {x: A.time || [], y: A.price_import || [], name: 'price ahead', yaxis: 'y2', line: {shape: 'hv', dash: 'dot'}}],
    {...L, yaxis: {title: '%'}, yaxis2: {title: 'per kWh', overlaying: 'y', side: 'right'}});
  document.getElementById('why_plan').textContent = (A.why || {}).sentence || 'no plan yet (the optimiser is paused, falling back, or starting)';
  const V = S.savings || {};
  document.getElementById('why_saved').innerHTML = V.steps ? V.why + '.' : 'nothing compared yet (after the first full step)';
  document.getElementById('savings').innerHTML = V.steps ? `<tr><th></th><th>PEMS</th><th>rule-based (twin)</th></tr>` +
    `<tr><td>bill since ${V.since} [${V.currency}]</td><td>${V.cost}</td><td>${V.cost_rule_based}</td></tr>` +
    `<tr><td>heating [kWh]</td><td>${V.heating_kWh}</td><td>${V.heating_kWh_rule_based}</td></tr>` +
    `<tr><td>discomfort [K·h per room]</td><td>${V.discomfort_Kh_per_room}</td><td>${V.discomfort_Kh_per_room_rule_based}</td></tr>` : '';
  Plotly.react('savings_plot', [{x: t, y: col('saved'), name: 'saved so far', line: {shape: 'hv'}, fill: 'tozeroy'}],
    {...L, yaxis: {title: V.currency || 'saved'}, showlegend: false});
  const last = S.steps[S.steps.length - 1] || {};
  const st = document.getElementById('state'); const w = (S.health || {}).watchdog || last.state || 'starting';
  st.textContent = w; st.className = 'badge ' + w;
  document.getElementById('last').textContent = last.time || '—';
  document.getElementById('steps').textContent = S.steps.length;
  document.getElementById('rooms').innerHTML = '<tr><th>room</th><th>°C</th><th>band</th><th>heating W</th></tr>' +
    S.rooms.map((r, j) => `<tr><td>${r}</td><td>${(last.T_room || [])[j] ?? '–'}</td><td>${(last.low || [])[j] ?? '–'}–${(last.high || [])[j] ?? '–'}</td><td>${(last.P_heat || [])[j] ?? '–'}</td></tr>`).join('');
  document.getElementById('cars').innerHTML = S.cars.length ? '<tr><th>car</th><th>plug</th><th>SOC %</th><th>charging W</th></tr>' +
    S.cars.map((c, j) => `<tr><td>${c}</td><td>${(last.ev_plugged || [])[j] ? 'plugged in' : 'away'}</td><td>${(last.ev_soc || [])[j] ?? '–'}</td><td>${(last.P_ev || [])[j] ?? '–'}</td></tr>`).join('') : '';
  document.getElementById('health').innerHTML = Object.entries(S.health || {}).map(([k, v]) =>
    `<tr><th>${k}</th><td>${typeof v === 'object' && v !== null ? Object.entries(v).map(([a, b]) => a + ': ' + b).join(', ') : v}</td></tr>`).join('');
  const oRoom = document.getElementById('o_room');
  if (!oRoom.options.length) S.rooms.forEach(r => oRoom.add(new Option(r, r)));
  document.getElementById('overrides').innerHTML = '<tr><th>what</th><th>room</th><th>until</th><th>by</th><th></th></tr>' +
    (S.overrides || []).map(o => `<tr><td>${o.kind}${o.kind === 'band' ? ' ' + o.low + '–' + o.high + ' °C' : ''}${o.kind === 'reserve' ? ' ' + o.soc + ' %' : ''}</td><td>${o.room || '–'}</td>` +
      `<td>${o.until}</td><td>${o.by}</td><td><button onclick="cancelOverride('${o.id}')">end</button></td></tr>`).join('');
  document.getElementById('events').innerHTML = (S.events || []).slice(0, 30).map(e =>
    `<li><b>${e.kind}</b> ${e.time} ${e.reason || e.why || e.state || ''}</li>`).join('');
}
roomSel.onchange = draw;
function auth() { return {'Authorization': 'Basic ' + btoa(o_user.value + ':' + o_pass.value)}; }
async function said(r) { const m = document.getElementById('o_msg');
  m.textContent = r.ok ? 'done' : (r.status + ': ' + ((await r.json()).detail || '')); return r.ok; }
async function refresh() { S.overrides = await (await fetch('/api/overrides')).json(); draw(); }
async function cancelOverride(id) { if (await said(await fetch('/api/overrides/' + id, {method: 'DELETE', headers: auth()}))) refresh(); }
document.getElementById('override_form').onsubmit = async e => {
  e.preventDefault();
  const body = {kind: o_kind.value, hours: +o_hours.value, room: o_room.value, low: +o_low.value, high: +o_high.value, soc: +o_soc.value};
  if (await said(await fetch('/api/overrides', {method: 'POST', headers: {...auth(), 'Content-Type': 'application/json'},
                                                body: JSON.stringify(body)}))) refresh();
};
fetch('/api/state').then(r => r.json()).then(snap => {
  merge(snap); draw();
  const es = new EventSource('/api/stream?since=' + S.version);
  es.onopen = () => { document.getElementById('live').textContent = 'live'; };
  es.onerror = () => { document.getElementById('live').textContent = 'reconnecting…'; };
  es.onmessage = m => { merge(JSON.parse(m.data)); draw(); };
});
</script></body></html>"""
