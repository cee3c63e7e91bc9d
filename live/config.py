"""A real home's live configuration: ``pems live --config FILE``.

One TOML file says which house model runs, which controller, how the home is reached (Loxone over
MQTT, Growatt over Modbus TCP, InfluxDB for the log), where forecasts come from and the watchdog's
thresholds. Relative paths resolve against the file's folder. Passwords never go in it: broker
credentials come from ``PEMS_MQTT_USERNAME``/``PEMS_MQTT_PASSWORD`` or a ``credentials_file``
(``chmod 600``); InfluxDB credentials from ``PEMS_INFLUX_*``. A full example with every key is
``docs/live-example.toml``; every key, with its unit, default and allowed range, is listed in
``docs/reference/live-config.md``, rendered from the attribute docstrings below (``python -m pems.docs``).

Forecasts
---------
Every control step the forecast over the horizon is built anew from ``[forecast]`` as a scenario
builds its inputs (:func:`pems.twin.inputs.build_inputs`): weather, prices and household load are
built-in names or CSV files, read again every step, so a small job of your own that refreshes
them (a weather service's forecast, the next day's spot prices) feeds the MPC fresh forecasts;
beyond the end of a file's data its last day repeats. Built-in weather is a typical year
(climatology), a fallback rather than a forecast.
Measurements (room and outdoor temperatures, PV, load, SOC) always come from the home.
"""

from __future__ import annotations

import logging
from dataclasses import fields, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pems.errors import InputError
from pems.scenarios.spec import Comfort, MpcSpec, StepMinutes
from pems.tomlio import read_toml, validate
from pems.twin.ev import Trip
from pems.twin.house import House, load_house
from pems.twin.prices import Tariff

log = logging.getLogger(__name__)

_SECRET_KEYS = ("password", "username", "token", "user", "pass")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def _refuse_secrets(data: Any, hint: str) -> Any:
    """Refuse credentials in the file, naming the key but never repeating its value (it may be the password)."""
    if isinstance(data, dict):
        for k in data:
            if str(k).lower() in _SECRET_KEYS:
                raise ValueError(f"'{k}' does not belong in the config file: {hint}")
    return data


class TlsSpec(_Strict):
    """TLS towards the broker (see :class:`pems.live.mqtt.TLSConfig`)."""

    ca_file: str | None = None
    """CA certificate file that signed the broker's certificate (default: the system's CAs)."""
    cert_file: str | None = None
    """Client certificate file, where the broker wants one."""
    key_file: str | None = None
    """The client certificate's key file."""
    insecure: bool = False
    """Do not check that the broker's certificate names its host (the chain is still verified)."""


class MqttSpec(_Strict):
    """The Loxone side: the MQTT broker the Miniserver (or LoxBerry) talks to."""

    host: str = Field(min_length=1)
    """Host name or address of the broker."""
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    """TCP port of the broker."""
    layout: str = "loxberry"
    """Topic layout: a built-in name or a layout file (see the MQTT layout reference)."""
    credentials_file: str | None = None
    """A file of ``PEMS_MQTT_USERNAME=…``/``PEMS_MQTT_PASSWORD=…`` lines (``chmod 600``); the environment wins."""
    client_id: str | None = None
    """MQTT client id (default: ``pems-loop-`` and a random suffix); a dry run appends ``-dry-run``."""
    tls: TlsSpec | None = None
    """TLS towards the broker (not set: plain TCP)."""

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data: Any) -> Any:
        return _refuse_secrets(data, "set PEMS_MQTT_USERNAME / PEMS_MQTT_PASSWORD or name a credentials_file")


class ModbusSpec(_Strict):
    """The Growatt hybrid inverter over Modbus TCP (a TCP gateway or the inverter's own port)."""

    host: str = Field(min_length=1)
    """Host name or address of the inverter or its Modbus TCP gateway."""
    port: Annotated[int, Field(ge=1, le=65535)] = 502
    """TCP port."""
    device_id: Annotated[int, Field(ge=1, le=247)] = 1
    """Modbus unit id of the inverter."""
    map: str = "growatt-sph"
    """Register map: a built-in name (``growatt-sph``, ``growatt-mod-xh``) or a map file."""
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 3.0
    """Time limit of one request [s]."""


class InfluxSpec(_Strict):
    """Where everything measured, commanded and every fallback is logged (spooled on disk while down)."""

    url: str = Field(min_length=1)
    """``influx://HOST:PORT/DB`` (the 1.x API) or ``influx2://HOST:PORT?org=ORG`` (the 2.x API; the mapping names the buckets)."""
    mapping: str = "loxone-growatt"
    """Mapping preset or file: which measurement and field each value is written to."""
    spool_dir: str | None = None
    """Folder of the disk spool that keeps points while the server is down (default: ``influx-spool`` in the state folder)."""
    spool_max_mb: Annotated[float, Field(ge=1)] = 1000.0
    """Most disk the spool may take; beyond it the oldest unsent points are dropped, and the log says which [MB]."""

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data: Any) -> Any:
        return _refuse_secrets(data, "set PEMS_INFLUX_USERNAME / PEMS_INFLUX_PASSWORD or PEMS_INFLUX_TOKEN")


#: Forecast sources the loop fetches itself (:mod:`pems.live.fetched`), by the key they feed.
FETCHED = {"weather": ("open-meteo", "influx"), "prices": ("entsoe", "ote", "influx")}


class OpenMeteoSpec(_Strict):
    """Open-Meteo's weather forecast at the house's site (``weather = "open-meteo"``; no key needed)."""

    url: str = "https://api.open-meteo.com/v1/forecast"
    """The forecast API (another address: a mirror or a self-hosted Open-Meteo)."""
    refresh_minutes: Annotated[float, Field(ge=0.1, le=1440)] = 60.0
    """Minutes between fetches (after a failure, a quarter of it, at least one; wall-clock minutes, also in a
    trial against the emulator)."""
    timeout_s: Annotated[float, Field(gt=0, le=300)] = 20.0
    """Time limit of one request [s]."""
    days: Annotated[int, Field(ge=1, le=16)] = 4
    """Days ahead fetched (at least the forecast horizon)."""


