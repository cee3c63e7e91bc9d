"""``pems emulate`` (a virtual home behind real protocols) and ``pems live`` (the live loop on a real
home, or on an emulated one over real sockets).

Imports stay light here (the parser is built for every ``pems`` command); the emulator and its
dependencies load only when the command runs. A broker that does not answer is a
:class:`~pems.errors.ServiceError` (exit code 3) whichever way the run was started.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

from pems.commands.arguments import CLI, check_controller, output_dir, parse_hostport, positive
from pems.commands.progress import stderr_console
from pems.quiet import command_logging
from pems.errors import InputError

#: What an emulated run writes into its folder.
RUN_FILES = ("trajectory.parquet", "kpis.json", "events.jsonl", "home_events.jsonl", "report.html")


def cmd_emulate(args: argparse.Namespace) -> int:
    """Run the emulated home until ``--hours`` of simulated time or Ctrl-C, then write its truth."""
    from pems.scenarios.spec import load_scenario

    host, port = parse_hostport(args.mqtt)
    _emulator_broker(host, args.allow_remote_broker)
    positive(args.speed, "--speed", upper=1e6)
    positive(args.hours, "--hours")
    if not 0 <= args.modbus_port < 65536:
        raise InputError("command line", "--modbus-port", f"port {args.modbus_port} is outside 0…65535")
    if not 1 <= args.device_id <= 247:
        raise InputError("command line", "--device-id", f"Modbus unit id {args.device_id} is outside 1…247")
    if not 0 <= args.sensor_quantum < 5:
        raise InputError("command line", "--sensor-quantum", "expected a resolution between 0 and 5 K")
    sc = load_scenario(args.scenario)  # validate everything before the heavy imports
    total_h = sc.n_steps * sc.step.total_seconds() / 3600.0
    if args.hours is not None and args.hours > total_h + 1e-9:
        raise InputError("command line", "--hours", f"{args.hours:g} h is longer than the scenario "
                                                    f"{sc.name!r} ({total_h:g} h)")
    out = output_dir(args.out or f"out/emulate-{sc.name}", writes=RUN_FILES, inputs={"scenario": sc.path})
    from pems.live.topics import load_layout
    from pems.live.registers import load_map

    layout, regmap = load_layout(args.layout), load_map(args.regmap)
    from pems.live.clock import SimClock
    from pems.live.emulator import Emulator, write_result
    from pems.live.mqtt import MqttConnectError, credentials_from
    from pems.scenarios.runner import prepare

    creds = credentials_from()
    # Without --epoch the emulator anchors its clock when it starts, after the (seconds-long) set-up:
    # anchored earlier, an accelerated run would begin hours behind its clock.
    clock = SimClock(sc.start, args.speed, epoch=args.epoch) if args.epoch is not None else None
    emu = Emulator(prepare(sc), host, port, modbus_port=args.modbus_port, speed=args.speed, layout=layout,
                   regmap=regmap, clock=clock,
                   hours=args.hours, sensor_quantum_k=args.sensor_quantum, device_id=args.device_id,
                   mqtt_username=creds.username, mqtt_password=creds.password)
    try:
        emu.start()
    except MqttConnectError as exc:
        raise MqttConnectError(f"{CLI}: --mqtt: {exc}") from None
    except RuntimeError as exc:  # the Modbus port is taken
        raise InputError("command line", "--modbus-port", str(exc)) from None
    print(f"emulating {sc.name} ({len(sc.house.rooms)} rooms) at {args.speed:g}× from {sc.start:%Y-%m-%d %H:%M} UTC: "
          f"Loxone on MQTT {host}:{port}, Growatt on Modbus 127.0.0.1:{emu.modbus_port} (unit {args.device_id}); "
          f"clock epoch {emu.clock.epoch:.3f}; Ctrl-C ends", flush=True)
    t0 = time.perf_counter()
    interrupted = False
    try:
        _follow(emu)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        emu.stop()
    if emu.error is not None:
        raise RuntimeError(f"the emulation failed: {emu.error}") from emu.error
    try:
        result = emu.result()
    except RuntimeError as exc:
        print(f"pems: {exc}; nothing written", file=sys.stderr)
        return 130 if interrupted else 1
    write_result(result, out, report=args.report)
    k, s = result.kpis, emu.stats
    print(f"{sc.name} · emulated {s.steps * emu.tick_s / 3600:.1f} h{' (interrupted)' if interrupted else ''}: "
          f"cost {k['cost']:.2f} {result.currency}, discomfort {k['discomfort_Kh']:.1f} K·h, heating "
          f"{k['heating_kWh']:.1f} kWh, import {k['energy_import_kWh']:.1f} kWh; {s.commands} MQTT commands, "
          f"{s.register_writes} Modbus writes received; worst lag {s.max_lag_s:.0f} s "
          f"({time.perf_counter() - t0:.0f} s)")
    print(f"wrote {out}/trajectory.parquet, kpis.json, events.jsonl" + (", report.html" if args.report else ""))
    return 0


def _follow(emu) -> None:
    """Wait for the emulator to end, with a progress bar in simulated hours on a terminal."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    console = stderr_console()
    if console is None:
        while not emu.wait(0.25):
            pass
        return
    total_h = emu.n_ticks * emu.tick_s / 3600.0
    prog = Progress(TextColumn("[bold]emulating[/] {task.fields[now]}"), BarColumn(),
                    TextColumn("{task.completed:.1f}/{task.total:.1f} h"), TextColumn("{task.fields[io]}"),
                    TimeRemainingColumn(), console=console, transient=True)
    task = prog.add_task("", total=total_h, now="", io="")
    with prog:
        while not emu.wait(0.25):
            s, t = emu.stats, emu.time
            prog.update(task, completed=s.steps * emu.tick_s / 3600.0,
                        now=f"{t:%Y-%m-%d %H:%M} UTC" if t is not None else "",
                        io=f"{s.commands} cmd, {s.register_writes} writes")


