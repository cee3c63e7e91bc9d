"""Real servers for service-backed tests: InfluxDB 1.x and VictoriaMetrics on 127.0.0.1.

Each server runs from its Debian package's binary, without systemd, in its own temporary data
directory, on a free port, and is stopped by the PID we started. Tests skip with the reason when a
binary is missing (``make test`` installs them).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, ok=(200, 204), timeout: float = 30.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            if requests.get(url, timeout=1).status_code in ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server not ready at {url} after {timeout} s")


@contextmanager
def influxdb1(folder: Path):
    """``influxd`` (1.x) on a free port; yields its base URL (http://127.0.0.1:PORT)."""
    exe = shutil.which("influxd")
    if exe is None:
        pytest.skip("influxd (Debian package influxdb) not installed; `make test` installs it")
    port, rpc = free_port(), free_port()
    conf = folder / "influxdb.conf"
    conf.write_text(f"""reporting-disabled = true
bind-address = "127.0.0.1:{rpc}"
[meta]
  dir = "{folder}/meta"
[data]
  dir = "{folder}/data"
  wal-dir = "{folder}/wal"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:{port}"
  log-enabled = false
  max-body-size = 0
[logging]
  level = "error"
""")
    log = open(folder / "influxd.log", "w")
    proc = subprocess.Popen([exe, "run", "-config", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait(f"http://127.0.0.1:{port}/ping", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@contextmanager
def victoria_metrics(folder: Path):
    """VictoriaMetrics on a free port (accepts InfluxDB v2 writes); yields its base URL."""
    exe = shutil.which("victoria-metrics")
    if exe is None:
        pytest.skip("victoria-metrics (Debian package) not installed; `make test` installs it")
    port = free_port()
    log = open(folder / "vm.log", "w")
    proc = subprocess.Popen([exe, f"-httpListenAddr=127.0.0.1:{port}", f"-storageDataPath={folder}/vm",
                             "-loggerLevel=ERROR", "-search.latencyOffset=0s", "-retentionPeriod=100y"],
                            stdout=log, stderr=subprocess.STDOUT)  # default retention (1 month) drops old data
    try:
        _wait(f"http://127.0.0.1:{port}/health", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