class EntsoeSpec(_Strict):
    """ENTSO-E's day-ahead prices (``prices = "entsoe"``): a bidding zone's spot price, through ``[forecast.tariff]``."""

    area: str = "10YCZ-CEPS-----N"
    """The bidding zone's EIC code (Czech Republic by default; Germany–Luxembourg ``10Y1001A1001A82H``, Austria
    ``10YAT-APG------L``, …)."""
    url: str = "https://web-api.tp.entsoe.eu/api"
    """The Transparency Platform's API."""
    credentials_file: str | None = None
    """A file with a ``PEMS_ENTSOE_TOKEN=…`` line (``chmod 600``); the environment's ``PEMS_ENTSOE_TOKEN`` wins."""
    refresh_minutes: Annotated[float, Field(ge=0.1, le=1440)] = 60.0
    """Minutes between fetches."""
    timeout_s: Annotated[float, Field(gt=0, le=300)] = 30.0
    """Time limit of one request [s]."""

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(str(k).lower() in ("token", "securitytoken", "security_token") for k in data):
            raise ValueError("the ENTSO-E token does not belong in the config file: set PEMS_ENTSOE_TOKEN or "
                             "name a credentials_file")
        return _refuse_secrets(data, "set PEMS_ENTSOE_TOKEN or name a credentials_file")


class OteSpec(_Strict):
    """OTE's day-ahead prices for Czech homes (``prices = "ote"``), through ``[forecast.tariff]``."""

    url: str = "https://www.ote-cr.cz/cs/kratkodobe-trhy/elektrina/denni-trh/@@chart-data"
    """The day-ahead market's chart data."""
    resolution: Literal["PT60M", "PT15M"] = "PT60M"
    """Hourly prices, or the quarter-hour products traded since October 2025."""
    refresh_minutes: Annotated[float, Field(ge=0.1, le=1440)] = 60.0
    """Minutes between fetches."""
    timeout_s: Annotated[float, Field(gt=0, le=300)] = 30.0
    """Time limit of one request [s]."""


class InfluxForecastSpec(_Strict):
    """The forecasts the home stores in its own InfluxDB (``weather = "influx"``, ``prices = "influx"``), read
    through a mapping's ``[[forecast]]`` tables as ``pems history`` reads history."""

    url: str = Field(min_length=1)
    """``influx://HOST:PORT[/DB]`` or ``influx2://HOST:PORT?org=ORG`` (credentials: ``PEMS_INFLUX_*``)."""
    mapping: str = "loxone-growatt"
    """Mapping preset or file whose ``[[forecast]]`` tables name the series (``T_out``, ``ghi``, ``spot``, …)."""
    refresh_minutes: Annotated[float, Field(ge=0.1, le=1440)] = 15.0
    """Minutes between reads."""
    step_minutes: Annotated[int, Field(ge=1, le=1440)] = 60
    """The stored forecasts' resolution (Open-Meteo's and the day-ahead market's: hourly) [min]."""
    radiation_shift_minutes: Annotated[float, Field(ge=-60, le=60)] = -30.0
    """Where stored radiation belongs against its stamp: −30 for Open-Meteo's mean of the hour before [min]."""

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data: Any) -> Any:
        return _refuse_secrets(data, "set PEMS_INFLUX_USERNAME / PEMS_INFLUX_PASSWORD or PEMS_INFLUX_TOKEN")


class LiveForecastSpec(_Strict):
    """Forecast sources (names as in a scenario file; CSVs are re-read when they change; or fetched by the loop)."""

    weather: str
    """A built-in weather set, a CSV file (re-read every step): ``time, T_out, ghi [, dni, dhi, wind_speed]``, or
    fetched by the loop: ``open-meteo`` (``[forecast.open_meteo]``), ``influx`` (the home's own forecast in its
    InfluxDB, ``[forecast.influx]``). Required: a built-in set is a typical year (climatology), which a home must
    choose knowingly."""
    prices: str
    """A built-in price model, a CSV file: ``time, price_import, price_export``, or day-ahead prices fetched by the
    loop through ``[forecast.tariff]``'s spot contract: ``entsoe`` (``[forecast.entsoe]``), ``ote`` (``[forecast.ote]``)
    or ``influx`` (the prices the home stores). Required: a home's tariff is its own."""
    load: str = "h25"
    """A built-in household-load profile or a CSV file: ``time, P_load``."""
    load_kwh_per_year: Annotated[float, Field(ge=0)] = 4000.0
    """Annual household consumption a built-in profile is scaled to [kWh]."""
    horizon_hours: Annotated[float, Field(gt=0, le=168)] = 48.0
    """Length of each forecast; at least ``mpc.horizon_hours`` [h]."""
    tariff: Tariff = Field(default_factory=Tariff)
    """Figures of the built-in price models."""
    learned: list[Literal["pv", "load"]] = Field(default_factory=list)
    """The model registry's champions (``pems forecast fit pv|load``) replace the PV and load of the sources above; ``load`` needs ``[modbus]``."""
    history: str | None = None
    """A history table (CSV/Parquet) the learned forecasters start from, e.g. from ``pems history``."""
    open_meteo: OpenMeteoSpec = Field(default_factory=OpenMeteoSpec)
    """``weather = "open-meteo"``: where and how often."""
    influx: InfluxForecastSpec | None = None
    """``weather = "influx"`` / ``prices = "influx"``: the home's own InfluxDB (required for them)."""
    entsoe: EntsoeSpec = Field(default_factory=EntsoeSpec)
    """``prices = "entsoe"``: the bidding zone and the token's file."""
    ote: OteSpec = Field(default_factory=OteSpec)
    """``prices = "ote"``: the resolution."""


