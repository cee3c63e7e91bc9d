"""MQTT topic layouts of the Loxone room bus: loading, rendering per room, payload parsing.

A *layout* (TOML; the built-in ``loxberry`` lives in ``live/maps/``) says under which topics the home
publishes its states (room temperatures, relay states, the mode in force, the outdoor temperature)
and receives the loop's commands (relay on/off, mode ``pems``/``home``), how payloads are encoded
(plain numbers or JSON with a value key, the on/off and mode encodings) and with which QoS and retain
flags each side publishes::

    name = "my-home"
    [topics]
    temperature = "loxone/room/{room}/temperature"
    relay_state = "loxone/room/{room}/heating/state"
    relay_set = "loxone/room/{room}/heating/set"
    mode_set = "loxone/room/{room}/mode/set"
    outdoor = "loxone/outdoor/temperature"     # optional, like mode_state, gateway_status, loop_status
    [payload]
    format = "plain"                           # or "json" with json_key = "value"
    on = "1"
    off = "0"

Parsing never raises: a payload that cannot be read gives ``nan`` (or ``None`` for a mode) and a
problem message, which the adapters count (:class:`ProblemCounter`).
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pems.errors import InputError
from pems.live.devices import HeatingMode
from pems.tomlio import builtin_or_file, read_toml, validate

#: Keys of per-room topics (their templates contain ``{room}``).
ROOM_KEYS = ("temperature", "relay_state", "relay_set", "mode_set", "mode_state")
#: Keys of house-wide topics (no ``{room}``).
HOUSE_KEYS = ("outdoor", "gateway_status", "loop_status", "loop_heartbeat", "loop_problem")
#: Topics the home publishes and the loop reads.
STATE_KEYS = ("temperature", "relay_state", "mode_state", "outdoor", "gateway_status")
#: Topics the loop publishes and the home reads.
COMMAND_KEYS = ("relay_set", "mode_set", "loop_status", "loop_heartbeat", "loop_problem")

TopicKey = Literal["temperature", "relay_state", "relay_set", "mode_set", "mode_state",
                   "outdoor", "gateway_status", "loop_status", "loop_heartbeat", "loop_problem"]
PayloadFormat = Literal["plain", "json"]

# Words understood as on/off on input, whatever the layout sends: the LoxBerry gateway's own
# boolean conversion accepts these (plus numbers), and Loxone users write them in either language.
TRUE_WORDS = frozenset({"on", "true", "yes", "enabled", "enable", "active", "an", "ein", "ja", "1"})
FALSE_WORDS = frozenset({"off", "false", "no", "disabled", "disable", "inactive", "aus", "nein", "0"})

# A number with an optional unit (Loxone status texts such as "21.3°C"); a decimal comma is
# accepted because Czech and German Miniserver texts may use one.
_NUMBER = re.compile(r"^([-+]?(?:\d+(?:[.,]\d*)?|[.,]\d+)(?:[eE][-+]?\d+)?)\s*(?:°\s*C|°|C)?$")
_BAD_TOPIC_CHARS = ("+", "#", "\x00")

#: The longest state payload read [bytes]. A LoxBerry value is a number, a word or a small JSON
#: object; anything longer is a fault (or an attack), not a reading, and is not parsed at all.
MAX_PAYLOAD_BYTES = 1024
#: JSON keys a payload may carry its own time under (ISO 8601 text, or Unix seconds or milliseconds):
#: a retained value with one has a known age.
TIME_KEYS = ("timestamp", "time", "ts")


class Topics(BaseModel):
    """Topic templates; ``{room}`` stands for the room's name in the topics."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    temperature: str
    """Per room, home → loop: the room's air temperature in °C."""
    relay_state: str
    """Per room, home → loop: the heating relay's state, on/off."""
    relay_set: str
    """Per room, loop → home: switch the heating relay on/off."""
    mode_set: str
    """Per room, loop → home: who runs the room, ``pems`` or ``home`` (its own thermostat)."""
    mode_state: str = ""
    """Per room, home → loop: the mode in force (empty: not published)."""
    outdoor: str = ""
    """House-wide, home → loop: the outdoor temperature in °C (empty: not published)."""
    gateway_status: str = ""
    """House-wide, home → loop: the gateway's status, ``payload.gateway_online`` when it is up (empty: none)."""
    loop_status: str = ""
    """House-wide, loop → home: the retained online/offline flag of the loop, with a last will (empty: none)."""
    loop_heartbeat: str = ""
    """House-wide, loop → home: the loop's heartbeat, its clock as Unix seconds, every inner tick while it
    works (not retained). The home's own logic takes its rooms back when it stops (empty: none)."""
    loop_problem: str = ""
    """House-wide, loop → home: what keeps the loop from working as it should, as text (retained; empty text
    when nothing does), e.g. a full disk under its event log (empty topic: not published)."""

    @field_validator("*")
    @classmethod
    def _topic(cls, v: str) -> str:
        if any(c in v for c in _BAD_TOPIC_CHARS):
            raise ValueError(f"a topic to publish to cannot contain '+', '#' or NUL, got {v!r}")
        if "{" in v.replace("{room}", "") or "}" in v.replace("{room}", ""):
            raise ValueError(f"the only placeholder is {{room}}, got {v!r}")
        if v.startswith("$"):
            raise ValueError(f"topics starting with '$' are reserved for the broker, got {v!r}")
        return v

    @model_validator(mode="after")
    def _placeholders(self) -> Topics:
        for key in ROOM_KEYS:
            t = getattr(self, key)
            if t and "{room}" not in t:
                raise ValueError(f"topics.{key}: a per-room topic needs {{room}}, got {t!r}")
        for key in HOUSE_KEYS:
            t = getattr(self, key)
            if "{room}" in t:
                raise ValueError(f"topics.{key}: a house-wide topic cannot contain {{room}}, got {t!r}")
        used = [getattr(self, k) for k in (*ROOM_KEYS, *HOUSE_KEYS) if getattr(self, k)]
        dup = sorted({t for t in used if used.count(t) > 1})
        if dup:
            raise ValueError(f"every topic must be different; used twice: {', '.join(dup)}")
        return self


