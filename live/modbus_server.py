"""A Growatt on 127.0.0.1: a real pymodbus TCP server serving a register map from a state we set.

:class:`GrowattServer` is what the emulator puts behind the Modbus protocol (and what the adapter's
tests talk to): a pymodbus server in a background thread with its own event loop, serving the input
and holding registers of a map. The emulator writes the measurements (:meth:`set_measurements`),
reads back the holding registers the loop wrote (:meth:`holding`) to run
:class:`~pems.live.inverter_sim.InverterLogic`, and every holding-register write a client sends is
recorded (:attr:`writes`) — how the tests see that a dry run sends nothing and a refused write never
reached the socket.

It can be stopped and started again on the same port (fault tests kill it mid-run): the registers
survive a restart, as a real inverter keeps its settings while its datalogger reboots. Stopping
drops every client connection.

Uses pymodbus's device model (``SimDevice``/``SimData``, the non-deprecated API of 3.16) with an
``action`` hook that sees every request; only function codes 06 and 16 are client writes (our own
updates go in as 03/04, so they are not recorded).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import pandas as pd
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from pems.live.devices import InverterReadings
from pems.live.registers import RegisterMap, Table, load_map

log = logging.getLogger(__name__)

#: Modbus function codes that write holding registers (single, multiple).
WRITE_CODES = (6, 16)
_FC_READ = {"input": 4, "holding": 3}  # how we put values into the server ourselves


@dataclass(frozen=True)
class ServerWrite:
    """One holding-register write a client sent."""

    time: pd.Timestamp  # when the server received it (UTC)
    function_code: int  # 6 (single) or 16 (multiple)
    address: int  # first register
    values: tuple[int, ...]  # raw words


def _blocks(regmap: RegisterMap, table: Table) -> list[tuple[int, int]]:
    """Contiguous address ranges served for ``table``: each 125-register Growatt range the map uses,
    from its first to its last register (registers between them read as 0, as on a real inverter)."""
    out: dict[int, tuple[int, int]] = {}
    for r in regmap.table(table):
        k = r.address // 125
        lo, hi = out.get(k, (r.address, r.address + r.words))
        out[k] = (min(lo, r.address), max(hi, r.address + r.words))
    return [out[k] for k in sorted(out)]


class GrowattServer:
    """A pymodbus TCP server on 127.0.0.1 serving a Growatt register map.

    Parameters
    ----------
    regmap
        Built-in map name, map file, or loaded map.
    port
        TCP port (0: pick a free one now, kept across restarts).
    device_id
        Modbus unit id the server answers as.
    host
        Bind address: loopback only, unless you know why not.
    holding
        Initial holding registers by name [engineering units]; the rest start at the map's
        ``default`` (the factory settings), else 0.
    """

    def __init__(self, regmap: str | Path | RegisterMap = "growatt-sph", port: int = 0, device_id: int = 1,
                 host: str = "127.0.0.1", holding: Mapping[str, float] | None = None) -> None:
        self.regmap = load_map(regmap)
        self.host = host
        self.port = int(port) or _free_port(host)
        self.device_id = int(device_id)
        self._lock = threading.Lock()
        # The registers live here (address → raw word) so they survive restarts; the running server
        # holds a copy that we keep in step.
        self._words: dict[Table, dict[int, int]] = {"input": {}, "holding": {}}
        self._writes: list[ServerWrite] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: ModbusTcpServer | None = None
        self._stop: asyncio.Event | None = None
        for table in ("input", "holding"):
            for lo, hi in _blocks(self.regmap, table):
                self._words[table].update(dict.fromkeys(range(lo, hi), 0))
        for r in self.regmap.table("holding"):
            if r.default is not None:
                self._put("holding", r.address, r.encode(r.default))
        if holding:
            self.set_holding(holding)

    # ------------------------------------------------------------------ lifecycle
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 5.0) -> GrowattServer:
        """Start serving in a background thread; returns when the port accepts connections."""
        if self.running:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(self._serve(ready))
            except BaseException as exc:  # noqa: BLE001 - reported to start()
                failure.append(exc)
                ready.set()

        self._thread = threading.Thread(target=run, name=f"growatt-server-{self.port}", daemon=True)
        self._thread.start()
        if not ready.wait(timeout) or failure:
            self.stop()
            raise RuntimeError(f"Modbus server did not start on {self.host}:{self.port}: "
                               f"{failure[0] if failure else 'timeout'}")
        return self

    async def _serve(self, ready: threading.Event) -> None:
        simdata: dict[Table, list[SimData]] = {}
        with self._lock:
            for table in ("input", "holding"):
                simdata[table] = [SimData(lo, values=[self._words[table][a] for a in range(lo, hi)],
                                          datatype=DataType.REGISTERS)
                                  for lo, hi in _blocks(self.regmap, table)]
        # pymodbus needs every table; a Growatt has no coils or discrete inputs worth serving
        bits = [SimData(0, count=16, values=False, datatype=DataType.BITS)]
        device = SimDevice(id=self.device_id, simdata=(bits, list(bits), simdata["holding"], simdata["input"]),
                           action=self._action)
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._server = ModbusTcpServer(device, address=(self.host, self.port))
        await self._server.serve_forever(background=True)
        ready.set()
        try:
            await self._stop.wait()
        finally:
            await self._server.shutdown()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and drop every client connection (the registers are kept)."""
        loop, stop, thread = self._loop, self._stop, self._thread
        if loop is not None and stop is not None and loop.is_running():
            loop.call_soon_threadsafe(stop.set)
        if thread is not None:
            thread.join(timeout)
        self._thread = self._loop = self._server = self._stop = None

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self.start()

    def __enter__(self) -> GrowattServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ the server's hook
    async def _action(self, function_code: int, start_address: int, address: int, count: int,
                      registers: list[int], set_values: list[int] | list[bool] | None) -> ExcCodes | None:
        """Called by pymodbus for every request: record client writes, keep our copy in step."""
        if set_values is None:
            return None
        words = [int(v) for v in set_values]
        table: Table = "input" if function_code == 4 else "holding"
        with self._lock:
            for i, w in enumerate(words):
                self._words[table][address + i] = w
            if function_code in WRITE_CODES:
                self._writes.append(ServerWrite(pd.Timestamp.now(tz="UTC"), function_code, address, tuple(words)))
        return None

    # ------------------------------------------------------------------ state
    def _put(self, table: Table, address: int, words: list[int]) -> None:
        """Set raw words in our copy and, when serving, in the running server."""
        with self._lock:
            for i, w in enumerate(words):
                if address + i not in self._words[table]:
                    raise KeyError(f"{table} register {address + i} is not served")
                self._words[table][address + i] = w
        loop, server = self._loop, self._server
        if loop is not None and server is not None and loop.is_running():
            fut = asyncio.run_coroutine_threadsafe(
                server.async_setValues(self.device_id, _FC_READ[table], address, words), loop)
            fut.result(timeout=5.0)

    def _set(self, table: Table, values: Mapping[str, float]) -> None:
        for name, value in values.items():
            reg = self.regmap[name]
            if reg.table != table:
                raise KeyError(f"{name} is a {reg.table} register, not {table}")
            v = float(value)
            if v != v:  # nan: a real inverter never reports one; 0 is what a blank register reads
                v = 0.0
            raw = min(reg.raw_max, max(reg.raw_min, round(v / reg.scale)))  # clip to what the register holds
            self._put(table, reg.address, reg.encode(raw * reg.scale))

    def set_measurements(self, readings: InverterReadings | Mapping[str, float] | None = None, /,
                         **values: float) -> None:
        """Update the input registers [engineering units: W, SOC 0–1, …].

        ``readings`` may be an ``InverterReadings`` (its measurement fields are used) or a mapping of
        input-register names; keyword arguments add to or override it. Values are clipped to what
        the register can hold (a negative power in an unsigned register reads 0).
        """
        merged: dict[str, float] = {}
        if isinstance(readings, InverterReadings):
            merged.update({f.name: getattr(readings, f.name) for f in fields(readings)
                           if f.name in self.regmap and self.regmap[f.name].table == "input"})
        elif readings is not None:
            merged.update(readings)
        merged.update(values)
        self._set("input", merged)

    def set_holding(self, values: Mapping[str, float] | None = None, /, **kw: float) -> None:
        """Set holding registers by name [engineering units] as the inverter's own panel would
        (not recorded as a client write)."""
        self._set("holding", {**(values or {}), **kw})

    def holding(self) -> dict[str, float]:
        """The holding registers of the map by name [engineering units] (for ``InverterLogic``)."""
        with self._lock:
            words = dict(self._words["holding"])
        return {r.name: r.decode([words[r.address + i] for i in range(r.words)]) for r in self.regmap.table("holding")}

    def inputs(self) -> dict[str, float]:
        """The input registers of the map by name [engineering units]."""
        with self._lock:
            words = dict(self._words["input"])
        return {r.name: r.decode([words[r.address + i] for i in range(r.words)]) for r in self.regmap.table("input")}

    def holding_words(self) -> dict[int, int]:
        """Raw holding registers by address."""
        with self._lock:
            return dict(self._words["holding"])

    @property
    def writes(self) -> list[ServerWrite]:
        """Every holding-register write clients sent, oldest first."""
        with self._lock:
            return list(self._writes)

    def written_registers(self) -> dict[str, list[float]]:
        """The writes by register name → values written in order [engineering units]."""
        by_addr = {a: r for r in self.regmap.table("holding") for a in range(r.address, r.address + r.words)}
        out: dict[str, list[float]] = {}
        for w in self.writes:
            i = 0
            while i < len(w.values):
                reg = by_addr.get(w.address + i)
                if reg is None or reg.address != w.address + i:
                    name, n, val = f"holding_{w.address + i}", 1, float(w.values[i])
                else:
                    n = reg.words
                    name, val = reg.name, reg.decode(list(w.values[i:i + n]))
                out.setdefault(name, []).append(val)
                i += n
        return out

    def clear_writes(self) -> None:
        with self._lock:
            self._writes.clear()


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