def _emulator_broker(host: str, allowed: bool) -> None:
    """An emulated home publishes retained room temperatures and the LoxBerry gateway's status topic:
    on a real home's broker they would mislead its Miniserver and loop. Loopback only, unless told."""
    from pems.live.mqtt import is_loopback

    if not allowed and not is_loopback(host):
        raise InputError("command line", "--mqtt", f"{host} is not this machine: an emulated home would publish fake "
                                                   "temperatures and gateway status to a broker a real home may use; "
                                                   "use a broker on 127.0.0.1, or pass --allow-remote-broker")


def add_emulate_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``pems emulate`` to the ``pems`` subcommands."""
    e = sub.add_parser("emulate", help="a virtual home behind real protocols (Loxone MQTT, Growatt Modbus)",
                       description="Run a scenario's twin in real or accelerated time, publishing Loxone topics to "
                                   "an MQTT broker and serving the Growatt registers over Modbus TCP on 127.0.0.1, "
                                   "until --hours of simulated time or Ctrl-C; then write the emulated home's "
                                   "truth (trajectory.parquet, kpis.json, events.jsonl). Broker credentials come "
                                   "from PEMS_MQTT_USERNAME / PEMS_MQTT_PASSWORD.")
    e.add_argument("scenario", help="built-in scenario name or path to a scenario TOML file")
    e.add_argument("--mqtt", required=True, metavar="HOST:PORT", help="the MQTT broker")
    e.add_argument("--modbus-port", type=int, default=5020, help="Modbus TCP port on 127.0.0.1 (default 5020; 0: any free)")
    e.add_argument("--device-id", type=int, default=1, help="Modbus unit id (default 1)")
    e.add_argument("--speed", type=float, default=60.0, help="simulated seconds per wall second (default 60)")
    e.add_argument("--hours", type=float, help="simulated hours to run (default: the whole scenario)")
    e.add_argument("--epoch", type=float, help="Unix time at which simulated time is the scenario start "
                                               "(default: now); a loop in another process given the same "
                                               "value shares the clock")
    e.add_argument("--layout", default="loxberry", help="MQTT topic layout: built-in name or TOML file")
    e.add_argument("--regmap", default="growatt-sph", help="Growatt register map: built-in name or TOML file")
    e.add_argument("--sensor-quantum", type=float, default=0.1, help="published temperature resolution [K] (default 0.1)")
    e.add_argument("--allow-remote-broker", action="store_true",
                   help="publish the emulated home to a broker that is not on this machine (a real home's broker "
                        "would get fake temperatures and the gateway's status topic)")
    e.add_argument("--out", help="output folder (default: out/emulate-SCENARIO)")
    e.add_argument("--report", action="store_true", help="also write report.html")
    e.set_defaults(func=cmd_emulate)
    return e


def cmd_live(args: argparse.Namespace) -> int:
    """``pems live --emulate SCENARIO``: the emulated home and the live loop over real sockets."""
    if args.config is not None:
        if args.emulate is not None:
            raise InputError(CLI, "--emulate", "give --config FILE (a real home) or --emulate SCENARIO "
                                               "(an emulated one), not both")
        for key, value, what in (
                ("--mqtt", args.mqtt, "the configuration file names the broker in its [mqtt] table"),
                ("--speed", args.speed, "a real home runs in real time (the configuration file has no speed)"),
                ("--controller", args.controller, "the configuration file names it (controller)"),
                ("--influx", args.influx, "the configuration file sets the log in its [influx] table"),
                ("--out", args.out, "the configuration file says where the log goes (events, state_dir)")):
            if value is not None:  # the file says all of this for a home; a flag beside it would be ignored
                raise InputError(CLI, key, f"only for --emulate runs; with --config {what}")
        return cmd_live_config(args)
    if args.emulate is None:
        raise InputError("command line", "--emulate", "give --emulate SCENARIO (or --config FILE)")
    if args.mqtt is None:
        raise InputError("command line", "--mqtt", "the broker HOST:PORT is required with --emulate")
    from pems.scenarios.spec import load_scenario

    host, port = parse_hostport(args.mqtt)
    _emulator_broker(host, args.allow_remote_broker)
    controller = args.controller or "mpc"
    speed = 60.0 if args.speed is None else args.speed
    positive(speed, "--speed", upper=1e5)
    positive(args.hours, "--hours")
    sc = load_scenario(args.emulate)
    total_h = sc.n_steps * sc.step.total_seconds() / 3600.0
    if args.hours is not None and args.hours > total_h + 1e-9:
        raise InputError("command line", "--hours", f"{args.hours:g} h is longer than the scenario "
                                                    f"{sc.name!r} ({total_h:g} h)")
    # learning controllers need the home's history: only scenarios with a [truth] section have one
    check_controller(controller, CLI, "--controller", live=True, learning=sc.spec.truth is not None)
    if args.influx is not None:
        from pems.calibration.influx import InfluxSource

        InfluxSource.parse(args.influx, CLI, "--influx")
        if args.dry_run:  # a dry run writes nothing, anywhere
            print("pems: warning: --dry-run: the InfluxDB log (--influx) is not written", file=sys.stderr)
            args.influx = None
    out = output_dir(args.out or "out/live", writes=RUN_FILES, inputs={"--emulate": sc.path})
    out.mkdir(parents=True, exist_ok=True)
    from pems.live.emulator import write_result
    from pems.live.emulated_run import EmulatedRun
    from pems.live.mqtt import MqttConnectError, credentials_from
    from pems.scenarios.runner import prepare

    creds = credentials_from()
    influx = None
    if args.influx is not None:
        from pems.live.influx_log import InfluxLog

        influx = InfluxLog(args.influx, "loxone-growatt", spool_dir=out / "spool", house=sc.house, url_source=CLI,
                           url_key="--influx")
    events = out / "events.jsonl"
    if events.exists():  # a new run: the old log is kept beside, never overwritten
        events.rename(out / f"events-{int(time.time())}.jsonl")
    loop_log = out / ".loop-events.jsonl"  # becomes events.jsonl once the emulator's files are written
    t0 = time.perf_counter()
    try:
        run = EmulatedRun(prepare(sc), host, port, speed=speed, hours=args.hours, controller=controller,
                          events_path=loop_log, state_dir=out / "state", dry_run=args.dry_run,
                          mqtt_username=creds.username, mqtt_password=creds.password, influx=influx)
        learned = getattr(run.controller, "learn_s", None)
        if learned is not None:
            days = sc.spec.truth.train_days if sc.spec.truth is not None else "?"
            print(f"{controller}: learned the residual corrector from the home's {days} days of history "
                  f"({learned:.1f} s)", flush=True)
        print(f"live {controller} on the emulated {sc.name} ({len(sc.house.rooms)} rooms) at {speed:g}×, "
              f"MQTT {host}:{port}{' — dry run: nothing is written' if args.dry_run else ''}", flush=True)
        try:
            run.start()
        except MqttConnectError as exc:
            raise MqttConnectError(f"{CLI}: --mqtt: {exc}") from None
    except BaseException:
        _close_log(influx)
        raise
    web = _start_web(run.loop, "127.0.0.1", args.web, f"PEMS live · emulated {sc.name}") if args.web else None
    try:
        _follow(run.emu)
    except KeyboardInterrupt:
        print("pems: interrupted; handing the home back and writing what ran", file=sys.stderr)
    try:
        result = run.finish()
    finally:
        _close_log(influx)
        if web is not None:
            web.stop()
    write_result(result, out)
    # events.jsonl is the loop's log (every command sent or refused, every fallback and its reason);
    # what the emulated home received is kept beside it as home_events.jsonl.
    if events.exists():
        events.replace(out / "home_events.jsonl")
    loop_log.replace(events)
    k = result.kpis
    print(f"{sc.name} · live {controller}: cost {k['cost']:.2f} {result.currency}, discomfort "
          f"{k['discomfort_Kh']:.2f} K·h, heating {k['heating_kWh']:.1f} kWh, import {k['energy_import_kWh']:.1f} kWh "
          f"({time.perf_counter() - t0:.0f} s)")
    print(f"wrote {out}/trajectory.parquet, kpis.json (the emulated home's truth), events.jsonl (the loop's log) "
          "and home_events.jsonl (what the home received)")
    return 0


def _start_web(loop, host: str, port: int, title: str, credentials_file: Path | None = None):
    """The live page of ``loop`` on ``host:port`` in a thread (a port in use is bad input, exit 2);
    overrides need the page's credentials (``PEMS_WEB_USERNAME``/``PEMS_WEB_PASSWORD`` or the file)."""
    from pems.live.mqtt import credentials_from
    from pems.web.live_app import Server, live_app

    if not 0 < port < 65536:
        raise InputError(CLI, "--web", f"{port}: expected a port 1–65535")
    creds = credentials_from("PEMS_WEB_", credentials_file)
    password = creds.password
    pair = (creds.username, password) if creds.username and password else None
    try:
        server = Server(live_app(loop.view, title, loop.overrides, pair, loop.clock.now), host, port).start()
    except OSError as exc:
        raise InputError(CLI, "--web", f"{host}:{port}: {exc}") from None
    print(f"live page: {server.url}" + ("" if pair else " (overrides off: set PEMS_WEB_USERNAME and PEMS_WEB_PASSWORD)"),
          flush=True)
    return server


