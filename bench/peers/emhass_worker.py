"""EMHASS day-ahead battery optimiser as a JSON-lines worker (runs in ``.venv-peers``).

Run as ``.venv-peers/bin/python bench/peers/emhass_worker.py``: it reads one JSON request per line
on stdin and answers each with exactly one JSON line on stdout (flushed), until EOF, then exits 0.
Nothing else is written to stdout: file descriptor 1 is redirected to stderr at start-up (so stray
prints, C-level solver output and EMHASS's logging all go to stderr) and the replies use a private
duplicate of the original stdout. ``EMHASS_WORKER_LOG`` sets the stderr log level (default WARNING).
A bad request never kills the worker: it gets ``{"ok": false, "error": "..."}``.

EMHASS (v0.18.7) is used offline, the way its own command line does it: ``utils.build_config``
(its shipped ``config_defaults.json``) → our overrides → ``utils.build_params`` (secrets given
directly: no Home Assistant, no network) → ``utils.get_yaml_parse`` → ``optimization.Optimization``
→ ``perform_dayahead_forecast_optim(df, p_pv, p_load, soc_init, soc_final)`` (a MILP solved by
HiGHS through cvxpy). The Optimization object is cached per distinct configuration and horizon
length and re-used (EMHASS updates its cvxpy Parameters: forecasts, prices, SOCs), as EMHASS's own
``OptimizationCache`` does.

Request (one line)::

    {"times": ["2024-01-22T00:00:00Z", ...],   # N >= 2 step starts (UTC, every step_minutes)
     "step_minutes": 15,
     "timezone": "Europe/Prague",
     "pv_w": [N], "load_w": [N],               # PV AC power, house load without battery [W]
     "price_import": [N], "price_export": [N], # currency per kWh
     "battery": {"capacity_kwh": 10, "max_charge_w": 5000, "max_discharge_w": 5000,
                 "soc_min": 0.1, "soc_max": 0.9, "eta_charge": 0.95, "eta_discharge": 0.95},
     "soc_init": 0.5, "soc_final": 0.5,        # fractions of capacity
     "grid": {"import_limit_w": 22000, "export_limit_w": 10000},   # either may be null
     "inverter_ac_w": 10000}                   # may be null

Optional ``"rooms"`` make each room a thermal deferrable load (EMHASS's ``thermal_config``: one
node per room, ``T⁺ = T + dt·(heating_rate·P/P_nom − cooling_constant·(T − T_out))``), with
``"t_out": [N]`` the outdoor temperature forecast [°C]::

     "rooms": [{"id": "obyvak", "nominal_w": 2000,          # the heater's electric rating [W]
                "heating_rate": 0.35,                       # K/h with the heater at nominal power
                "cooling_constant": 0.012,                  # 1/h
                "start_c": 20.8,                            # the room now [°C]
                "min_c": [N], "max_c": [N]}]                # its comfort band [°C] (hard, EMHASS's)

``battery`` may be null (without rooms the reply is then all zeros, ``soc`` null, status "no
battery"; with rooms EMHASS plans the rooms alone).
Optional ``"emhass_overrides": {...}`` is merged last into the EMHASS config (expert use, e.g.
``{"set_nodischarge_to_grid": true}`` or ``{"weight_battery_discharge": 0.005}``).

Reply (one line)::

    {"ok": true, "p_batt_w": [N], "soc": [N], "status": "Optimal", "solve_s": 0.1, "cached": true}
    {"ok": false, "error": "message"}

- ``p_batt_w``: battery power on its AC side [W], EMHASS's sign convention:
  **POSITIVE = DISCHARGE** (power delivered by the battery), negative = charge.
  (PEMS's ``Action.bat_w`` is charge-positive: use ``-p_batt_w``.)
- ``soc``: state of charge (fraction of capacity) at the END of each step (EMHASS ``SOC_opt``).
- ``status``: EMHASS's ``optim_status`` ("Optimal", "Optimal (Incumbent)" = time-limited MIP
  incumbent, "Optimal (Relaxed)" = its binary-relaxed fallback); any other status is an error.
- ``solve_s``: wall time of the EMHASS call (includes building the problem on a cache miss).
- ``cached``: whether a previously built Optimization object was re-used.
- ``p_heat_w`` (with rooms): each room's heating power per step [W], ``temp_c`` its predicted
  temperature (EMHASS's ``P_deferrable{k}``, ``predicted_temp_heater{k}``).

How the request maps to EMHASS (and why):

- ``costfun = "profit"``: maximise export revenue − import cost, i.e. minimise
  Σ dt·(price_import·P_import − price_export·P_export): the PEMS economic objective (without its
  battery-wear/terminal-value terms; EMHASS's ``weight_battery_*`` stay at their default 0).
  Prices go in as the ``unit_load_cost`` / ``unit_prod_price`` columns of ``df_input_data``
  (the names EMHASS's ``Forecast`` uses, passed as ``var_load_cost`` / ``var_prod_price``).
- A battery alone: ``number_of_deferrable_loads = 0`` and every per-deferrable-load list empty;
  ``set_use_battery = true``, ``number_of_batteries = 1``.
- Battery power limits (PEMS's are on the AC side): EMHASS 0.18.7 bounds its AC-side battery
  variables twice, by ``P_dis ≤ min(Pd_max, eta_dis·Pd_max)`` and ``P_ch ≤ min(Pc_max, Pc_max/eta_ch)``
  (a bare bound on the variable plus the battery-side bound of its binary constraint), i.e. in
  effect discharge is limited on the battery side and charge on the AC side. So
  ``battery_charge_power_max = max_charge_w`` and ``battery_discharge_power_max =
  max_discharge_w/eta_discharge``: EMHASS then sees exactly the AC limits of the request. Its
  SOC recursion, E⁺ = E − dt·(P_dis/eta_dis − eta_ch·P_ch), is the PEMS one. ``soc_final`` is
  EMHASS's terminal target, enforced softly (a miss is priced at 100× the dearest import price
  per kWh), so it holds whenever it is reachable.
- Grid: ``maximum_power_from_grid`` / ``maximum_power_to_grid`` from the request; null means no
  limit, modelled as a bound no flow can reach (EMHASS needs a number: it is the big-M of its
  import/export binary).
- Inverter: with ``inverter_ac_w`` set, ``inverter_is_hybrid = true`` with
  ``inverter_ac_output_max = inverter_ac_input_max = inverter_ac_w`` and both conversion
  efficiencies 1 (the request's PV and battery powers are already AC): |PV − curtailment +
  P_batt| ≤ inverter_ac_w, as the PEMS plant limits the hybrid inverter's AC flow. Null means an
  AC-coupled system without an inverter limit (``inverter_is_hybrid = false``).
- ``compute_curtailment``: true only when a limit can force it — PV − load above the export limit,
  or PV above the hybrid inverter's AC limit, at some step — as the PEMS plant and OCP curtail
  only then; otherwise EMHASS would be infeasible there. Off elsewhere, so all PV must be used or
  exported (with curtailment on, free curtailment makes plans that cycle the battery on surplus
  PV cost-equivalent, and EMHASS may pick them).
- ``set_nodischarge_to_grid = false`` (EMHASS's default is true): the PEMS plant and OCP let the
  battery export, so EMHASS may too. ``set_nocharge_from_grid = false``, ``set_total_pv_sell =
  false`` (net metering per step), no battery-first priority, no ramp limits.
- ``lp_solver_mip_rel_gap = 0``: solve the MILP (EMHASS has binaries for charge/discharge and
  import/export exclusivity) to HiGHS's default optimality gap rather than EMHASS's shipped 1 %,
  which is a large share of a day's battery arbitrage. ``lp_solver_timeout`` stays 45 s.
"""

