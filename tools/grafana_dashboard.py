"""Write ``deploy/grafana-dashboard.json``: a Grafana dashboard over the live loop's InfluxDB log.

The panels read what :class:`pems.live.influx_log.InfluxLog` writes with the ``loxone-growatt``
mapping (the real home's layout): the rooms' measured temperatures and the inverter's SOC where the
home's own series are, and the loop's measurement ``pems`` for the rest (tag ``kind``: measured,
estimated, planned, commanded, event; tag ``room``; a plan's ``horizon`` in steps). InfluxQL, so it
runs on InfluxDB 1.x and on 2.x through its v1 endpoint (a DBRP mapping of the bucket)::

    python tools/grafana_dashboard.py          # rewrites deploy/grafana-dashboard.json

``tests/deploy/test_grafana.py`` runs every panel's query against a real influxd filled by the loop
on the emulated home, and checks that the committed file is what this script writes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "deploy" / "grafana-dashboard.json"
DS = {"type": "influxdb", "uid": "${DS_INFLUXDB}"}
PEMS = '"pems"'


def _q(ref: str, sql: str, alias: str | None = None) -> dict[str, Any]:
    out = {"refId": ref, "datasource": DS, "rawQuery": True, "resultFormat": "time_series", "query": sql}
    if alias:
        out["alias"] = alias
    return out


def _where(kind: str, room: bool = False, horizon: str | None = None) -> str:
    parts = [f'"kind" = \'{kind}\'']
    if horizon is not None:
        parts.append(f'"horizon" = \'{horizon}\'')
    if room:
        parts.append('"room" =~ /^$room$/')
    return " AND ".join(parts + ["$timeFilter"])


GROUP = "GROUP BY time($__interval) fill(null)"


def _panel(pid: int, title: str, targets: list[dict], y: int, unit: str, x: int = 0, w: int = 24, h: int = 8,
           kind: str = "timeseries", description: str = "", overrides: list | None = None) -> dict[str, Any]:
    panel: dict[str, Any] = {
        "id": pid, "type": kind, "title": title, "description": description, "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h}, "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": overrides or []},
    }
    if kind == "timeseries":
        panel["options"] = {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}}
        panel["fieldConfig"]["defaults"]["custom"] = {"lineInterpolation": "stepAfter", "spanNulls": False}
    return panel


def _dashed(name: str) -> dict[str, Any]:
    return {"matcher": {"id": "byName", "options": name},
            "properties": [{"id": "custom.lineStyle", "value": {"dash": [6, 4], "fill": "dash"}}]}


def dashboard() -> dict[str, Any]:
    """The dashboard (Grafana's JSON model, importable: it asks for its InfluxDB data source)."""
    panels = [
        _panel(1, "Room temperature against its comfort band — $room", [
            _q("A", f'SELECT mean("temperature_$room") FROM "temperature" WHERE $timeFilter {GROUP}', "measured"),
            _q("B", f'SELECT mean("T_low") AS "band low", mean("T_high") AS "band high" FROM {PEMS} '
                    f'WHERE {_where("planned", True, "0")} {GROUP}'),
            _q("C", f'SELECT mean("T_room") FROM {PEMS} WHERE {_where("planned", True, "4")} {GROUP}',
               "planned an hour before"),
        ], 0, "celsius", description="Measured (the home's series), the band the loop planned with (overrides "
                                     "included), and what the plan made an hour earlier expected.",
            overrides=[_dashed("planned an hour before")]),
        _panel(2, "Heating of $room: planned against commanded", [
            _q("A", f'SELECT mean("P_heat_cmd") FROM {PEMS} WHERE {_where("commanded", True)} {GROUP}', "commanded"),
            _q("B", f'SELECT mean("P_heat") FROM {PEMS} WHERE {_where("planned", True, "0")} {GROUP}', "planned"),
        ], 8, "watt", overrides=[_dashed("planned")]),
        _panel(3, "Power", [
            _q("A", f'SELECT mean("P_pv") AS "PV", mean("P_load") AS "load", mean("P_grid") AS "grid (import +)", '
                    f'mean("P_bat") AS "battery (charge +)" FROM {PEMS} WHERE {_where("measured")} {GROUP}'),
        ], 16, "watt"),
        _panel(4, "State of charge: measured against planned", [
            _q("A", f'SELECT mean("SOC") FROM "solar" WHERE $timeFilter {GROUP}', "measured"),
            _q("B", f'SELECT mean("soc") * 100 FROM {PEMS} WHERE {_where("planned", False, "4")} {GROUP}',
               "planned an hour before"),
        ], 24, "percent", w=12, overrides=[_dashed("planned an hour before")]),
        _panel(5, "Prices the loop planned with", [
            _q("A", f'SELECT mean("price_import") AS "import", mean("price_export") AS "export" FROM {PEMS} '
                    f'WHERE {_where("planned", False, "0")} {GROUP}'),
        ], 24, "currencyCZK", x=12, w=12),
        _panel(6, "Fallbacks and recoveries", [
            {**_q("A", f'SELECT "state", "reason" FROM {PEMS} WHERE {_where("event")}'), "resultFormat": "table"},
        ], 32, "none", kind="table", description="The watchdog's transitions: the home handed back "
                                                     "(fallback, with its reasons) and taken over again (active)."),
    ]
    return {
        "__inputs": [{"name": "DS_INFLUXDB", "label": "InfluxDB", "description": "the database of PEMS's log "
                      "(InfluxQL)", "type": "datasource", "pluginId": "influxdb", "pluginName": "InfluxDB"}],
        "__requires": [{"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
                       {"type": "datasource", "id": "influxdb", "name": "InfluxDB", "version": "1.0.0"}],
        "title": "PEMS — the live home", "uid": "pems-live", "tags": ["pems", "energy", "loxone", "growatt"],
        "timezone": "browser", "schemaVersion": 39, "version": 1, "refresh": "1m",
        "time": {"from": "now-2d", "to": "now+1h"},
        "templating": {"list": [{
            "name": "room", "label": "room", "type": "query", "datasource": DS, "refresh": 1,
            "query": 'SHOW TAG VALUES FROM "pems" WITH KEY = "room"', "definition": 'SHOW TAG VALUES FROM "pems" '
            'WITH KEY = "room"', "includeAll": False, "multi": False, "sort": 1,
        }]},
        "panels": panels,
    }


def text() -> str:
    return json.dumps(dashboard(), indent=1, ensure_ascii=False) + "\n"


def main() -> int:
    OUT.write_text(text(), encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