class EvccSpec(_Strict):
    """The cars' wallboxes through evcc's MQTT interface (see :mod:`pems.live.evcc`)."""

    loadpoints: dict[str, Annotated[int, Field(ge=1)]]
    """Each car of the house file (its ``id``) → the number of its evcc loadpoint (from 1)."""
    host: str | None = None
    """The broker evcc publishes to (not set: the ``[mqtt]`` broker, with its credentials and TLS)."""
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    """Its port (not set: the ``[mqtt]`` port when the host is the same, else 1883)."""
    credentials_file: str | None = None
    """For a broker of its own: a file of ``PEMS_EVCC_USERNAME=…``/``PEMS_EVCC_PASSWORD=…`` lines
    (``chmod 600``; the environment wins). The ``[mqtt]`` credentials never go to another host."""
    tls: TlsSpec | None = None
    """TLS towards a broker of its own."""
    prefix: str = Field("evcc", min_length=1)
    """evcc's topic prefix (evcc's ``mqtt.topic``)."""
    handback_mode: Literal["pv", "minpv"] = "pv"
    """The mode a fault hands each car back to, evcc charging it by itself (also the loop's MQTT last will)."""

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data: Any) -> Any:
        return _refuse_secrets(data, "set PEMS_EVCC_USERNAME / PEMS_EVCC_PASSWORD or name a credentials_file")


class LiveCarSpec(_Strict):
    """What the live home changes of a car of the house file (its week, its target)."""

    calendar: str | None = None
    """A CSV of trips (``time_out, time_back[, drive_kwh]``, local times) that replace the week's on the days it
    names (e.g. a file a calendar job of yours keeps up to date; read again every step)."""
    trips: list[Trip] | None = None
    """The week's trips, replacing the house file's (same keys as there)."""
    target_soc: Annotated[float, Field(gt=0, le=1)] | None = None
    """State of charge wanted at every departure [-], replacing the house file's."""


class HomeAssistantSpec(_Strict):
    """Home Assistant over MQTT discovery, on the broker of ``[mqtt]`` (with its credentials and TLS)."""

    discovery_prefix: str = "homeassistant"
    """Home Assistant's discovery prefix (its MQTT integration's setting)."""
    name: str | None = None
    """The home's device name in Home Assistant (default: the house's name); its topics are ``pems/<name>/…``."""


class WebSpec(_Strict):
    """The live page (``pems live`` serves it while it runs)."""

    host: str = "127.0.0.1"
    """Address to listen on: this machine only by default; another address makes the page visible on the network."""
    port: Annotated[int, Field(ge=1, le=65535)] = 8766
    """Port of the page: ``http://HOST:PORT/``."""
    credentials_file: str | None = None
    """``USERNAME=…``/``PASSWORD=…`` lines (``chmod 600``) for the page's overrides; ``PEMS_WEB_USERNAME`` and ``PEMS_WEB_PASSWORD`` win. Without them the page takes no overrides."""


class EventLogSpec(_Strict):
    """How ``events.jsonl`` is kept over the years: rotated by size (and by day), the oldest removed."""

    rotate_mb: Annotated[float, Field(gt=0)] = 50.0
    """Size at which the file is rotated to ``events.jsonl.1`` (the newest) … [MB]."""
    daily: bool = False
    """Also rotate at the first event of each day (UTC): a file a day."""
    keep: Annotated[int, Field(ge=1, le=10000)] = 30
    """Rotated files kept at most."""
    max_total_mb: Annotated[float, Field(gt=0)] = 1000.0
    """The most the log and its rotated files may take together; the oldest go first [MB]."""

    def options(self) -> dict[str, Any]:
        """:class:`~pems.live.event_log.EventLog`'s keyword arguments."""
        return {"max_bytes": int(self.rotate_mb * 1e6), "keep": self.keep, "daily": self.daily,
                "max_total_bytes": int(self.max_total_mb * 1e6)}


class LiveConfig(_Strict):
    """A ``pems live --config`` file."""

    house: str
    """The house model: a house file (e.g. the ``house.toml`` of ``pems calibrate``) or a built-in name."""
    controller: Literal["mpc", "mpc+correctors", "rule-based"] = "mpc"
    """The controller; ``mpc+correctors`` takes the registry's champion corrector, learned for this house's rooms."""
    registry: str | None = None
    """The model registry of the champion corrector and learned forecasters (default: ``$PEMS_MODELS``, else
    ``$STATE_DIRECTORY/models`` under systemd, else ``$XDG_DATA_HOME/pems/models``)."""
    step_minutes: StepMinutes = 15
    """Control step; divides the day (e.g. 5, 10, 15, 30, 60) [min]."""
    inner_seconds: Annotated[int, Field(ge=1, le=3600)] = 60
    """Relay tick inside a control step (duty cycles); divides the control step [s]."""
    deadline_seconds: Annotated[float, Field(gt=0)] | None = None
    """Longest a control step (read, forecast, solve, write) or an inner tick may take before the guard hands the
    home back; not set: half a control step [s]."""
    clock: Literal["wall", "emulator"] = "wall"
    """``emulator``: follow the clock ``pems emulate`` announces on the broker (accelerated trials)."""
    state_dir: str | None = None
    """Folder of the loop's saved state and lock (default: ``$STATE_DIRECTORY`` under systemd, else
    ``$XDG_STATE_HOME/pems/<this file's name>``, e.g. ``~/.local/state/pems/home`` for ``home.toml``)."""
    cache_dir: str | None = None
    """Folder of what can be fetched again: forecasts (default: ``$CACHE_DIRECTORY`` under systemd, else
    ``$XDG_CACHE_HOME/pems/<this file's name>``)."""
    events: str | None = None
    """The loop's log of steps, commands and fallbacks (default: ``events.jsonl`` in ``$LOGS_DIRECTORY`` under
    systemd, else in the state folder)."""
    log: EventLogSpec = Field(default_factory=EventLogSpec)
    """How the event log is rotated and capped."""
    mqtt: MqttSpec
    """The Loxone side: the MQTT broker."""
    modbus: ModbusSpec | None = None
    """The Growatt inverter (not set: the battery is not controlled)."""
    influx: InfluxSpec | None = None
    """The InfluxDB log (not set: no log to InfluxDB)."""
    evcc: EvccSpec | None = None
    """The cars' wallboxes through evcc (required when the house file has cars)."""
    ev: dict[str, LiveCarSpec] = Field(default_factory=dict)
    """Per car of the house file (its ``id``): its week or target as lived now, over the house file's."""
    home_assistant: HomeAssistantSpec | None = None
    """Publish the home's states, energy totals and plan to Home Assistant (not set: not published)."""
    web: WebSpec | None = None
    """The live page (not set: none, unless ``--web PORT``)."""
    forecast: LiveForecastSpec
    """Where forecasts come from (required: weather and prices are the home's own choice)."""
    comfort: Comfort = Field(default_factory=Comfort)
    """Comfort bands and their schedule, as in a scenario file."""
    mpc: MpcSpec = Field(default_factory=MpcSpec)
    """MPC settings, as in a scenario file."""
    safety: dict[str, float | int | None] = Field(default_factory=dict)
    """The watchdog's thresholds (keys below)."""

    @model_validator(mode="after")
    def _consistent(self) -> LiveConfig:
        if (self.step_minutes * 60) % self.inner_seconds:
            raise ValueError(f"inner_seconds = {self.inner_seconds} must divide the control step "
                             f"({self.step_minutes} min)")
        if self.deadline_seconds is not None and self.deadline_seconds >= self.step_minutes * 60:
            raise ValueError(f"deadline_seconds = {self.deadline_seconds:g} must be shorter than the control step "
                             f"({self.step_minutes} min)")
        if self.forecast.horizon_hours < self.mpc.horizon_hours:
            raise ValueError(f"forecast.horizon_hours = {self.forecast.horizon_hours:g} is shorter than the MPC's "
                             f"horizon (mpc.horizon_hours = {self.mpc.horizon_hours:g})")
        return self