class Payload(BaseModel):
    """How values are written in payloads."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    format: PayloadFormat = "plain"
    """``plain`` numbers and words, or ``json`` objects with the value under ``json_key``."""
    json_key: str = Field("value", min_length=1)
    """The value's key in ``json`` payloads."""
    formats: dict[TopicKey, PayloadFormat] = Field(default_factory=dict)
    """A different format for some topics, by topic key, e.g. ``{ temperature = "json" }``."""
    on: str = Field("1", min_length=1)
    """A relay on (common on/off words are understood on input too)."""
    off: str = Field("0", min_length=1)
    """A relay off."""
    pems: str = Field("1", min_length=1)
    """Mode: the loop runs the room."""
    home: str = Field("0", min_length=1)
    """Mode: the room's own thermostat runs it."""
    online: str = Field("1", min_length=1)
    """The loop's status: running."""
    offline: str = Field("0", min_length=1)
    """The loop's status: stopped (also its last will)."""
    gateway_online: str = "Connected"
    """The gateway's status when it is up."""

    @model_validator(mode="after")
    def _distinct(self) -> Payload:
        for a, b in (("on", "off"), ("pems", "home"), ("online", "offline")):
            if getattr(self, a).strip().lower() == getattr(self, b).strip().lower():
                raise ValueError(f"payload.{a} and payload.{b} must differ, both are {getattr(self, a)!r}")
        return self

    def format_of(self, key: str) -> PayloadFormat:
        return self.formats.get(key, self.format)  # type: ignore[call-overload]