def _close_log(influx) -> None:
    """Close the InfluxDB log; say what stays spooled (it is sent when a log on that spool runs again)."""
    if influx is None:
        return
    # while InfluxDB is down there is nothing to wait for: the spool keeps it all
    if influx.close(5.0 if influx.status().connected else 0.5):
        return
    try:
        st = influx.status()
        left, why = st.pending_lines, st.last_error
    except Exception:  # noqa: BLE001 - only for the message
        left, why = "some", "not sent in time"
    print(f"pems: InfluxDB log: {left} lines kept in {influx.spool_dir} ({why}); they are sent when a log "
          "on that spool next runs", file=sys.stderr)


def cmd_live_config(args: argparse.Namespace) -> int:
    """``pems live --config FILE``: run a home until Ctrl-C / SIGTERM (or ``--hours`` of its clock)."""
    import logging
    import signal

    from pems.live.config import load_live_config, open_live

    positive(args.hours, "--hours")
    cfg = load_live_config(args.config)
    s = cfg.spec
    from pems.live.mqtt import MqttConnectError
    from pems.live.state import StateLocked

    command_logging(logging.INFO, "%(asctime)s %(levelname)s %(name)s: %(message)s")  # a home's log
    logging.getLogger("pems.live.paho").setLevel(logging.WARNING)
    try:
        loop = open_live(cfg, dry_run=args.dry_run)
    except MqttConnectError as exc:
        raise MqttConnectError(f"{cfg.path}: mqtt: {exc}") from None
    where = [f"Loxone on MQTT {s.mqtt.host}:{s.mqtt.port}{' (TLS)' if s.mqtt.tls else ''}"
             f"{' with credentials' if loop.bus.username else ''}"]
    if s.modbus is not None:
        where.append(f"Growatt on Modbus {s.modbus.host}:{s.modbus.port} (unit {s.modbus.device_id}, {s.modbus.map})")
    if loop.influx is not None:
        where.append(f"log to {loop.influx.source.safe_url}")
    print(f"live {s.controller} on {cfg.house.name} ({len(cfg.house.rooms)} rooms), step {s.step_minutes} min: "
          f"{'; '.join(where)}{' — dry run: nothing is written' if args.dry_run else ''}", flush=True)
    n_steps = None if args.hours is None else max(1, math.ceil(args.hours * 60 / s.step_minutes))
    stop_signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.getsignal(sig) for sig in stop_signals}

    def _stop(signum: int, frame: object) -> None:  # ends after the current tick, then hands back
        # os.write: print() inside a signal handler can collide with a print it interrupted
        os.write(2, f"pems: {signal.Signals(signum).name}: handing the home back\n".encode())
        loop.stop()

    for sig in stop_signals:
        signal.signal(sig, _stop)
    web = None
    if args.web or s.web is not None:
        try:
            web = _start_web(loop, s.web.host if s.web else "127.0.0.1", args.web or s.web.port,
                             f"PEMS live · {cfg.house.name}",
                             cfg.resolve(s.web.credentials_file) if s.web and s.web.credentials_file else None)
        except BaseException:
            loop.close(handback=False)  # nothing was commanded yet: it never held the home
            raise
    try:
        steps = loop.run(n_steps=n_steps)
    except StateLocked as exc:
        raise InputError(cfg.path, "state_dir", str(exc)) from None
    except MqttConnectError as exc:
        raise MqttConnectError(f"{cfg.path}: mqtt: {exc}") from None
    finally:
        # the handlers stay until the home is handed back: a second Ctrl-C must not cut that short
        try:
            loop.close(handback=True)
            _close_log(loop.influx)
            if web is not None:
                web.stop()
        finally:
            for sig, h in previous.items():
                signal.signal(sig, h)
    back = loop.handed_back
    failed = {dev: what for dev, what in back.items() if what.startswith("not sent")}
    if failed:
        print(f"ran {steps} control steps ({loop.overruns} late); hand-back NOT confirmed: "
              + "; ".join(f"{dev}: {what}" for dev, what in failed.items())
              + f" (check the home); log: {loop.events.path}", file=sys.stderr)
        return 3
    print(f"ran {steps} control steps ({loop.overruns} late); the home runs itself again "
          f"({', '.join(f'{dev} {what}' for dev, what in back.items())}); log: {loop.events.path}")
    return 0