class LoadedLiveConfig:
    """A validated live configuration with its house and its folder (where relative paths resolve)."""

    def __init__(self, spec: LiveConfig, house: House, path: Path) -> None:
        self.spec, self.house, self.path = spec, house, path

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def resolve(self, p: str | None) -> Path | None:
        """A path of the file, relative to its folder."""
        if p is None:
            return None
        q = Path(p).expanduser()
        return q if q.is_absolute() else self.base_dir / q

    def resolve_named(self, p: str, builtins: tuple[str, ...]) -> str | Path:
        """A built-in name as is, anything else a path relative to the file's folder."""
        return p if p in builtins else self.resolve(p)

    @property
    def step(self) -> pd.Timedelta:
        return pd.Timedelta(minutes=self.spec.step_minutes)

    def check_forecast_sources(self, must_exist: bool = True) -> None:
        """``[forecast]`` weather, prices and load: built-in names, CSV files (that exist, with
        ``must_exist``), or sources the loop fetches; a problem names this file and ``forecast.<key>``."""
        from pems.twin.inputs import InputSpec, check_sources

        f = self.spec.forecast
        fetched = {k: v for k, v in (("weather", f.weather), ("prices", f.prices)) if v in FETCHED[k]}
        stand_in = {"weather": "amsterdam-iwec", "prices": "two-rate"}  # (only to check the other keys)
        spec = InputSpec(**{k: stand_in[k] if k in fetched else getattr(f, k) for k in ("weather", "prices", "load")})
        try:
            check_sources(spec, self.base_dir, self.path, "forecast.", must_exist)
        except InputError as exc:
            p = exc.problems[0]
            names = FETCHED.get(p.key.removeprefix("forecast."), ())
            if names and p.message.startswith("unknown"):
                raise InputError(p.source, p.key, f"{p.message}, or fetched by the loop: {', '.join(names)}") from None
            raise

    @property
    def home_name(self) -> str:
        """The name of this home's folders when none is given (the file's name without ``.toml``)."""
        return self.path.stem

    def state_dir(self) -> Path:
        """``state_dir``, else systemd's or XDG's state folder (:mod:`pems.paths`): never next to this file."""
        from pems.paths import state_dir

        return self.resolve(self.spec.state_dir) if self.spec.state_dir is not None else state_dir(self.home_name)

    def cache_dir(self) -> Path:
        """``cache_dir``, else systemd's or XDG's cache folder (:mod:`pems.paths`)."""
        from pems.paths import cache_dir

        return self.resolve(self.spec.cache_dir) if self.spec.cache_dir is not None else cache_dir(self.home_name)

    def events_path(self) -> Path:
        """``events``, else ``events.jsonl`` in systemd's logs folder or the state folder."""
        from pems.paths import logs_dir

        if self.spec.events is not None:
            return self.resolve(self.spec.events)
        return (logs_dir(self.home_name) if self.spec.state_dir is None else self.state_dir()) / "events.jsonl"

    def spool_dir(self) -> Path | None:
        """The InfluxDB log's spool: ``influx.spool_dir``, else ``influx-spool`` in the state folder."""
        if self.spec.influx is None:
            return None
        sd = self.spec.influx.spool_dir
        return self.resolve(sd) if sd is not None else self.state_dir() / "influx-spool"

    def registry_root(self) -> Path:
        """``registry`` relative to the file's folder; default :func:`pems.paths.models_dir`."""
        from pems.controllers.forecast.registry import default_root

        return self.resolve(self.spec.registry) if self.spec.registry is not None else default_root()

    def champion_corrector(self) -> Any:
        """``mpc+correctors``: the registry's champion residual corrector, checked against the house.

        Learned from the home's history by ``pems forecast fit correctors --registry DIR`` (or on a
        scenario by ``pems forecast backtest correctors``) and made champion with ``pems models promote``; ``registry`` defaults to ``$PEMS_MODELS`` or
        ``./models``.
        """
        from pems.controllers.forecast.registry import ModelRegistry

        root = self.registry_root()
        card = ModelRegistry(root).champion("corrector")
        if card is None:
            raise InputError(self.path, "registry", f"no champion corrector in {root}; learn one from the home's "
                                                    "history with `pems forecast fit correctors --registry DIR`")
        corrector = ModelRegistry(root).load(card.ref)
        rooms = tuple(getattr(getattr(corrector, "model", None), "rooms", ()))
        if rooms != tuple(self.house.room_ids):
            raise InputError(self.path, "registry", f"the champion corrector {card.ref} was learned for rooms "
                                                    f"{', '.join(rooms) or '?'}, not for the rooms of {self.house.name!r}")
        return corrector

    def safety_limits(self) -> Any:
        """``[safety]`` as :class:`~pems.live.safety.SafetyLimits` (unknown keys named)."""
        from pems.live.safety import SafetyLimits

        known = {f.name for f in fields(SafetyLimits)}
        for k in self.spec.safety:
            if k not in known:
                raise InputError(self.path, f"safety.{k}", f"unknown key; expected one of {', '.join(sorted(known))}")
        return SafetyLimits(**self.spec.safety)


