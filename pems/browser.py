"""Headless Chromium for looking at reports as a person does: layout checks and screenshots.

The browser is driven over the Chrome DevTools protocol on a pipe (``--remote-debugging-pipe``:
JSON messages separated by NUL bytes, Chromium reading on file descriptor 3 and writing on 4).
A pipe needs no driver binary (chromedriver), no WebSocket library and no free port, and the
browser dies with its pipe; only the standard library is used. The browser is the system's
(Debian's ``chromium``); nothing is ever downloaded.

Used by the browser tests of the reports (``tests/scenarios/test_report_browser.py``) and by
``tools/screenshots.py`` (the README's pictures)::

    with Chromium() as browser:
        page = browser.open(Path("out/demo/report.html"), width=1366)
        page.evaluate("document.title")
        page.screenshot(Path("top.png"), selector="table")
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO, Any

#: Where Debian installs it (package ``chromium``); other names are tried on PATH.
CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")

#: Flags for a headless browser on a machine without a screen or outside network: no sandbox (we
#: run as root in CI), no GPU, and none of the background connections that a closed network refuses.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--mute-audio",
         "--disable-dev-shm-usage")  # containers often have a small /dev/shm: use /tmp


class BrowserError(RuntimeError):
    """The browser could not be started, closed its pipe, timed out or reported an error."""


def find_chromium() -> str | None:
    """The path of a Chromium binary, or ``None`` when none is installed."""
    env = os.environ.get("PEMS_CHROMIUM")
    for name in ((env,) if env else ()) + CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """A headless Chromium process driven over the DevTools pipe.

    Parameters
    ----------
    binary
        The browser; found with :func:`find_chromium` when not given.
    timeout
        How long one protocol command may take [s].
    """

    def __init__(self, binary: str | None = None, timeout: float = 30.0) -> None:
        self.binary = binary or find_chromium()
        if self.binary is None:
            raise BrowserError("no Chromium found (Debian: apt-get install chromium)")
        self.timeout = timeout
        self._proc: subprocess.Popen | None = None
        self._profile: tempfile.TemporaryDirectory | None = None
        self._buf = b""
        self._next_id = 0
        self._stderr: IO[bytes] | None = None

    # -- process ---------------------------------------------------------------------------------
    def __enter__(self) -> Chromium:
        self._profile = tempfile.TemporaryDirectory(prefix="pems-chromium-")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def _fds() -> None:  # in the child: the protocol's fixed descriptors 3 (in) and 4 (out)
            # copied above 10 first, so that placing one cannot overwrite the other where it sits
            high_r, high_w = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10), fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        args = [self.binary, *FLAGS, f"--user-data-dir={self._profile.name}", "--remote-debugging-pipe",
                "about:blank"]
        try:
            # pass_fds keeps 3 and 4 open past the close-all that follows the dup2s above
            self._stderr = tempfile.TemporaryFile()
            self._proc = subprocess.Popen(args, pass_fds=(3, 4), preexec_fn=_fds, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=self._stderr)
        except (OSError, subprocess.SubprocessError) as e:
            self.__exit__(None, None, None)
            raise BrowserError(f"cannot run {self.binary}: {e}") from None
        finally:
            os.close(to_chrome_r)
            os.close(from_chrome_w)
        try:
            self.send("Browser.getVersion")
        except BrowserError as e:
            said = self._said()
            self.__exit__(None, None, None)
            raise BrowserError(f"{self.binary} did not start: {e}" + (f"; it said: {said}" if said else "")) from None
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _said(self, lines: int = 5) -> str:
        """The last lines the browser wrote to its stderr (why it did not start)."""
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        text = self._stderr.read().decode("utf-8", "replace").strip().splitlines()
        return " | ".join(text[-lines:])

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            try:
                self.send("Browser.close", timeout=5)
            except (BrowserError, OSError):
                pass
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
            self._proc = None
        for fd in (self._to_chrome, self._from_chrome):
            try:
                os.close(fd)
            except OSError:
                pass
        if self._profile is not None:
            self._profile.cleanup()
            self._profile = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    # -- protocol --------------------------------------------------------------------------------
    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float | None = None) -> dict[str, Any]:
        """Send one command and return its result, skipping the events that arrive meanwhile."""
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        try:
            os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        except OSError as e:  # the browser has gone (a broken pipe)
            raise BrowserError(f"{method}: the browser closed its pipe ({e.strerror})") from None
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            while b"\0" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._from_chrome], [], [], left)[0]:
                    raise BrowserError(f"{method}: no answer within {timeout or self.timeout:g} s")
                chunk = os.read(self._from_chrome, 1 << 20)
                if not chunk:
                    raise BrowserError(f"{method}: the browser closed its pipe")
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message', reply['error'])}")
                return reply.get("result", {})

    def open(self, path: Path | str, width: int = 1366, height: int = 900) -> Page:
        """A new tab showing ``path`` (a local file or a URL) in a window ``width`` × ``height`` [px],
        returned once the page and all its images have loaded."""
        url = path if isinstance(path, str) and "://" in path else Path(path).resolve().as_uri()
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session, width)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session)
        self.send("Page.navigate", {"url": url}, session)
        page.wait_loaded()
        return page


# Runs in the page. A table's box must lie inside its parent's content box, and must not need a
# scroll bar of its own (the stylesheet lets an over-wide table scroll rather than spill: that
# scroll is a last resort, not a layout). Half a pixel of rounding is forgiven.
LAYOUT_CHECK = """(() => {
  const out = [], name = e => e.tagName.toLowerCase() + (e.className ? '.' + e.className : '');
  const label = t => (t.querySelector('th, td')?.textContent || '').trim().slice(0, 40);
  document.querySelectorAll('table').forEach((t, i) => {
    const p = t.parentElement, cs = getComputedStyle(p), r = t.getBoundingClientRect(),
          pr = p.getBoundingClientRect();
    const left = pr.left + parseFloat(cs.borderLeftWidth) + parseFloat(cs.paddingLeft),
          right = pr.right - parseFloat(cs.borderRightWidth) - parseFloat(cs.paddingRight);
    if (r.left < left - 0.5 || r.right > right + 0.5)
      out.push(`table ${i + 1} ('${label(t)}…') spans ${r.left.toFixed(0)}–${r.right.toFixed(0)} px, ` +
               `outside its ${name(p)} (${left.toFixed(0)}–${right.toFixed(0)} px)`);
    if (t.scrollWidth > t.clientWidth + 0.5)
      out.push(`table ${i + 1} ('${label(t)}…') needs ${t.scrollWidth} px, scrolls in ${t.clientWidth} px`);
  });
  const doc = document.documentElement;
  if (doc.scrollWidth > doc.clientWidth + 0.5)
    out.push(`the page is ${doc.scrollWidth} px wide in a ${doc.clientWidth} px window`);
  [...document.images].forEach((im, i) => {
    if (!im.complete || im.naturalWidth === 0)
      out.push(`image ${i + 1} ('${im.alt}') did not load`);
  });
  return out;
})()"""


class Page:
    """One tab of a :class:`Chromium`."""

    def __init__(self, browser: Chromium, session: str, width: int) -> None:
        self.browser, self.session, self.width = browser, session, width

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (promises awaited), as JSON-able Python."""
        r = self.browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                   "awaitPromise": True}, self.session)
        if "exceptionDetails" in r:
            raise BrowserError(f"script failed: {r['exceptionDetails'].get('text', '')} "
                               f"{r['exceptionDetails'].get('exception', {}).get('description', '')}")
        return r["result"].get("value")

    def wait_loaded(self, timeout: float | None = None) -> None:
        """Wait until the document and every image in it have finished loading (or failed to)."""
        deadline = time.monotonic() + (timeout or self.browser.timeout)
        done = ("document.readyState === 'complete' && "
                "[...document.images].every(i => i.complete)")
        while time.monotonic() < deadline:
            if self.evaluate(done):
                return
            time.sleep(0.05)
        raise BrowserError("the page did not finish loading")

    def layout_problems(self) -> list[str]:
        """What a reader of this page would trip over, one line each (empty: none).

        * a table wider than the box it sits in (cut off, or pushing the page sideways), or one that
          only fits by scrolling inside itself;
        * a page wider than the window (a horizontal scroll bar);
        * an image (figure) that did not load or is empty.
        """
        return self.evaluate(LAYOUT_CHECK)

    def screenshot(self, out: Path, selector: str | None = None, until: str | None = None,
                   scale: float = 1.0, margin: int = 8) -> Path:
        """Write a PNG of the whole page, or of the element ``selector`` matches first.

        Parameters
        ----------
        out
            The PNG to write.
        selector
            A CSS selector; the picture is that element's box (plus ``margin``). ``None``: the page.
        until
            With ``selector``: a second selector; the picture runs down to the bottom of that element
            (a section made of several elements, such as a heading down to its figure).
        scale
            Size of the picture against the page's CSS pixels (0.6: 60 %).
        margin
            White space kept around the element [CSS px].
        """
        if selector is None:
            box = self.evaluate("({x: 0, y: 0, width: document.documentElement.scrollWidth, "
                                "height: document.documentElement.scrollHeight})")
        else:
            box = self.evaluate(f"""(() => {{
                const a = document.querySelector({json.dumps(selector)});
                if (!a) return null;
                const b = {json.dumps(until)} ? document.querySelector({json.dumps(until)}) : a;
                if (!b) return null;
                const r = a.getBoundingClientRect(), s = b.getBoundingClientRect();
                const x = Math.min(r.left, s.left) + scrollX, y = r.top + scrollY;
                return {{x: x, y: y, width: Math.max(r.right, s.right) + scrollX - x,
                         height: s.bottom + scrollY - y}}; }})()""")
            if box is None:
                raise BrowserError(f"nothing on the page matches {selector!r}" + (f" / {until!r}" if until else ""))
            box = {"x": max(0.0, box["x"] - margin), "y": max(0.0, box["y"] - margin),
                   "width": box["width"] + 2 * margin, "height": box["height"] + 2 * margin}
        shot = self.browser.send("Page.captureScreenshot",
                                 {"format": "png", "captureBeyondViewport": True,
                                  "clip": {**box, "scale": scale}}, self.session, timeout=120)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(shot["data"]))
        return out
