"""Real servers for service-backed tests: InfluxDB 1.x, VictoriaMetrics and mosquitto on 127.0.0.1.

Each server runs from its Debian package's binary, without systemd, in its own temporary data
directory, on a free port, and is stopped by the PID we started. Tests skip with the reason when a
binary is missing (``make test`` installs them).
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
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
    with influxdb1_restartable(folder) as server:
        yield server.url


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


# ---------------------------------------------------------------------------------------------
# mosquitto (MQTT broker)
# ---------------------------------------------------------------------------------------------
def _mosquitto_exe() -> str | None:
    # /usr/sbin is not on every user's PATH
    return shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if os.access(p, os.X_OK)), None)


def _reachable_by_others(path: Path) -> bool:
    """Whether a user other than us can reach ``path`` (every ancestor has the x bit for others)."""
    for p in [path, *path.parents]:
        if not p.stat().st_mode & stat.S_IXOTH:
            return False
    return True


def make_tls_files(folder: Path, host: str = "127.0.0.1") -> dict[str, Path]:
    """A throw-away CA and a broker certificate for ``host`` (IP and DNS SAN), made with openssl.

    Returns ``{"ca_file", "cert_file", "key_file"}``; skips the test when openssl is missing.
    """
    exe = shutil.which("openssl")
    if exe is None:
        pytest.skip("openssl not installed")
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (folder / n for n in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt"))
    ext = folder / "san.ext"
    ext.write_text(f"subjectAltName=IP:{host},DNS:localhost\nbasicConstraints=CA:FALSE\n")

    def run(*args: str) -> None:
        subprocess.run([exe, *args], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
        "-days", "2", "-subj", "/CN=pems-test-ca")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={host}")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(cert), "-days", "2", "-extfile", str(ext))
    return {"ca_file": ca, "cert_file": cert, "key_file": key}


@dataclass
class Mosquitto:
    """A running mosquitto on 127.0.0.1 that a test may stop and start again on the same port."""

    exe: str
    folder: Path
    port: int
    conf: Path
    log: Path
    ca_file: Path | None = None
    host: str = "127.0.0.1"
    proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker (again) and wait until it answers an MQTT CONNECT."""
        if self.proc is not None and self.proc.poll() is None:
            return
        with open(self.log, "a") as out:
            self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=out, stderr=subprocess.STDOUT)
        _wait_mqtt(self, timeout)

    def stop(self, kill: bool = False) -> None:
        """Stop the broker we started (by its PID); clients see the connection drop. ``kill``: with
        SIGKILL (a power cut: no last will is delivered to anyone), else SIGTERM (mosquitto then
        publishes its clients' wills as it goes)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        if kill:
            proc.kill()
            proc.wait(timeout=10)
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _wait_mqtt(broker: Mosquitto, timeout: float) -> None:
    """Readiness by a test connect: any CONNACK (even 'not authorised') proves the broker listens."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if broker.proc is None or broker.proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited with code {broker.proc and broker.proc.returncode}; "
                               f"log: {broker.log.read_text()[-2000:] if broker.log.exists() else '(none)'}")
        answered = []
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ready-{os.getpid()}")
        client.on_connect = lambda c, u, f, rc, p: answered.append(rc)
        if broker.ca_file is not None:
            client.tls_set(ca_certs=str(broker.ca_file))
        try:
            client.connect(broker.host, broker.port, keepalive=5)
            t1 = time.monotonic()
            while not answered and time.monotonic() - t1 < 2:
                client.loop(timeout=0.05)
            if answered:
                return
        except OSError:
            pass
        finally:
            try:
                client.disconnect()
            except Exception:
                pass
        time.sleep(0.05)
    raise RuntimeError(f"mosquitto not ready on {broker.host}:{broker.port} after {timeout} s")