def add_live_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``pems live``."""
    lv = sub.add_parser("live", help="run the controller live: a real home (--config) or an emulated one (--emulate)",
                        description="Every control step: read the home, estimate, forecast, solve, write; "
                                    "a watchdog hands control back to the home's own logic on any fault.")
    lv.add_argument("--config", type=Path, help="a home's live configuration (TOML; see docs/live-example.toml)")
    lv.add_argument("--emulate", metavar="SCENARIO", help="run against the scenario's emulated home")
    lv.add_argument("--mqtt", metavar="HOST:PORT", help="the MQTT broker")
    lv.add_argument("--hours", type=float, help="hours to run (--emulate: simulated, default the whole scenario; "
                                                "--config: default until Ctrl-C/SIGTERM)")
    lv.add_argument("--speed", type=float, help="--emulate: simulated seconds per wall second (default 60)")
    lv.add_argument("--controller", help="--emulate: controller (default mpc; the oracle cannot run live)")
    lv.add_argument("--influx", metavar="URL", help="--emulate: also log to InfluxDB (influx://HOST:PORT[/DATABASE] "
                                                    "or influx2://HOST:PORT?org=ORG, the mapping naming the "
                                                    "buckets), spooled in DIR/spool")
    lv.add_argument("--dry-run", action="store_true", help="compute and log everything, write nothing")
    lv.add_argument("--allow-remote-broker", action="store_true",
                    help="--emulate: publish the emulated home to a broker that is not on this machine")
    lv.add_argument("--out", help="--emulate: output folder (default out/live)")
    lv.add_argument("--web", type=int, metavar="PORT",
                    help="the live page on http://127.0.0.1:PORT/ (--config: or its [web] table)")
    lv.set_defaults(func=cmd_live)
    return lv


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``emulate`` and ``live`` to the ``pems`` sub-commands."""
    add_emulate_parser(sub)
    add_live_parser(sub)
