"""Open a local HTML page in headless Chromium and see what a person would see.

A tiny client of the Chrome DevTools protocol over `--remote-debugging-pipe` (JSON messages
ended by NUL on file descriptors 3 and 4): no network, no port, no extra package. It loads
the page, collects every console error, uncaught exception and failed resource load, reads
each image's load state, and takes a screenshot of the whole page.

    python tests/browser_support.py PAGE.html SHOT.png    # the same from a shell
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_browser() -> str | None:
    """The path of a Chromium-family browser on PATH, if any."""
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


@dataclass
class PageCheck:
    """What loading a page showed.

    Attributes:
        screenshot: the PNG of the whole page.
        images: per `<img>`: src, complete, naturalWidth/Height and its box on the page.
        errors: console errors, uncaught exceptions and failed loads, one line each.
        title: the document's title.
        height_px: the page's full height.
    """

    screenshot: Path
    images: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    title: str = ""
    height_px: int = 0


class _Pipe:
    """The browser's end of `--remote-debugging-pipe`: send a command, wait for its answer,
    keep the events that arrive meanwhile."""

    def __init__(self, write_fd: int, read_fd: int, deadline: float) -> None:
        self.write_fd, self.read_fd, self.deadline = write_fd, read_fd, deadline
        self.buf = b""
        self.events: list[dict[str, Any]] = []
        self.next_id = 0

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> int:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.write_fd, json.dumps(msg).encode() + b"\0")
        return self.next_id

    def receive(self) -> dict[str, Any]:
        while b"\0" not in self.buf:
            left = self.deadline - time.monotonic()
            if left <= 0 or not select.select([self.read_fd], [], [], left)[0]:
                raise TimeoutError("the browser did not answer in time")
            chunk = os.read(self.read_fd, 1 << 20)
            if not chunk:
                raise EOFError("the browser closed its debugging pipe")
            self.buf += chunk
        message, _, self.buf = self.buf.partition(b"\0")
        return json.loads(message)

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        wanted = self.send(method, params, session)
        while True:
            msg = self.receive()
            if msg.get("id") == wanted:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_event(self, method: str) -> dict[str, Any]:
        for i, msg in enumerate(self.events):
            if msg.get("method") == method:
                return self.events.pop(i)
        while True:
            msg = self.receive()
            if msg.get("method") == method:
                return msg
            self.events.append(msg)


def _error_lines(events: list[dict[str, Any]]) -> list[str]:
    out = []
    for msg in events:
        method, params = msg.get("method"), msg.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            out.append("exception: " + (details.get("exception", {}).get("description") or details.get("text", "")))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            words = (str(arg.get("value", arg.get("description", ""))) for arg in params["args"])
            out.append("console.error: " + " ".join(words))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            out.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip())
    return out


_IMAGES_JS = """JSON.stringify({
  title: document.title,
  height: Math.ceil(document.documentElement.scrollHeight),
  images: Array.from(document.images).map(i => {
    const r = i.getBoundingClientRect();
    return {src: i.getAttribute('src'), complete: i.complete, naturalWidth: i.naturalWidth,
            naturalHeight: i.naturalHeight, x: r.left + scrollX, y: r.top + scrollY, width: r.width,
            height: r.height};
  })
})"""


def check_page(page: Path, screenshot: Path, width_px: int = 1280, timeout_s: float = 60.0,
               browser: str | None = None) -> PageCheck:
    """Load `page` in headless Chromium, `width_px` wide, and screenshot all of it into `screenshot`.

    Raises:
        RuntimeError: no browser found, or it failed.
        TimeoutError: the browser did not load the page within `timeout_s`.
    """
    browser = browser or find_browser()
    if browser is None:
        raise RuntimeError("no Chromium on PATH")
    deadline = time.monotonic() + timeout_s
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()

    def child_fds() -> None:  # the browser reads commands on fd 3 and writes answers on fd 4
        a, b = os.dup(to_browser_r), os.dup(from_browser_w)
        os.dup2(a, 3)
        os.dup2(b, 4)

    with tempfile.TemporaryDirectory(prefix="akd-chromium-") as tmp, open(Path(tmp) / "stderr.log", "w+b") as log:
        args = [browser, "--headless", "--remote-debugging-pipe", f"--user-data-dir={tmp}/profile", "--disable-gpu",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars",
                "--disable-background-networking", "--disable-dev-shm-usage", "--mute-audio", "about:blank"]
        if os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                                close_fds=False, preexec_fn=child_fds)  # noqa: PLW1509 - dup2 only
        os.close(to_browser_r)
        os.close(from_browser_w)
        pipe = _Pipe(to_browser_w, from_browser_r, deadline)
        try:
            target = pipe.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                pipe.call(f"{domain}.enable", session=session)
            pipe.call("Emulation.setDeviceMetricsOverride",
                      {"width": width_px, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session)
            pipe.events.clear()  # about:blank's own events
            pipe.call("Page.navigate", {"url": Path(page).resolve().as_uri()}, session)
            pipe.wait_event("Page.loadEventFired")
            state = json.loads(pipe.call("Runtime.evaluate", {"expression": _IMAGES_JS, "returnByValue": True},
                                         session)["result"]["value"])
            shot = pipe.call("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": width_px, "height": state["height"], "scale": 1},
            }, session)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
            with_errors = _error_lines(pipe.events)
            try:
                pipe.call("Browser.close")
            except (EOFError, TimeoutError, RuntimeError):
                pass
        except (EOFError, TimeoutError) as exc:
            proc.kill()
            proc.wait()
            log.seek(0)
            stderr = log.read().decode(errors="replace")[-2000:]
            raise type(exc)(f"{exc}; the browser's stderr ends: {stderr}") from None
        finally:
            os.close(to_browser_w)
            os.close(from_browser_r)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return PageCheck(screenshot, state["images"], with_errors, state["title"], state["height"])


def main(argv: list[str]) -> int:
    page, shot = Path(argv[0]), Path(argv[1])
    width = int(argv[2]) if len(argv) > 2 else 1280
    result = check_page(page, shot, width)
    print(json.dumps({"title": result.title, "height_px": result.height_px, "errors": result.errors,
                      "images": result.images}, indent=2))
    return 1 if result.errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
