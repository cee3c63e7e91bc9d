"""Installed as a service: the systemd unit (checked by systemd's own ``systemd-analyze verify``),
its notifications (``READY``, a watchdog ping every inner tick, ``STOPPING``) on a real datagram
socket, and the container image (built only where a container engine runs)."""

from __future__ import annotations

import configparser
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pems.live.sdnotify import Notifier

ROOT = Path(__file__).parents[2]
UNIT = ROOT / "deploy" / "pems.service"


def _unit() -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#", ";"))
    cp.optionxform = str  # systemd's keys are case-sensitive
    cp.read(UNIT, encoding="utf-8")
    return cp


def test_the_unit_asks_for_what_a_home_needs():
    s = _unit()["Service"]
    assert s["Type"] == "notify" and s["WatchdogSec"] and s["User"] == "pems"
    assert (s["StateDirectory"], s["CacheDirectory"], s["LogsDirectory"]) == ("pems", "pems", "pems")
    assert s["Restart"] == "on-failure" and s["RestartPreventExitStatus"] == "2"  # a bad config does not loop
    assert s["ProtectSystem"] == "strict" and s["ProtectHome"] == "true" and s["NoNewPrivileges"] == "true"
    assert s["KillSignal"] == "SIGTERM" and "live --config" in s["ExecStart"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (Debian: systemd)")
def test_the_unit_passes_systemd_analyze_verify(tmp_path):
    """systemd's own check: every key known in its section, the command there, the unit loadable.
    (It exits 0 on unknown keys, so nothing at all may be said.)"""
    pems = Path(sys.executable).with_name("pems")
    unit = tmp_path / "pems.service"
    unit.write_text(UNIT.read_text().replace("/opt/pems/bin/pems", str(pems)))
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr
    # and it would have caught a mistake
    unit.write_text(unit.read_text().replace("WatchdogSec=", "WatchdogSecs="))
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                       timeout=60)
    assert "WatchdogSecs" in r.stderr


def _listen(tmp_path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(tmp_path / "notify.sock"))
    s.settimeout(0.2)
    return s


def _received(s: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out += s.recv(4096).decode().splitlines()
        except (TimeoutError, socket.timeout):
            return out


def test_the_notifier_speaks_systemds_protocol(tmp_path, monkeypatch):
    with _listen(tmp_path) as s:
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
        monkeypatch.setenv("WATCHDOG_USEC", "600000000")
        n = Notifier()
        assert n.enabled and n.watchdog_s == 600.0
        assert n.ready("connected") and n.alive() and n.stopping("handing the home back")
        assert _received(s) == ["READY=1", "STATUS=connected", "WATCHDOG=1", "STOPPING=1",
                                "STATUS=handing the home back"]
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # systemd watches another process
    assert Notifier().watchdog_s is None
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not Notifier().enabled and Notifier().ready() is False  # not under systemd: nothing


def test_a_reader_that_does_not_read_never_holds_the_loop(tmp_path):
    """A full socket (its reader stalled): the ping is dropped at once, not waited for."""
    import time

    with _listen(tmp_path) as s:
        n = Notifier(str(tmp_path / "notify.sock"))
        t0 = time.monotonic()
        sent = [n.alive() for _ in range(5000)]
        assert time.monotonic() - t0 < 5.0 and not all(sent) and sent[0]
        assert _received(s)[0] == "WATCHDOG=1"


@pytest.mark.service
def test_the_loop_says_ready_pings_every_tick_and_says_stopping(tmp_path, monkeypatch):
    """The live loop on the emulated home with systemd's socket: READY once connected, a watchdog
    ping from its own thread at every inner tick, STOPPING before the hand-back."""
    sys.path.insert(0, str(ROOT / "tests" / "live"))
    from helpers import BATTERY_HOUSE, FAST, write_scenario
    from services import mosquitto

    from pems.live.emulated_run import EmulatedRun
    from pems.scenarios.runner import prepare
    from pems.scenarios.spec import load_scenario

    prep = prepare(load_scenario(write_scenario(tmp_path, BATTERY_HOUSE, weather="greensboro-tmy3", load="h25",
                                                prices="two-rate")))
    import threading

    said: list[str] = []
    with _listen(tmp_path) as s, mosquitto(tmp_path) as broker:
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
        done = threading.Event()

        def read() -> None:  # systemd's side: read as they come
            while not done.is_set():
                said.extend(_received(s))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        run = EmulatedRun(prep, broker.host, broker.port, speed=600.0, hours=1.0, events_path=tmp_path / "ev.jsonl",
                          mqtt_options=FAST)
        run.start()
        run.finish()
        done.set()
        reader.join(2)
        said.extend(_received(s))
    assert said[0] == "READY=1" and "STOPPING=1" in said
    ticks = said.count("WATCHDOG=1")
    assert ticks >= 50, said[:10]  # an hour of one-minute ticks
    assert said.index("STOPPING=1") > len(said) - 4  # last: after every ping


def _engine() -> str | None:
    for exe in ("docker", "podman"):
        if shutil.which(exe) and subprocess.run([exe, "info"], capture_output=True, timeout=30).returncode == 0:
            return exe
    return None


@pytest.mark.slow
@pytest.mark.skipif(_engine() is None, reason="no container engine runs here (docker or podman: `docker info` fails)")
def test_the_image_builds_and_runs_pems(tmp_path):
    exe = _engine()
    tag = "pems-test:latest"
    subprocess.run([exe, "build", "-t", tag, "-f", str(ROOT / "deploy" / "Containerfile"), str(ROOT)], check=True,
                   timeout=3600)
    out = subprocess.run([exe, "run", "--rm", tag, "--version"], capture_output=True, text=True, check=True,
                         timeout=300).stdout
    assert out.startswith("pems ") and "casadi" in out and "ipopt" in out


def test_the_image_copies_every_package_the_project_installs(tmp_path):
    """No engine needed: the Containerfile's sources (its COPY lines) build the same wheel, with the
    same files, as the project's folder does."""
    import re
    import tomllib
    import zipfile

    text = (ROOT / "deploy" / "Containerfile").read_text()
    copied = [w for line in re.findall(r"^COPY (.+)$", text, re.M) for w in line.split()[:-1]]
    dirs = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values())
    assert dirs <= set(copied)
    src = tmp_path / "src"
    src.mkdir()
    for name in copied:
        p = ROOT / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(p, src / name)

    def wheel_files(folder: Path, out: Path) -> set[str]:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(out), str(folder)], check=True, capture_output=True, timeout=600)
        (whl,) = out.glob("pems-*.whl")
        return {n for n in zipfile.ZipFile(whl).namelist() if ".dist-info/" not in n}

    # the project as a clean clone has it (a build in the work tree would reuse its stale build/ folder)
    project = tmp_path / "project"
    tracked = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (ROOT / name).is_file():
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, project / name)
    assert wheel_files(src, tmp_path / "image") == wheel_files(project, tmp_path / "project-dist")