@contextmanager
def mosquitto(folder: Path, port: int | None = None, username: str | None = None, password: str | None = None,
              tls: dict[str, Path] | None = None):
    """mosquitto (Debian package) on 127.0.0.1; yields a :class:`Mosquitto` (``.port``, ``.stop()``, ``.start()``).

    With ``username``/``password`` anonymous clients are refused and a password file (made with
    ``mosquitto_passwd``) holds that one user; with ``tls`` (``ca_file``, ``cert_file``, ``key_file``,
    e.g. from :func:`make_tls_files`) the listener speaks TLS only. Persistence is off: a restart
    forgets retained messages, as a real broker without persistence would.
    """
    exe = _mosquitto_exe()
    if exe is None:
        pytest.skip("mosquitto (Debian package mosquitto) not installed; `make test` installs it")
    port = port or free_port()
    # Started as root, mosquitto drops to user `mosquitto`, which must own its files and reach them:
    # pytest's /tmp/pytest-of-root is 0700, so then the broker gets a directory of its own in /tmp.
    as_root = os.geteuid() == 0
    own_tmp = None
    run_dir = folder / "mosquitto"
    if as_root and not _reachable_by_others(folder):
        own_tmp = Path(tempfile.mkdtemp(prefix="pems-mosquitto-", dir="/tmp"))
        os.chmod(own_tmp, 0o711)
        run_dir = own_tmp / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"listener {port} 127.0.0.1", "persistence false", f"pid_file {run_dir}/mosquitto.pid",
             f"log_dest file {run_dir}/mosquitto.log", "log_type error", "log_type warning", "log_type notice",
             "log_type information", "connection_messages true"]
    if username is not None:
        pw = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
        if not os.access(pw, os.X_OK):
            pytest.skip("mosquitto_passwd not installed")
        pwfile = run_dir / "passwd"
        subprocess.run([pw, "-b", "-c", str(pwfile), username, password or ""], check=True,
                       capture_output=True, timeout=30)
        lines += ["allow_anonymous false", f"password_file {pwfile}"]
    else:
        lines.append("allow_anonymous true")
    ca_file = None
    if tls is not None:
        for key in ("ca_file", "cert_file", "key_file"):
            dst = run_dir / Path(tls[key]).name
            shutil.copyfile(tls[key], dst)
            lines.append(f"{key.replace('_file', '')}file {dst}")
        ca_file = Path(tls["ca_file"])
    conf = run_dir / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n")
    if as_root:
        try:
            import pwd
            uid, gid = pwd.getpwnam("mosquitto")[2:4]
            for p in [run_dir, *run_dir.iterdir()]:
                os.chown(p, uid, gid)
        except KeyError:
            pass  # no such user: mosquitto keeps running as root
    broker = Mosquitto(exe, run_dir, port, conf, run_dir / "console.log", ca_file=ca_file)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
        if own_tmp is not None:
            shutil.rmtree(own_tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# InfluxDB 1.x that a test may stop and start again (same port, same data directory)
# ---------------------------------------------------------------------------------------------
@dataclass
class InfluxDB1:
    """A running ``influxd`` (1.x) on 127.0.0.1 that a test may stop and start again.

    The port, the data directory and the configuration stay the same across :meth:`stop` and
    :meth:`start`, so points written before a stop are still there after the restart, as with a real
    server that was down for a while.
    """

    exe: str
    folder: Path
    port: int
    conf: Path
    log: Path
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """Base URL, ``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        """Start the server (again) and wait until ``/ping`` answers."""
        if self.running:
            return
        with open(self.log, "a") as out:
            self.proc = subprocess.Popen([self.exe, "run", "-config", str(self.conf)], stdout=out,
                                         stderr=subprocess.STDOUT)
        _wait(f"{self.url}/ping", self.proc, timeout=timeout)

    def stop(self) -> None:
        """Stop the server we started (by its PID); clients see connections refused."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def influxdb1_restartable(folder: Path):
    """Like :func:`influxdb1`, but yields an :class:`InfluxDB1` (``.url``, ``.stop()``, ``.start()``)."""
    exe = shutil.which("influxd")
    if exe is None:
        pytest.skip("influxd (Debian package influxdb) not installed; `make test` installs it")
    folder = folder / "influxdb1"
    folder.mkdir(parents=True, exist_ok=True)
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
    server = InfluxDB1(exe, folder, port, conf, folder / "influxd.log")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@dataclass
class DaskCluster:
    """A real ``dask scheduler`` and its ``dask worker`` processes on 127.0.0.1."""

    address: str
    scheduler: subprocess.Popen
    workers: list[subprocess.Popen]
    folder: Path

    def kill_worker(self, i: int = 0) -> None:
        """SIGKILL one worker's processes (its nanny and the worker under it): a machine that dies."""
        import signal

        proc = self.workers[i]
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)


@contextmanager
def dask_cluster(folder: Path, workers: int = 2, env: dict[str, str] | None = None):
    """``dask scheduler`` on a free port and ``workers`` × ``dask worker`` (one process, one thread each),
    all from this environment (they import pems to run its tasks); yields a :class:`DaskCluster`."""
    import sys

    bin_dir = Path(sys.executable).parent
    exe = bin_dir / "dask"
    if not exe.exists():
        pytest.skip("the dask command line is not installed in this environment (make install)")
    port, dash = free_port(), free_port()
    address = f"tcp://127.0.0.1:{port}"
    folder.mkdir(parents=True, exist_ok=True)
    penv = {**os.environ, **(env or {})}
    logs = [open(folder / "scheduler.log", "w")]
    sched = subprocess.Popen([str(exe), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                              "--dashboard-address", f"127.0.0.1:{dash}"], stdout=logs[0], stderr=subprocess.STDOUT,
                             env=penv, start_new_session=True)
    procs: list[subprocess.Popen] = []
    try:
        t0 = time.monotonic()
        while True:  # the scheduler listens
            if sched.poll() is not None:
                raise RuntimeError(f"dask scheduler exited with code {sched.returncode}: "
                                   f"{(folder / 'scheduler.log').read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() - t0 > 30:
                    raise RuntimeError("dask scheduler not listening after 30 s") from None
                time.sleep(0.1)
        for i in range(workers):
            logs.append(open(folder / f"worker{i}.log", "w"))
            procs.append(subprocess.Popen([str(exe), "worker", address, "--nworkers", "1", "--nthreads", "1",
                                           "--host", "127.0.0.1", "--name", f"w{i}", "--no-dashboard",
                                           "--local-directory", str(folder / f"w{i}")],
                                          stdout=logs[-1], stderr=subprocess.STDOUT, env=penv, start_new_session=True))
        from distributed import Client

        with Client(address, timeout="30s") as c:
            c.wait_for_workers(workers, timeout=60)
        yield DaskCluster(address, sched, procs, folder)
    finally:
        import signal

        for p in [*procs, sched]:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in [*procs, sched]:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        for f in logs:
            f.close()