from __future__ import annotations

import os
import sys

# ---- stdout hygiene, before anything else is imported -------------------------------------------
# Keep a private copy of the real stdout for the protocol, then point fd 1 (and sys.stdout) at
# stderr so that nothing else — Python prints, warnings, C-level solver output — can reach it.
_PROTOCOL = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
os.dup2(2, 1)
sys.stdout = sys.stderr

import asyncio  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import pathlib  # noqa: E402
import time  # noqa: E402
from collections import OrderedDict  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

LOG = logging.getLogger("emhass_worker")
_handler = logging.StreamHandler(sys.stderr)
_handler.setFormatter(logging.Formatter("%(asctime)s emhass %(levelname)s %(message)s"))
LOG.addHandler(_handler)
LOG.setLevel(os.environ.get("EMHASS_WORKER_LOG", "WARNING").upper())
LOG.propagate = False
logging.getLogger().addHandler(logging.StreamHandler(sys.stderr))  # stray module loggers
logging.getLogger().setLevel(logging.WARNING)

from emhass import utils  # noqa: E402
from emhass.optimization import Optimization  # noqa: E402

EMHASS_ROOT = pathlib.Path(utils.__file__).resolve().parent
EMHASS_CONF = {
    "root_path": EMHASS_ROOT,
    "data_path": EMHASS_ROOT / "data",
    "defaults_path": EMHASS_ROOT / "data" / "config_defaults.json",
    "associations_path": EMHASS_ROOT / "data" / "associations.csv",
}
VAR_LOAD_COST = "unit_load_cost"  # the column names EMHASS's Forecast uses
VAR_PROD_PRICE = "unit_prod_price"
ACCEPTED_STATUS = {"Optimal", "Optimal_Inaccurate", "Optimal (Relaxed)", "Optimal (Incumbent)"}
# Per-deferrable-load parameters, emptied to model a battery alone.
DEFERRABLE_LISTS = (
    "nominal_power_of_deferrable_loads", "minimum_power_of_deferrable_loads",
    "cost_forecast_per_deferrable_load", "is_electric_load", "operating_hours_of_each_deferrable_load",
    "start_timesteps_of_each_deferrable_load", "end_timesteps_of_each_deferrable_load",
    "treat_deferrable_load_as_semi_cont", "set_deferrable_load_single_constant",
    "set_deferrable_startup_penalty", "deferrable_load_max_cost", "set_deferrable_max_startups",
    "def_minimum_on_time", "def_minimum_off_time", "deferrable_load_groups",
)
CACHE_SIZE = 8
_LOOP = asyncio.new_event_loop()
_DEFAULTS: dict | None = None
_CACHE: OrderedDict[str, Optimization] = OrderedDict()