class Delivery(BaseModel):
    """QoS and retain flag of one direction."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    qos: int = Field(1, ge=0, le=2)
    """MQTT quality of service."""
    retain: bool = False
    """Whether the broker keeps the last message for new subscribers."""


class Layout(BaseModel):
    """A whole layout file."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    name: str
    """The layout's name."""
    description: str = ""
    """One line about the layout."""
    topics: Topics
    """Topic templates; ``{room}`` stands for the room's name in the topics."""
    payload: Payload = Field(default_factory=Payload)
    """How values are written."""
    state: Delivery = Field(default_factory=lambda: Delivery(qos=0, retain=True))
    """QoS and retain of what the home publishes (default: QoS 0, retained)."""
    command: Delivery = Field(default_factory=lambda: Delivery(qos=1, retain=False))
    """QoS and retain of what the loop publishes (default: QoS 1, not retained)."""
    rooms: dict[str, str] = Field(default_factory=dict)
    """Room id → its name in the topics (default: the id)."""

    @field_validator("rooms")
    @classmethod
    def _room_names(cls, v: dict[str, str]) -> dict[str, str]:
        for rid, name in v.items():
            check_room_name(name, f"rooms.{rid}")
        return v

    # -- rendering -------------------------------------------------------------------------------
    def room_name(self, room: str) -> str:
        """The name that stands for ``{room}`` in the topics of room ``room``."""
        return self.rooms.get(room, room)

    def topic(self, key: str, room: str | None = None) -> str:
        """The concrete topic of ``key`` (``""`` if the layout has none).

        Raises
        ------
        ValueError
            ``room`` missing for a per-room key, or given for a house-wide one.
        """
        template: str = getattr(self.topics, key)
        if key in ROOM_KEYS:
            if room is None:
                raise ValueError(f"topic {key!r} is per room: give the room")
            return template.replace("{room}", self.room_name(room)) if template else ""
        if room is not None:
            raise ValueError(f"topic {key!r} is house-wide: no room")
        return template

    def routes(self, rooms: Iterable[str], keys: Iterable[str]) -> dict[str, tuple[str, str | None]]:
        """Concrete topic → (key, room id) for ``keys`` of ``rooms`` (keys without a topic are left out).

        Raises
        ------
        InputError
            A room name is not usable in a topic, or two rooms share a topic.
        """
        out: dict[str, tuple[str, str | None]] = {}
        rooms = list(rooms)
        for room in rooms:
            check_room_name(self.room_name(room), f"room {room!r}", source=f"layout {self.name}")
        for key in keys:
            for room in (rooms if key in ROOM_KEYS else [None]):
                t = self.topic(key, room)
                if not t:
                    continue
                if t in out:
                    raise InputError(f"layout {self.name}", f"topics.{key}",
                                     f"rooms {out[t][1]!r} and {room!r} share the topic {t!r}")
                out[t] = (key, room)
        return out

    # -- encoding --------------------------------------------------------------------------------
    def encode(self, key: str, value: Any) -> str:
        """The payload for ``value`` on topic ``key``.

        Relays take a bool (or 0/1), modes ``"pems"``/``"home"``, ``loop_status`` a bool (online),
        everything else a number (°C); a non-finite number becomes ``"nan"`` (``null`` in JSON).
        """
        p = self.payload
        raw: str | float | None
        if key in ("relay_set", "relay_state"):
            raw = p.on if bool(value) else p.off
        elif key in ("mode_set", "mode_state"):
            if value not in ("pems", "home"):
                raise ValueError(f"mode must be 'pems' or 'home', got {value!r}")
            raw = p.pems if value == "pems" else p.home
        elif key == "loop_status":
            raw = p.online if bool(value) else p.offline
        elif key == "gateway_status":
            raw = str(value)
        else:
            x = float(value)
            raw = x if math.isfinite(x) else None
        if p.format_of(key) == "json":
            if isinstance(raw, str) and key != "gateway_status":
                # numbers stay numbers in JSON ("1" → 1): what a JSON consumer expects
                num = _number(raw)
                if num is not None and math.isfinite(num):
                    raw = int(num) if num.is_integer() and "." not in raw and "e" not in raw.lower() else num
            return json.dumps({p.json_key: raw})
        if raw is None:
            return "nan"
        return raw if isinstance(raw, str) else format(raw, ".6g")

    # -- parsing ---------------------------------------------------------------------------------
    def parse_number(self, key: str, payload: bytes | str) -> tuple[float, str | None]:
        """A number from a payload: ``(value, None)``, or ``(nan, problem)`` if unreadable.

        Understood whatever the layout's format: plain numbers (``21.3``, ``21,3``, ``21.3°C``),
        JSON numbers, and JSON objects with the layout's ``json_key`` (or ``value``). For relay keys
        also the layout's on/off payloads, on/off words and booleans (→ 1/0); for a temperature a
        word is a problem, not 1 °C. ``nan`` and JSON ``null`` are a deliberate "no value" (nan, no
        problem); an infinite value is a problem.
        """
        boolean = key in ("relay_state", "relay_set")
        scalar, problem = self._scalar(payload)
        if problem:
            return math.nan, problem
        if scalar is None:
            return math.nan, None
        if isinstance(scalar, bool):
            return (float(scalar), None) if boolean else (math.nan, f"not a number: {scalar!r}")
        if isinstance(scalar, int | float):
            try:
                x = float(scalar)
            except OverflowError:  # a JSON integer of hundreds of digits
                return math.nan, f"number too large: {_clip(str(scalar))!r}"
        else:
            s = str(scalar).strip()
            low = s.lower()
            if low in ("nan", "null", "none"):
                return math.nan, None
            if boolean:
                p = self.payload
                if low == p.on.strip().lower() or low in TRUE_WORDS:
                    return 1.0, None
                if low == p.off.strip().lower() or low in FALSE_WORDS:
                    return 0.0, None
            num = _number(s)
            if num is None:
                return math.nan, f"not a number: {_clip(s)!r}"
            x = num
        if not math.isfinite(x):
            return math.nan, f"not a finite number: {x!r}"
        return x, None

    def parse_relay(self, key: str, payload: bytes | str) -> tuple[float, str | None]:
        """A relay state 1.0/0.0 (any non-zero number is on), or ``(nan, problem)``."""
        x, problem = self.parse_number(key, payload)
        if problem or math.isnan(x):
            return math.nan, problem
        return (1.0 if x != 0 else 0.0), None

    def parse_mode(self, payload: bytes | str) -> tuple[HeatingMode | None, str | None]:
        """``"pems"``/``"home"`` from the layout's encodings or the words themselves; else ``(None, problem)``."""
        scalar, problem = self._scalar(payload)
        if problem:
            return None, problem
        if isinstance(scalar, bool) or scalar is None:
            return None, f"not a mode: {scalar!r}"
        s = (format(scalar, "g") if isinstance(scalar, int | float) else str(scalar)).strip().lower()
        p = self.payload
        if s in ("pems", p.pems.strip().lower()):
            return "pems", None
        if s in ("home", p.home.strip().lower()):
            return "home", None
        num = _number(s)  # "1.0" for a layout that sends "1"
        for mode, enc in (("pems", p.pems), ("home", p.home)):
            e = _number(enc)
            if num is not None and e is not None and num == e:
                return mode, None  # type: ignore[return-value]
        return None, f"not a mode (expected {p.pems!r}/{p.home!r} or pems/home): {_clip(s)!r}"

    def parse_status(self, payload: bytes | str) -> tuple[bool | None, str | None]:
        """The gateway's status: ``True`` for the layout's ``gateway_online`` payload, else ``False``."""
        scalar, problem = self._scalar(payload)
        if problem:
            return None, problem
        return str(scalar).strip().lower() == self.payload.gateway_online.strip().lower(), None

    def payload_time(self, payload: bytes | str) -> float | None:
        """The time a JSON payload says it was measured, as Unix seconds (None: it says none).

        Read from :data:`TIME_KEYS`: ISO 8601 text (UTC unless it has an offset), or Unix seconds
        (milliseconds when larger than 1e11). Never raises.
        """
        text, problem = _payload_text(payload)
        if problem or not text.startswith("{"):
            return None
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError):
            return None
        if not isinstance(obj, dict):
            return None
        for k in TIME_KEYS:
            v = obj.get(k)
            if v is None or isinstance(v, bool):
                continue
            try:
                if isinstance(v, int | float):
                    t = float(v)
                    return t / 1000.0 if t > 1e11 else t
                ts = pd.Timestamp(str(v))
                ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts
                return ts.timestamp()
            except (ValueError, OverflowError, TypeError):
                return None
        return None

    def _scalar(self, payload: bytes | str) -> tuple[Any, str | None]:
        """Decode bytes and unwrap JSON: a scalar, or a problem. Never raises."""
        text, problem = _payload_text(payload)
        if problem:
            return None, problem
        if not text:
            return None, "empty payload"
        if text[0] in "{[\"" or text in ("true", "false", "null"):
            try:
                obj = json.loads(text)
            except (ValueError, RecursionError):
                return None, f"broken JSON: {_clip(text)!r}"
            key = self.payload.json_key
            if isinstance(obj, dict):
                for k in (key, "value"):
                    if k in obj:
                        obj = obj[k]
                        break
                else:
                    return None, f"JSON without a {key!r} key: {_clip(text)!r}"
            if isinstance(obj, dict | list):
                return None, f"JSON value is not a scalar: {_clip(text)!r}"
            return obj, None
        return text, None


