"""Drive headless Chromium over the DevTools protocol (CDP) through `--remote-debugging-pipe`: open a
page, evaluate JavaScript in it, take screenshots, collect console errors. Used by the viewer's
tests and benchmark (software WebGL: SwiftShader).

Written by hand because the project has no CDP client among its dependencies (playwright would
download its own browser; `websockets` is not installed); the pipe transport needs only the
standard library: JSON messages separated by NUL bytes, the browser reading on fd 3 and writing on
fd 4.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from s3dgs.errors import WorkError

__all__ = ["Chromium", "find_chromium"]


def find_chromium() -> str | None:
    """Path of a Chromium executable ($S3DGS_CHROMIUM, /usr/bin/chromium, or on PATH), or None."""
    env = os.environ.get("S3DGS_CHROMIUM")
    if env and os.path.exists(env):
        return env
    if os.path.exists("/usr/bin/chromium"):
        return "/usr/bin/chromium"
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Chromium:
    """One headless Chromium with one page. ``with Chromium(width, height) as b: b.open(url); b.eval(js)``.

    `errors` collects console errors, uncaught exceptions and failed loads."""

    def __init__(self, width: int = 900, height: int = 640, exe: str | None = None, args: tuple[str, ...] = ()):
        self.exe = exe or find_chromium()
        if self.exe is None:
            raise WorkError("chromium not found; install it (apt-get install chromium) or set S3DGS_CHROMIUM")
        self.width, self.height = width, height
        self.args = tuple(args)  # more Chromium switches, e.g. --disable-3d-apis (no WebGL)
        self.errors: list[str] = []
        self._id = 0
        self._replies: dict[int, dict] = {}
        self._cv = threading.Condition()
        self._events: list[dict] = []

    def __enter__(self) -> Chromium:
        self._profile = tempfile.TemporaryDirectory(prefix="s3dgs-chromium-")
        r_to_browser, w_to_browser = os.pipe()
        r_from_browser, w_from_browser = os.pipe()

        def child_fds():  # the browser reads on fd 3 and writes on fd 4
            a, b = os.dup(r_to_browser), os.dup(w_from_browser)  # above 4, so neither is clobbered
            a = a if a > 4 else os.dup(a)
            b = b if b > 4 else os.dup(b)
            os.dup2(a, 3)
            os.dup2(b, 4)

        cmd = [self.exe, "--headless=new", "--no-sandbox", "--remote-debugging-pipe", "--no-first-run",
               "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-extensions", "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
               f"--window-size={self.width},{self.height}", f"--user-data-dir={self._profile.name}", *self.args, "about:blank"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=child_fds, close_fds=False)
        os.close(r_to_browser)
        os.close(w_from_browser)
        self._w = os.fdopen(w_to_browser, "wb", buffering=0)
        self._r = os.fdopen(r_from_browser, "rb", buffering=0)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        targets = self.call("Target.getTargets")["targetInfos"]
        page = next((t for t in targets if t["type"] == "page"), None)
        tid = page["targetId"] if page else self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": tid, "flatten": True})["sessionId"]
        for m in ("Runtime.enable", "Log.enable", "Page.enable"):
            self.call(m, session=True)
        self.call("Emulation.setDeviceMetricsOverride", {"width": self.width, "height": self.height,
                                                          "deviceScaleFactor": 1, "mobile": False}, session=True)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for f in (self._w, self._r):
            try:
                f.close()
            except OSError:
                pass
        self._profile.cleanup()

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = self._r.read(1 << 16)
            except (OSError, ValueError):
                chunk = b""
            if not chunk:
                with self._cv:
                    self._cv.notify_all()
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                with self._cv:
                    if "id" in msg:
                        self._replies[msg["id"]] = msg
                    else:
                        self._event(msg)
                    self._cv.notify_all()

    def _event(self, msg: dict) -> None:
        m, p = msg.get("method"), msg.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            self.errors.append("console: " + " ".join(str(a.get("value", a.get("description", "")))
                                                      for a in p.get("args", [])))
        elif m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            self.errors.append("exception: " + str(d.get("exception", {}).get("description", d.get("text"))))
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            self.errors.append("log: " + p["entry"].get("text", ""))
        self._events.append(msg)

    def call(self, method: str, params: dict | None = None, *, session: bool = False, timeout: float = 60) -> dict:
        with self._cv:
            self._id += 1
            i = self._id
        msg = {"id": i, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        self._w.write(json.dumps(msg).encode() + b"\0")
        end = time.monotonic() + timeout
        with self._cv:
            while i not in self._replies:
                left = end - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise WorkError(f"chromium: no answer to {method} within {timeout:.0f} s")
                self._cv.wait(min(left, 0.5))
            reply = self._replies.pop(i)
        if "error" in reply:
            raise WorkError(f"chromium: {method} failed: {reply['error'].get('message')}")
        return reply.get("result", {})

    def open(self, url: str, timeout: float = 60) -> None:
        """Navigate and wait for the load event."""
        with self._cv:
            n0 = len(self._events)
        self.call("Page.navigate", {"url": url}, session=True, timeout=timeout)
        end = time.monotonic() + timeout
        with self._cv:
            while not any(e.get("method") == "Page.loadEventFired" for e in self._events[n0:]):
                if time.monotonic() > end:
                    raise WorkError(f"chromium: {url} did not load within {timeout:.0f} s")
                self._cv.wait(0.5)

    def eval(self, expression: str, timeout: float = 60):
        """The value of a JavaScript expression (promises awaited)."""
        res = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True},
                        session=True, timeout=timeout)
        if "exceptionDetails" in res:
            raise WorkError(f"chromium: {expression[:80]!r} threw {res['exceptionDetails'].get('text')}")
        return res.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 60, poll: float = 0.1):
        """Poll a JavaScript expression until it is truthy; returns its value."""
        end = time.monotonic() + timeout
        while True:
            v = self.eval(expression)
            if v:
                return v
            if time.monotonic() > end:
                raise WorkError(f"chromium: {expression!r} still false after {timeout:.0f} s "
                                f"(errors: {self.errors[-3:]})")
            time.sleep(poll)

    def screenshot(self, path: str | Path | None = None) -> bytes:
        """A PNG of the viewport (written to `path` when given)."""
        data = base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"}, session=True)["data"])
        if path is not None:
            Path(path).write_bytes(data)
        return data