class BadRequest(ValueError):
    """A request that cannot be solved as given (reported, never raised out of the loop)."""


# ---- request parsing ------------------------------------------------------------------------------
def _num(value, name: str, *, lo: float | None = None, hi: float | None = None,
         lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"{name}: expected a number, got {value!r}")
    x = float(value)
    if not math.isfinite(x):
        raise BadRequest(f"{name}: not finite ({value!r})")
    if lo is not None and (x <= lo if lo_open else x < lo):
        raise BadRequest(f"{name}: {x} must be {'>' if lo_open else '>='} {lo}")
    if hi is not None and x > hi:
        raise BadRequest(f"{name}: {x} must be <= {hi}")
    return x


def _series(req: dict, name: str, n: int) -> np.ndarray:
    v = req.get(name)
    if not isinstance(v, list):
        raise BadRequest(f"{name}: expected a list of {n} numbers")
    if len(v) != n:
        raise BadRequest(f"{name}: has {len(v)} values, times has {n}")
    try:
        a = np.asarray(v, dtype=float)
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"{name}: not all numbers ({exc})") from None
    if not np.isfinite(a).all():
        raise BadRequest(f"{name}: contains null/NaN/inf at step {int(np.argmin(np.isfinite(a)))}")
    return a


def _limit(value, name: str) -> float | None:
    return None if value is None else _num(value, name, lo=0.0)