def _payload_text(payload: bytes | str) -> tuple[str, str | None]:
    """A payload as stripped text, or ``("", problem)``: over :data:`MAX_PAYLOAD_BYTES` (not read at
    all) or not UTF-8."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return "", f"payload of {len(payload)} bytes (limit {MAX_PAYLOAD_BYTES})"
    if isinstance(payload, bytes | bytearray):
        try:
            return bytes(payload).decode("utf-8").strip(), None
        except UnicodeDecodeError:
            return "", "payload is not UTF-8 text"
    return str(payload).strip(), None


def _number(s: str) -> float | None:
    """A finite or infinite number from text (decimal comma and a °C unit allowed), else None."""
    s = s.strip()
    if s.lower() in ("inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"):
        return float(s)
    m = _NUMBER.match(s)
    if m is None:
        return None
    txt = m.group(1)
    if "," in txt:
        txt = txt.replace(",", ".")
    return float(txt)


def _clip(s: str, n: int = 40) -> str:
    return s if len(s) <= n else s[:n] + "…"


def check_room_name(name: str, key: str, source: str = "layout") -> None:
    """A room's name must be one topic level: not empty, no ``/``, ``+``, ``#``."""
    if not name or any(c in name for c in ("/", "+", "#", "\x00")) or name != name.strip():
        raise InputError(source, key, f"a room name in a topic must be one level without '/', '+', '#' "
                                      f"or surrounding spaces, got {name!r}")