def with_live_cars(house: House, cars: dict[str, LiveCarSpec], path: Path) -> House:
    """The house with each car's week and target as the live config sets them (calendars resolved
    against the config's folder)."""
    if not cars:
        return house
    ids = [e.id for e in house.ev]
    for car in cars:
        if car not in ids:
            have = f"its cars are {', '.join(ids)}" if ids else "it has no cars ([[ev]])"
            raise InputError(path, f"ev.{car}", f"no car {car!r} in house {house.name!r}: {have}")
    evs = []
    for e in house.ev:
        c = cars.get(e.id)
        if c is not None:
            update: dict[str, Any] = {}
            if c.trips is not None:
                update["trips"] = c.trips
            if c.target_soc is not None:
                update["target_soc"] = c.target_soc
            if c.calendar is not None:
                cal = Path(c.calendar) if Path(c.calendar).is_absolute() else path.parent / c.calendar
                if not cal.is_file():
                    raise InputError(path, f"ev.{e.id}.calendar", f"{cal}: calendar file not found")
                update["calendar"] = str(cal)
            e = e.model_copy(update=update)
        evs.append(e)
    return house.model_copy(update={"ev": evs})


def check_evcc(evcc: EvccSpec | None, house: House, path: Path) -> None:
    """Every car of the house has an evcc loadpoint, and every loadpoint named is a car's."""
    cars = [e.id for e in house.ev]
    if cars and evcc is None:
        raise InputError(path, "evcc", f"house {house.name!r} has cars ({', '.join(cars)}): the loop charges them "
                                       "through evcc; add [evcc] with loadpoints = {" + ", ".join(
                                           f'{c} = {i + 1}' for i, c in enumerate(cars)) + "}")
    if evcc is None:
        return
    for car in evcc.loadpoints:
        if car not in cars:
            have = f"its cars are {', '.join(cars)}" if cars else "it has no cars ([[ev]])"
            raise InputError(path, f"evcc.loadpoints.{car}", f"no car {car!r} in house {house.name!r}: {have}")
    for car in cars:
        if car not in evcc.loadpoints:
            raise InputError(path, "evcc.loadpoints", f"car {car!r} of house {house.name!r} has no loadpoint")
    numbers = list(evcc.loadpoints.values())
    if len(set(numbers)) != len(numbers):
        raise InputError(path, "evcc.loadpoints", f"two cars on one loadpoint: {evcc.loadpoints}")