def parse(req) -> dict:
    """Validate a request; returns the normalised inputs."""
    if not isinstance(req, dict):
        raise BadRequest("the request must be a JSON object")
    times = req.get("times")
    if not isinstance(times, list) or not times:
        raise BadRequest("times: expected a non-empty list of ISO-8601 UTC timestamps")
    try:
        idx = pd.DatetimeIndex(pd.to_datetime(times, utc=True))
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"times: {exc}") from None
    n = len(idx)
    if n < 2:
        raise BadRequest("times: EMHASS needs at least 2 steps")
    step = _num(req.get("step_minutes"), "step_minutes", lo=0.0, lo_open=True)
    if np.abs(np.diff(idx.asi8) / 60e9 - step).max() > 1e-6:
        raise BadRequest(f"times: not a regular {step:g}-minute grid")
    tz = req.get("timezone") or "UTC"
    try:
        idx_local = idx.tz_convert(tz)
    except Exception as exc:  # noqa: BLE001 - pytz / zoneinfo raise different types
        raise BadRequest(f"timezone: unknown time zone {tz!r} ({exc})") from None
    out = {"n": n, "index": idx_local, "step": step, "tz": str(tz)}
    for k in ("pv_w", "load_w", "price_import", "price_export"):
        out[k] = _series(req, k, n)
    if (out["pv_w"] < 0).any():
        raise BadRequest("pv_w: must be >= 0")
    if (out["load_w"] < 0).any():
        raise BadRequest("load_w: must be >= 0")
    grid = req.get("grid") or {}
    if not isinstance(grid, dict):
        raise BadRequest("grid: expected an object")
    out["import_limit"] = _limit(grid.get("import_limit_w"), "grid.import_limit_w")
    out["export_limit"] = _limit(grid.get("export_limit_w"), "grid.export_limit_w")
    inv = req.get("inverter_ac_w")
    out["inverter"] = None if inv is None else _num(inv, "inverter_ac_w", lo=0.0, lo_open=True)
    b = req.get("battery")
    if b is None:
        out["battery"] = None
    else:
        if not isinstance(b, dict):
            raise BadRequest("battery: expected an object or null")
        bat = {
            "capacity_kwh": _num(b.get("capacity_kwh"), "battery.capacity_kwh", lo=0.0, lo_open=True),
            "max_charge_w": _num(b.get("max_charge_w"), "battery.max_charge_w", lo=0.0),
            "max_discharge_w": _num(b.get("max_discharge_w"), "battery.max_discharge_w", lo=0.0),
            "soc_min": _num(b.get("soc_min", 0.0), "battery.soc_min", lo=0.0, hi=1.0),
            "soc_max": _num(b.get("soc_max", 1.0), "battery.soc_max", lo=0.0, hi=1.0),
            "eta_charge": _num(b.get("eta_charge", 1.0), "battery.eta_charge",
                               lo=0.0, hi=1.0, lo_open=True),
            "eta_discharge": _num(b.get("eta_discharge", 1.0), "battery.eta_discharge",
                                  lo=0.0, hi=1.0, lo_open=True),
        }
        if bat["soc_min"] > bat["soc_max"]:
            raise BadRequest("battery: soc_min > soc_max")
        out["battery"] = bat
        out["soc_init"] = _num(req.get("soc_init"), "soc_init", lo=0.0, hi=1.0)
        sf = req.get("soc_final")
        out["soc_final"] = out["soc_init"] if sf is None else _num(sf, "soc_final", lo=0.0, hi=1.0)
    rooms = req.get("rooms") or []
    if not isinstance(rooms, list):
        raise BadRequest("rooms: expected a list")
    out["rooms"] = [_room(r, i, n) for i, r in enumerate(rooms)]
    if out["rooms"]:
        out["t_out"] = _series(req, "t_out", n)
    ov = req.get("emhass_overrides") or {}
    if not isinstance(ov, dict):
        raise BadRequest("emhass_overrides: expected an object")
    out["overrides"] = ov
    return out


def _room(r, i: int, n: int) -> dict:
    if not isinstance(r, dict):
        raise BadRequest(f"rooms[{i}]: expected an object")
    out = {"id": str(r.get("id", i)),
           "nominal_w": _num(r.get("nominal_w"), f"rooms[{i}].nominal_w", lo=0.0, lo_open=True),
           "heating_rate": _num(r.get("heating_rate"), f"rooms[{i}].heating_rate", lo=0.0, lo_open=True),
           "cooling_constant": _num(r.get("cooling_constant"), f"rooms[{i}].cooling_constant", lo=0.0),
           "start_c": _num(r.get("start_c"), f"rooms[{i}].start_c", lo=-50.0, hi=60.0)}
    for k in ("min_c", "max_c"):
        out[k] = _series(r, k, n)
    if (out["min_c"] > out["max_c"]).any():
        raise BadRequest(f"rooms[{i}]: min_c above max_c")
    return out