def builtin_layouts() -> tuple[str, ...]:
    """Names of the layouts shipped in ``live/maps/`` (the folder's other files are register maps)."""
    from pems.live.registers import builtin_maps

    folder = Path(str(resources.files("pems.live") / "maps"))
    return tuple(sorted(p.stem for p in folder.glob("*.toml") if p.stem not in builtin_maps()))


def load_layout(spec: str | Path | Layout = "loxberry") -> Layout:
    """A built-in layout by name (``loxberry``), a layout TOML file, or a :class:`Layout` as is.

    Raises
    ------
    InputError
        Unknown name, missing or broken file, or a bad key (file, key and what was expected).
    """
    if isinstance(spec, Layout):
        return spec
    path = builtin_or_file(spec, Path(str(resources.files("pems.live") / "maps")), builtin_layouts(),
                           "layout", "layout")
    return validate(Layout, read_toml(path), path)


@dataclass
class ProblemCounter:
    """Counts unreadable payloads per topic key (thread-safe), keeping the last message of each."""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._last: dict[str, str] = {}

    def add(self, key: str, message: str) -> None:
        with self._lock:
            self._counts[key] += 1
            self._last[key] = message

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def last(self) -> dict[str, str]:
        with self._lock:
            return dict(self._last)


def rooms_of(rooms: Iterable[str] | Mapping[str, Any]) -> tuple[str, ...]:
    """Room ids as a tuple (a mapping gives its keys); duplicates and empty ids are refused."""
    out = tuple(rooms)
    if not out:
        raise ValueError("no rooms")
    if len(set(out)) != len(out):
        raise ValueError(f"duplicate room ids in {out}")
    if any(not isinstance(r, str) or not r for r in out):
        raise ValueError("room ids must be non-empty strings")
    return out