def load_live_config(path: str | Path) -> LoadedLiveConfig:
    """Read and validate a live configuration (every problem named by file and key, exit code 2)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "--config", "file not found")
    spec = validate(LiveConfig, read_toml(p), p)
    house = with_live_cars(load_house(spec.house, base_dir=p.parent, source=p), spec.ev, p)
    check_evcc(spec.evcc, house, p)
    cfg = LoadedLiveConfig(spec, house, p)
    cfg.check_forecast_sources(must_exist=False)  # the files may be written by a job before the loop starts
    if spec.influx is not None:
        from pems.calibration.influx import InfluxSource

        InfluxSource.parse(spec.influx.url, p, "influx.url")
    rooms = set(house.room_ids)
    for rid in spec.comfort.rooms:
        if rid not in rooms:
            raise InputError(p, f"comfort.rooms.{rid}", f"no room {rid!r} in house {house.name!r}")
    cfg.safety_limits()  # unknown keys now, not at the first fault
    from pems.scenarios.comfort import warn_comfort

    warn_comfort(spec.comfort, house, p)
    if spec.mqtt.credentials_file is not None and not cfg.resolve(spec.mqtt.credentials_file).is_file():
        raise InputError(p, "mqtt.credentials_file", f"{cfg.resolve(spec.mqtt.credentials_file)} not found")
    if spec.evcc is not None and spec.evcc.credentials_file is not None \
            and not cfg.resolve(spec.evcc.credentials_file).is_file():
        raise InputError(p, "evcc.credentials_file", f"{cfg.resolve(spec.evcc.credentials_file)} not found")
    if spec.web is not None and spec.web.credentials_file is not None and not cfg.resolve(spec.web.credentials_file).is_file():
        raise InputError(p, "web.credentials_file", f"{cfg.resolve(spec.web.credentials_file)} not found")
    if spec.modbus is not None and house.battery is None:
        raise InputError(p, "modbus", f"house {house.name!r} has no battery to control; remove [modbus]")
    if spec.controller == "mpc+correctors":
        cfg.champion_corrector()  # there is one, and it was learned for this house
    if spec.forecast.history is not None:
        if not spec.forecast.learned:
            raise InputError(p, "forecast.history", "seeds the learned forecasters: name them in forecast.learned")
        if not cfg.resolve(spec.forecast.history).is_file():
            raise InputError(p, "forecast.history", f"{cfg.resolve(spec.forecast.history)} not found")
    if "load" in spec.forecast.learned and spec.modbus is None:
        raise InputError(p, "forecast.learned", "the learned load forecasts from the household load the inverter "
                                                "meters: it needs [modbus]")
    if spec.forecast.learned:  # there are champions, and they forecast what they are asked for
        from pems.live.learned import LearnedForecasts, MeasuredHistory

        LearnedForecasts(spec.forecast.learned, cfg.registry_root(), p, MeasuredHistory(None, step=cfg.step))
    return cfg


#: The learned forecasters' measured history in the state folder (see :mod:`pems.live.learned`).
HISTORY_FILE = "history.parquet"


def fetched_sources(cfg: LoadedLiveConfig, horizon: pd.Timedelta, now: Any) -> dict[str, Any]:
    """The sources of ``[forecast]`` the loop fetches itself, by key, each caching in the cache folder."""
    from pems.live.fetched import Fetched

    f, out = cfg.spec.forecast, {}
    cache = cfg.cache_dir()
    if f.weather == "open-meteo":
        from pems.live.open_meteo import fetch_weather

        om, site = f.open_meteo, cfg.house.site
        if om.days * 24 < f.horizon_hours:
            raise InputError(cfg.path, "forecast.open_meteo.days", f"{om.days} days do not cover the forecast "
                                                                   f"horizon ({f.horizon_hours:g} h)")
        out["weather"] = Fetched("open-meteo", "weather",
                                 lambda t: fetch_weather(om.url, site, t, om.timeout_s, om.days),
                                 cache / "weather-open-meteo.csv", om.refresh_minutes * 60, horizon, now)
    if f.prices in ("entsoe", "ote"):
        from pems.live.day_ahead import entsoe_token, fetch_entsoe, fetch_ote

        if f.prices == "entsoe":
            es = f.entsoe
            cred = cfg.resolve(es.credentials_file)

            def fetch_prices(t: pd.Timestamp) -> pd.DataFrame:  # the token read at each fetch: never kept
                return fetch_entsoe(es.url, es.area, entsoe_token(cred), t, f.tariff, es.timeout_s)
            refresh = es.refresh_minutes
        else:
            ote = f.ote

            def fetch_prices(t: pd.Timestamp) -> pd.DataFrame:
                return fetch_ote(ote.url, t, f.tariff, ote.resolution, ote.timeout_s)
            refresh = ote.refresh_minutes
        out["prices"] = Fetched(f.prices, "prices", fetch_prices, cache / f"prices-{f.prices}.csv", refresh * 60,
                                horizon, now)
    for key in ("weather", "prices"):
        if getattr(f, key) != "influx":
            continue
        if f.influx is None:
            raise InputError(cfg.path, "forecast.influx", f"{key} = \"influx\" needs [forecast.influx] with its url")
        from pems.calibration.influx import InfluxSource
        from pems.calibration.mapping import builtin_mappings, load_mapping
        from pems.live.influx_forecast import NEEDED, fetch_from_influx

        spec = f.influx
        try:
            InfluxSource.parse(spec.url)
        except (InputError, ValueError) as exc:
            raise InputError(cfg.path, "forecast.influx.url", str(exc)) from None
        mapping = load_mapping(cfg.resolve_named(spec.mapping, builtin_mappings()))
        have = {s.column for s in mapping.forecast}
        if not set(NEEDED[key]) <= have:
            raise InputError(cfg.path, "forecast.influx.mapping", f"{mapping.name!r} has no [[forecast]] series for "
                                                                  f"{', '.join(sorted(set(NEEDED[key]) - have))}")
        shift = pd.Timedelta(minutes=spec.radiation_shift_minutes)

        def fetch(t: pd.Timestamp, key: str = key, mapping: Any = mapping, shift: pd.Timedelta = shift) -> pd.DataFrame:
            return fetch_from_influx(spec.url, mapping, key, t, horizon, pd.Timedelta(minutes=spec.step_minutes),
                                     f.tariff, shift)

        out[key] = Fetched("influx", key, fetch, cache / f"{key}-influx.csv", spec.refresh_minutes * 60, horizon, now)
    return out


class LiveForecast:
    """The forecast of the coming horizon at each control step, from ``[forecast]`` and ``[comfort]``.

    Built anew every step (≈ 0.2 s for 17 rooms and 48 h, against a 15-minute step), so a CSV
    source that a job of yours refreshes is read at the next step, and a forecast never outlives its
    data. Beyond the end of a source's data the last day repeats (a day-ahead price file before the
    next auction); a source that does not cover the step now raises
    :class:`~pems.errors.InputError`, which the loop treats as a solver fault (the home runs itself).
    """

    def __init__(self, cfg: LoadedLiveConfig, d_names: tuple[str, ...], history_path: Path | None = None,
                 seeds: tuple[Path, ...] = (), record_drift: bool = True, hold_saves: bool = False) -> None:
        from pems.twin.inputs import InputSpec

        f = cfg.spec.forecast
        self.cfg, self.d_names = cfg, tuple(d_names)
        self.input_spec = InputSpec(weather=f.weather, prices=f.prices, load=f.load,
                                    load_kwh_per_year=f.load_kwh_per_year, tariff=f.tariff, base_dir=cfg.base_dir)
        self.step = cfg.step
        self.h = int(round(pd.Timedelta(hours=f.horizon_hours) / self.step))
        self.now: Any = lambda: pd.Timestamp.now(tz="UTC")  # the loop's clock (open_live sets it)
        self.fetched = fetched_sources(cfg, pd.Timedelta(hours=f.horizon_hours), lambda: self.now())
        self.history = self.learned = None
        if f.learned:
            from pems.live.learned import LearnedForecasts, MeasuredHistory

            first = (cfg.resolve(f.history),) if f.history is not None else ()  # checked by load_live_config
            self.history = MeasuredHistory(history_path, (*first, *(p for p in seeds if p.is_file())), self.step)
            self.history.saving = not hold_saves  # until the loop holds the state folder's lock
            self.learned = LearnedForecasts(f.learned, cfg.registry_root(), cfg.path, self.history,
                                            cfg.house.site.timezone, record_drift)

    def table(self, t: pd.Timestamp) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, str]]:
        """The input table, the comfort bands (low, high) from the step of ``t`` over the horizon,
        and where learned columns came from (role → champion, or why the configured source stood)."""
        from pems.scenarios.comfort import comfort_bands
        from pems.twin.inputs import build_inputs, internal_gain_columns

        t0 = t.floor(self.step)
        spec = self.input_spec
        for key, src in self.fetched.items():  # the cached forecast (or its persistence) of each fetched source
            path = src.path(t0)
            if path is None:
                raise InputError(self.cfg.path, f"forecast.{key}", f"{src.label}: nothing fetched yet"
                                 + (f" ({src.last_error})" if src.last_error else ""))
            spec = replace(spec, **{key: str(path)})
        try:
            tab = build_inputs(self.cfg.house, spec, t0, self.h, self.step, required_steps=1)
        except InputError as exc:
            raise self._named(exc) from None
        sources: dict[str, str] = {}
        if self.learned is not None:
            # the weather as forecast for this step: what the PV correction later compares the yield with
            self.history.record(t0, ghi=float(tab["ghi"].iloc[0]), T_out=float(tab["T_out"].iloc[0]))
            sources = self.learned.apply(tab, t0)
            if sources.get("load", "").startswith("load/"):  # appliances' heat follows the learned load
                for col, q in internal_gain_columns(self.cfg.house, tab.index, self.step,
                                                    tab["P_load"].to_numpy()).items():
                    tab[col] = q
            self.history.save()  # once a step, with what this forecast added
        low, high = comfort_bands(self.cfg.spec.comfort, self.cfg.house, tab.index)
        return tab, low, high, sources

    def _named(self, exc: InputError) -> InputError:
        """A source's problem said as this config's: its file and ``forecast.<key>``, and what to do."""
        p = exc.problems[0]
        key = p.key if p.key in ("weather", "prices", "load") else "weather"
        value = getattr(self.cfg.spec.forecast, key)
        builtin = not str(value).lower().endswith((".csv", ".csv.gz", ".parquet"))
        hint = ("; a built-in source does not move with the calendar: name a file that a job of yours keeps "
                "up to date" if builtin else "; is the job that refreshes it running?")
        msg = p.message.replace("the scenario needs", "the loop needs")
        return InputError(self.cfg.path, f"forecast.{key}", f"{value!r} ({p.source}): {msg}{hint}")

    def on_start(self) -> None:
        """The loop holds its state folder: the history may be written from now on, and the fetched
        sources refresh on their own schedules."""
        if self.history is not None and not self.history.saving:
            self.history.saving = True
            self.history.save()
        for src in self.fetched.values():
            src.start()

    def first_fetch(self) -> None:
        """Before the loop starts: fetch each source whose cache is empty once, in this thread
        (bounded by its time limit), so that the first step has a forecast when the service answers."""
        for src in self.fetched.values():
            if src.path(self.now().floor(self.step)) is None:
                src.refresh()

    def fetch_reports(self) -> list[Any]:
        """What the fetched sources did since the last call (:class:`~pems.live.fetched.FetchReport`)."""
        return [r for src in self.fetched.values() for r in src.drain()]

    def fetch_status(self) -> dict[str, dict]:
        return {key: src.status() for key, src in self.fetched.items()}

    def close(self) -> None:
        """Stop the fetching threads."""
        for src in self.fetched.values():
            src.stop()

    def check_drift(self, t: pd.Timestamp) -> dict[str, dict]:
        """Once a local day: the learned forecasters' live drift reports (role → report fields)."""
        from dataclasses import asdict

        if self.learned is None:
            return {}
        return {role: asdict(r) for role, r in self.learned.check_drift(t).items()}

    def observe(self, t: pd.Timestamp, P_pv: float, P_load: float) -> None:
        """The measured means of the step starting at ``t``: PV and household load without heating [W]."""
        if self.history is not None:
            self.history.record(t, P_pv=P_pv, P_load=P_load)
            self.history.save()

    def __call__(self, t: pd.Timestamp) -> Any:
        from pems.twin.signals import Forecast

        tab, low, high, sources = self.table(t)
        extras: dict[str, Any] = {"sources": sources} if sources else {}
        if self.learned is not None and self.learned.quantiles:  # the learned forecasters' own P10–P90
            extras["quantiles"] = dict(self.learned.quantiles)  # (only the columns a champion made this step)
        return Forecast(index=tab.index, d=tab[list(self.d_names)].to_numpy(dtype=float), d_names=self.d_names,
                        price_import=tab["price_import"].to_numpy(dtype=float),
                        price_export=tab["price_export"].to_numpy(dtype=float), low=low.to_numpy(dtype=float),
                        high=high.to_numpy(dtype=float), rooms=tuple(low.columns), extras=extras)