# ---- EMHASS configuration -------------------------------------------------------------------------
def _no_limit_w(p: dict) -> float:
    """A grid bound no flow can reach (EMHASS's big-M), coarsely rounded so it rarely changes."""
    b = p["battery"] or {"max_charge_w": 0.0, "max_discharge_w": 0.0}
    heat = sum(r["nominal_w"] for r in p["rooms"])
    reach = float(p["pv_w"].max() + p["load_w"].max() + b["max_charge_w"] + b["max_discharge_w"] + heat)
    return float(max(1e5, 10 ** math.ceil(math.log10(2.0 * reach + 1.0))))


def emhass_config(p: dict) -> dict:
    """The EMHASS config (config.json keys) for this request, on top of EMHASS's own defaults."""
    global _DEFAULTS
    if _DEFAULTS is None:
        _DEFAULTS = _LOOP.run_until_complete(
            utils.build_config(EMHASS_CONF, LOG, str(EMHASS_CONF["defaults_path"])))
        if not isinstance(_DEFAULTS, dict):
            raise RuntimeError("EMHASS build_config failed (config_defaults.json not found)")
    b = p["battery"] or {"capacity_kwh": 1.0, "max_charge_w": 0.0, "max_discharge_w": 0.0, "soc_min": 0.0,
                         "soc_max": 1.0, "eta_charge": 1.0, "eta_discharge": 1.0}
    no_limit = _no_limit_w(p)
    hybrid = p["inverter"] is not None
    surplus = float((p["pv_w"] - p["load_w"]).max())
    curtail = (p["export_limit"] is not None and surplus > p["export_limit"]) or (
        hybrid and float(p["pv_w"].max()) > p["inverter"])
    cfg = copy.deepcopy(_DEFAULTS)
    cfg.update({
        "optimization_time_step": p["step"],
        "delta_forecast_daily": 1,  # unused: the horizon is the request's N (num_timesteps)
        "costfun": "profit",
        "set_total_pv_sell": False,
        "number_of_deferrable_loads": 0,
        **{k: [] for k in DEFERRABLE_LISTS},
        "set_use_battery": p["battery"] is not None,
        "number_of_batteries": 1,
        "battery_nominal_energy_capacity": b["capacity_kwh"] * 1000.0,
        # EMHASS's bounds mix AC and battery sides; these give the request's AC limits (docstring)
        "battery_charge_power_max": b["max_charge_w"],
        "battery_discharge_power_max": b["max_discharge_w"] / b["eta_discharge"],
        "battery_charge_efficiency": b["eta_charge"],
        "battery_discharge_efficiency": b["eta_discharge"],
        "battery_minimum_state_of_charge": b["soc_min"],
        "battery_maximum_state_of_charge": b["soc_max"],
        # only EMHASS's fallback when no SOCs are passed (they always are); kept constant so that
        # it does not defeat the cache
        "battery_target_state_of_charge": 0.5 * (b["soc_min"] + b["soc_max"]),
        "battery_charge_power_derating": [],
        "battery_stress_cost": 0.0,
        "battery_soc_deficit_cost": 0.0,
        "battery_soc_surplus_cost": 0.0,
        "battery_soc_final_reward_factor": 0.0,
        "weight_battery_charge": 0.0,
        "weight_battery_discharge": 0.0,
        "set_battery_dynamic": False,
        "set_battery_first_priority": False,
        "set_nocharge_from_grid": False,
        "set_nodischarge_to_grid": False,
        "maximum_power_from_grid": no_limit if p["import_limit"] is None else p["import_limit"],
        "maximum_power_to_grid": no_limit if p["export_limit"] is None else p["export_limit"],
        "inverter_is_hybrid": hybrid,
        "inverter_ac_output_max": p["inverter"] if hybrid else no_limit,
        "inverter_ac_input_max": p["inverter"] if hybrid else no_limit,
        "inverter_efficiency_dc_ac": 1.0,
        "inverter_efficiency_ac_dc": 1.0,
        "inverter_power_curve_dc_ac": [],
        "inverter_power_curve_ac_dc": [],
        "inverter_stress_cost": 0.0,
        "compute_curtailment": curtail,
        "capacity_cost_per_kw": 0.0,
        "lp_solver_mip_rel_gap": 0,
        "lp_solver_timeout": 45,
        "num_threads": 0,
    })
    if p["rooms"]:
        cfg.update(thermal_loads(p))
    cfg.update(copy.deepcopy(p["overrides"]))
    return cfg


