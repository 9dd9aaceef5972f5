"""A page opened in headless Chromium over the DevTools protocol (``--remote-debugging-pipe``:
JSON messages separated by NUL bytes on file descriptors 3 and 4; no websocket, no extra
package). Used by the report's browser test.

    with Chromium() as browser:
        page = browser.open(path, width=1280)
        page.errors          # console errors, uncaught exceptions, failed loads
        page.evaluate("document.images.length")
        page.screenshot(png_path)
"""
from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find() -> str | None:
    """The Chromium executable on PATH (Debian's package `chromium`), or None."""
    return next((p for p in map(shutil.which, NAMES) if p), None)


class Chromium:
    """A headless Chromium process driven over its DevTools pipe."""

    def __init__(self, timeout: float = 30.0) -> None:
        exe = find()
        if exe is None:
            raise FileNotFoundError("no Chromium on PATH; apt-get install -y chromium")
        self.timeout = timeout
        self._profile = tempfile.mkdtemp(prefix="advlab-chromium-")
        self._log = tempfile.TemporaryFile()  # the browser's stderr, shown if it dies
        to_chrome, self._write = os.pipe()
        self._read, from_chrome = os.pipe()

        args = ["--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--hide-scrollbars", "--mute-audio",
                f"--user-data-dir={self._profile}", "about:blank"]
        # the pipe ends become the browser's descriptors 3 (commands) and 4 (replies); bash,
        # as dash's redirections take one-digit descriptors only
        self.proc = subprocess.Popen(
            [shutil.which("bash") or "/bin/bash", "-c",
             f'exec "$0" "$@" 3<&{to_chrome} 4>&{from_chrome}', exe, *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log,
            pass_fds=(to_chrome, from_chrome))
        os.close(to_chrome)
        os.close(from_chrome)
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (OSError, RuntimeError, TimeoutError):
            pass  # already gone: killed below
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._read, self._write):
            try:
                os.close(fd)
            except OSError:
                pass  # closed already
        self._log.close()
        shutil.rmtree(self._profile, ignore_errors=True)

    # -- the protocol ---------------------------------------------------------------------

    def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """Send a command and wait for its reply (events that arrive meanwhile are kept)."""
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._write, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._next()
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str) -> dict[str, Any]:
        """The first event ``method`` (already received or the next ones)."""
        for i, e in enumerate(self.events):
            if e.get("method") == method:
                return self.events.pop(i)
        while True:
            e = self._next()
            if e.get("method") == method:
                return e
            self.events.append(e)

    def _next(self) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise TimeoutError(f"no message from Chromium in {self.timeout} s")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                self._log.seek(0)
                err = self._log.read().decode(errors="replace")
                raise RuntimeError(f"Chromium exited: {err[-2000:]}")
            self._buf += chunk
        msg, _, self._buf = self._buf.partition(b"\0")
        return json.loads(msg)

    def open(self, path: str | Path, width: int = 1280, height: int = 900) -> Page:
        """Load a file in a new tab of the given viewport size; return when it has loaded."""
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session)
        self.send("Emulation.setDeviceMetricsOverride", session, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)
        self.send("Page.navigate", session, url=Path(path).resolve().as_uri())
        self.wait_event("Page.loadEventFired")
        return Page(self, session)


class Page:
    """A loaded tab."""

    def __init__(self, browser: Chromium, session: str) -> None:
        self.browser, self.session = browser, session

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression (awaited when it is a promise)."""
        r = self.browser.send("Runtime.evaluate", self.session, expression=expression,
                              returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    @property
    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and failed loads seen so far."""
        self.evaluate("0")  # flush: events sent before this reply are collected
        out = []
        for e in self.browser.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description")))
                                                  for a in p.get("args", [])))
            elif m == "Runtime.exceptionThrown":
                out.append("exception: " + str(p["exceptionDetails"].get("text")))
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append("log: " + str(p["entry"].get("text")))
            elif m == "Network.loadingFailed":
                out.append("load failed: " + str(p.get("errorText")))
        return out

    def screenshot(self, path: str | Path) -> Path:
        """A PNG of the whole page (not just the viewport)."""
        size = self.browser.send("Page.getLayoutMetrics", self.session)["cssContentSize"]
        shot = self.browser.send(
            "Page.captureScreenshot", self.session, format="png", captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"],
                  "scale": 1})
        path = Path(path)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


# ----------------------------------------------------------------------------- the report check

#: JavaScript: every image decoded (its size, or the decoding error), the page's and the
#: widest table's right edge, and the viewport width
MEASURE = """(async () => {
  const images = await Promise.all([...document.images].map(i => i.decode().then(
      () => ({alt: i.alt, w: i.naturalWidth, h: i.naturalHeight,
              shown: Math.round(i.getBoundingClientRect().width)}),
      e => ({alt: i.alt, error: String(e)}))));
  const tables = [...document.querySelectorAll("table")].map(t => ({
      right: Math.ceil(t.getBoundingClientRect().right),
      first: (t.querySelector("th") || {}).textContent}));
  return {images, tables, page: document.documentElement.scrollWidth,
          viewport: window.innerWidth};
})()"""


def check(path: str | Path, screenshot: str | Path, width: int = 1280) -> dict[str, Any]:
    """Open a report at ``width`` pixels, save a full-page screenshot and return what
    :data:`MEASURE` found plus ``errors`` (console errors, exceptions, failed loads)."""
    with Chromium() as browser:
        page = browser.open(path, width=width)
        found = page.evaluate(MEASURE)
        found["errors"] = page.errors
        page.screenshot(screenshot)
    return found


if __name__ == "__main__":  # python tests/browser.py REPORT.html SHOT.png
    import sys

    print(json.dumps(check(sys.argv[1], sys.argv[2]), indent=1))