def open_live(cfg: LoadedLiveConfig, dry_run: bool = False, events_path: str | Path | None = None) -> Any:
    """The :class:`~pems.live.loop.LiveLoop` a configuration describes (not started).

    ``clock = "emulator"`` reads the emulator's clock anchor from the broker first (a
    :class:`~pems.live.clock.SimClock` shared with ``pems emulate`` in another process); otherwise
    the loop runs on the wall clock.
    """
    import time

    from pems.calibration.mapping import builtin_mappings
    from pems.controllers import make_controller
    from pems.live.growatt import GrowattModbus
    from pems.live.clock import Followed, WallClock
    from pems.live.loop import LiveLoop, LoopSettings
    from pems.live.loxone import LoxoneMqtt
    from pems.live.mqtt import ClockFollower, TLSConfig, credentials_from
    from pems.live.registers import builtin_maps
    from pems.live.topics import builtin_layouts
    from pems.twin.model import build_model

    s, house = cfg.spec, cfg.house
    cfg.check_forecast_sources()  # before anything connects: a missing file names this file and its key
    model = build_model(house)
    step_s = s.step_minutes * 60.0
    controller = make_controller(s.controller, model, step_s, s.mpc.model_dump())
    if s.controller == "mpc+correctors":
        controller.corrector = cfg.champion_corrector()  # learned offline; the live loop does not relearn
    creds = credentials_from(file=cfg.resolve(s.mqtt.credentials_file))
    tls = None
    if s.mqtt.tls is not None:
        t = s.mqtt.tls
        tls = TLSConfig(cfg.resolve(t.ca_file), cfg.resolve(t.cert_file), cfg.resolve(t.key_file), t.insecure)
        tls.check()
    mqtt_kw: dict[str, Any] = {"username": creds.username, "password": creds.password, "tls": tls}
    if s.clock == "emulator":
        # followed, not copied: an emulator that stops or dies is a fault of the loop (FollowedClock)
        limits = cfg.safety_limits()
        clock = ClockFollower(s.mqtt.host, s.mqtt.port, **mqtt_kw).follow(max(2 * limits.stale_s, 3 * step_s))
    else:
        clock = WallClock()
    speed = float(getattr(clock, "speed", 1.0) or 1.0)

    def clock_sleep(seconds: float) -> None:  # the write guard's waits are in the clock's seconds
        time.sleep(max(0.0, seconds) / speed)

    # a dry run beside a running loop must not take over its MQTT session (same client id)
    client_id = s.mqtt.client_id if not (dry_run and s.mqtt.client_id) else f"{s.mqtt.client_id}-dry-run"
    bus = LoxoneMqtt(s.mqtt.host, s.mqtt.port, model.rooms, layout=cfg.resolve_named(s.mqtt.layout, builtin_layouts()),
                     client_id=client_id, dry_run=dry_run, clock=clock.monotonic, **mqtt_kw)
    inverter = None
    if s.modbus is not None:
        m = s.modbus
        inverter = GrowattModbus(m.host, m.port, m.device_id, map=cfg.resolve_named(m.map, builtin_maps()),
                                 timezone=house.site.timezone, dry_run=dry_run, timeout=m.timeout_s,
                                 clock=clock.monotonic, now=clock.now, sleep=clock_sleep)
    events = cfg.events_path()
    state = cfg.state_dir()
    seeds: tuple[Path, ...] = ()
    if dry_run:
        # A dry run keeps its own log and state (it never held the home: a later real run must
        # not resume from it) and writes nothing to the home's InfluxDB; it starts from what the
        # real loop measured.
        events = events.with_name(f"{events.stem}.dry-run{events.suffix}")
        seeds = (state / HISTORY_FILE,)
        state = state / "dry-run"
    forecast = LiveForecast(cfg, model.sym.d.names, state / HISTORY_FILE, seeds, record_drift=not dry_run,
                            hold_saves=True)
    forecast.now = clock.now
    try:
        forecast.first_fetch()  # a fetched source with nothing cached yet: once now, bounded by its time limit
        try:
            forecast(clock.now())  # a missing or bad forecast source is an input error now, not at the first step
        except InputError as exc:
            fetched = [k for k in forecast.fetched if exc.problems[0].key == f"forecast.{k}"]
            if not fetched:
                raise
            # a service that does not answer yet: the loop starts, the home runs itself until it does
            log.warning("%s", exc)
    except BaseException:
        forecast.close()
        if isinstance(clock, Followed):
            clock.close()
        raise
    # The loop's clock is its own (wall, or a copy of the emulator's): holding it at real time
    # during solves would only make it lag behind the home's.
    settings = LoopSettings(step_s=step_s, inner_s=float(s.inner_seconds), dry_run=dry_run, real_time_solve=False,
                            deadline_s=s.deadline_seconds)
    influx = None
    if s.influx is not None and dry_run:
        log.warning("%s: dry run: the InfluxDB log ([influx]) is not written", cfg.path)
    if s.influx is not None and not dry_run:  # last: its sender thread and spool lock need closing
        from pems.live.influx_log import InfluxLog

        influx = InfluxLog(s.influx.url, cfg.resolve_named(s.influx.mapping, builtin_mappings()),
                           spool_dir=cfg.spool_dir(), house=house, url_source=cfg.path,
                           url_key="influx.url", max_bytes=int(s.influx.spool_max_mb * 1e6))
    ha = None
    if s.home_assistant is not None and dry_run:
        log.warning("%s: dry run: nothing is published to Home Assistant ([home_assistant])", cfg.path)
    if s.home_assistant is not None and not dry_run:
        from pems.live.home_assistant import HomeAssistant

        ha = HomeAssistant(s.mqtt.host, s.mqtt.port, house=s.home_assistant.name or house.name, rooms=model.rooms,
                           has_battery=model.has_battery, currency=s.forecast.tariff.currency, cars=model.cars,
                           prefix=s.home_assistant.discovery_prefix,
                           client_id=f"{s.mqtt.client_id}-ha" if s.mqtt.client_id else None, **mqtt_kw)
    chargers = []
    if s.evcc is not None:
        from pems.live.evcc import EvccLoadpoint

        e = s.evcc
        same = e.host is None or e.host == s.mqtt.host
        host, port = (s.mqtt.host, e.port or s.mqtt.port) if same else (e.host, e.port or 1883)
        kw = mqtt_kw
        if not same:  # its own credentials and TLS: the [mqtt] broker's password never goes to another host
            own = credentials_from(env_prefix="PEMS_EVCC_", file=cfg.resolve(e.credentials_file))
            own_tls = None
            if e.tls is not None:
                own_tls = TLSConfig(cfg.resolve(e.tls.ca_file), cfg.resolve(e.tls.cert_file),
                                    cfg.resolve(e.tls.key_file), e.tls.insecure)
                own_tls.check()
            kw = {"username": own.username, "password": own.password, "tls": own_tls}
        chargers = [EvccLoadpoint(host, port, e.loadpoints[car.id], car.charger, prefix=e.prefix,
                                  handback_mode=e.handback_mode, dry_run=dry_run, clock=clock.monotonic,
                                  client_id=f"{s.mqtt.client_id}-evcc-{car.id}" if s.mqtt.client_id else None, **kw)
                    for car in house.ev]
    try:
        return LiveLoop(model, controller, forecast, bus, inverter, clock, settings, cfg.safety_limits(),
                        events_path if events_path is not None else events, state, influx, ha,
                        currency=s.forecast.tariff.currency, events_options=s.log.options(), chargers=chargers)
    except BaseException:
        if influx is not None:
            influx.close(0.5)
        if isinstance(clock, Followed):
            clock.close()
        raise