#: What changes from one plan to the next in a room's thermal_config (set on the cached problem's
#: parameters, not a reason to build it again).
THERMAL_RUNTIME = ("start_temperature", "min_temperatures", "max_temperatures")


def thermal_loads(p: dict) -> dict:
    """The rooms as EMHASS thermal deferrable loads: continuous power from 0 to the heater's rating
    (relays switched within the step, as PEMS commands them), no operating-hours target (the comfort
    band drives them), no start-up costs; the band is hard, as EMHASS has it."""
    rooms, n = p["rooms"], len(p["rooms"])
    return {
        "number_of_deferrable_loads": n,
        "nominal_power_of_deferrable_loads": [r["nominal_w"] for r in rooms],
        "minimum_power_of_deferrable_loads": [0.0] * n,
        "cost_forecast_per_deferrable_load": [None] * n,
        "is_electric_load": [True] * n,
        "operating_hours_of_each_deferrable_load": [0] * n,
        "start_timesteps_of_each_deferrable_load": [0] * n,
        "end_timesteps_of_each_deferrable_load": [0] * n,
        "treat_deferrable_load_as_semi_cont": [False] * n,
        "set_deferrable_load_single_constant": [False] * n,
        "set_deferrable_startup_penalty": [0.0] * n,
        "deferrable_load_max_cost": [0.0] * n,
        "set_deferrable_max_startups": [0] * n,
        "def_minimum_on_time": [0] * n,
        "def_minimum_off_time": [0] * n,
        "def_load_config": [{"thermal_config": {
            "heating_rate": r["heating_rate"], "cooling_constant": r["cooling_constant"], "sense": "heat",
            "start_temperature": r["start_c"], "min_temperatures": [round(float(x), 4) for x in r["min_c"]],
            "max_temperatures": [round(float(x), 4) for x in r["max_c"]]}} for r in rooms],
    }


def _structure(cfg: dict) -> dict:
    """``cfg`` without what a cached problem takes as runtime parameters (the rooms' start and band)."""
    out = copy.deepcopy(cfg)
    for load in out.get("def_load_config") or []:
        for k in THERMAL_RUNTIME:
            load.get("thermal_config", {}).pop(k, None)
    return out


def get_optimizer(p: dict) -> tuple[Optimization, bool]:
    """The (cached) EMHASS Optimization object for this configuration and horizon length."""
    cfg = emhass_config(p)
    key = json.dumps([_structure(cfg), p["tz"], p["n"]], sort_keys=True, default=str)
    opt = _CACHE.get(key)
    if opt is not None:
        _CACHE.move_to_end(key)
        # this plan's start temperatures and bands: EMHASS re-reads them from optim_conf on a cache hit
        opt.optim_conf["def_load_config"] = cfg.get("def_load_config", [])
        return opt, True
    secrets = {"hass_url": "http://localhost", "long_lived_token": "offline", "time_zone": p["tz"],
               "Latitude": 0.0, "Longitude": 0.0, "Altitude": 0.0}
    params = _LOOP.run_until_complete(utils.build_params(EMHASS_CONF, secrets, cfg, LOG))
    if not isinstance(params, dict):
        raise RuntimeError("EMHASS build_params failed")
    retrieve_hass_conf, optim_conf, plant_conf = utils.get_yaml_parse(params, LOG)
    if not optim_conf:
        raise RuntimeError("EMHASS get_yaml_parse failed")
    opt = Optimization(retrieve_hass_conf, optim_conf, plant_conf, VAR_LOAD_COST, VAR_PROD_PRICE,
                       cfg["costfun"], EMHASS_CONF, LOG, num_timesteps=p["n"])
    _CACHE[key] = opt
    while len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return opt, False


def _drop(opt: Optimization) -> None:
    for k in [k for k, v in _CACHE.items() if v is opt]:
        del _CACHE[k]


# ---- one request ----------------------------------------------------------------------------------
def solve(req) -> dict:
    p = parse(req)
    n = p["n"]
    if p["battery"] is None and not p["rooms"]:
        return {"ok": True, "p_batt_w": [0.0] * n, "soc": None, "status": "no battery",
                "solve_s": 0.0, "cached": False}
    t0 = time.perf_counter()
    opt, cached = get_optimizer(p)
    idx = p["index"]
    df = pd.DataFrame({VAR_LOAD_COST: p["price_import"], VAR_PROD_PRICE: p["price_export"]}, index=idx)
    if p["rooms"]:
        df["outdoor_temperature_forecast"] = p["t_out"]
    pv = pd.Series(p["pv_w"], index=idx, name="P_PV_forecast")
    load = pd.Series(p["load_w"], index=idx, name="P_load_forecast")
    try:
        res = opt.perform_dayahead_forecast_optim(df, pv, load, soc_init=p.get("soc_init"),
                                                  soc_final=p.get("soc_final"))
    except Exception:
        _drop(opt)  # its state may be half-updated: rebuild next time
        raise
    solve_s = time.perf_counter() - t0
    status = str(opt.optim_status)
    bat = p["battery"] is not None
    heat_cols = [f"P_deferrable{k}" for k in range(len(p["rooms"]))]
    if status not in ACCEPTED_STATUS or (bat and ("P_batt" not in res or "SOC_opt" not in res)) \
            or any(c not in res for c in heat_cols):
        return {"ok": False, "error": f"EMHASS found no plan (status {status!r})", "status": status,
                "solve_s": round(solve_s, 4)}
    p_batt = res["P_batt"].to_numpy(dtype=float) if bat else np.zeros(n)
    soc = res["SOC_opt"].to_numpy(dtype=float) if bat else None
    heat = [res[c].to_numpy(dtype=float) for c in heat_cols]
    if len(p_batt) != n or not np.isfinite(p_batt).all() or (soc is not None and not np.isfinite(soc).all()) \
            or not all(np.isfinite(h).all() for h in heat):
        return {"ok": False, "error": f"EMHASS returned an unusable plan (status {status!r})",
                "status": status, "solve_s": round(solve_s, 4)}
    reply = {"ok": True, "p_batt_w": [round(float(x), 4) for x in p_batt],
             "soc": None if soc is None else [round(float(x), 9) for x in soc], "status": status,
             "solve_s": round(solve_s, 4), "cached": cached}
    if heat_cols:
        reply["p_heat_w"] = [[round(float(x), 3) for x in h] for h in heat]
        reply["temp_c"] = [[round(float(x), 3) for x in res[f"predicted_temp_heater{k}"]]
                           if f"predicted_temp_heater{k}" in res else None for k in range(len(heat))]
    return reply


def handle(line: str) -> dict:
    try:
        req = json.loads(line)
    except json.JSONDecodeError as exc:
        return {"ok": False, "error": f"invalid JSON: {exc}"}
    try:
        return solve(req)
    except BadRequest as exc:
        return {"ok": False, "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - never let a request kill the worker
        LOG.exception("request failed")
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def main() -> int:
    for line in sys.stdin:
        reply = handle(line)
        try:
            text = json.dumps(reply, allow_nan=False)
        except (TypeError, ValueError) as exc:
            text = json.dumps({"ok": False, "error": f"reply not serialisable: {exc}"})
        _PROTOCOL.write(text + "\n")
        _PROTOCOL.flush()
    return 0


if __name__ == "__main__":
    try:
        code = main()
    except KeyboardInterrupt:
        code = 130
    finally:
        _LOOP.close()
    sys.exit(code)
