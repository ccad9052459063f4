"""Open a report in headless Chromium and read back what a reader would see.

Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: it
reads commands on fd 3 and writes replies on fd 4, NUL-separated JSON), so no port, no
websocket library and nothing beyond the standard library is needed. One call loads the
page at a laptop-sized viewport and returns console errors, every network request and
failure, the state of each figure, the text of every table, the page width, and
optionally a PNG screenshot.

    python -m reports.browser report.html --screenshot docs/report.png
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
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

from workloads.errors import ScyllaError

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "headless_shell")
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
    "--disable-extensions", "--mute-audio", "--hide-scrollbars", "--remote-debugging-pipe",
)

# Runs in the page: everything the checks need, as plain JSON.
_PROBE = """(() => {
  const imgs = [...document.querySelectorAll('figure[data-figure]')].map(f => {
    const img = f.querySelector('img');
    return {figure: f.dataset.figure, complete: !!(img && img.complete),
            width: img ? img.naturalWidth : 0, height: img ? img.naturalHeight : 0,
            shown: img ? img.getBoundingClientRect().width : 0};
  });
  const tables = [...document.querySelectorAll('table[data-table]')].map(t => ({
    id: t.dataset.table,
    headers: [...t.querySelectorAll('thead th')].map(th => th.textContent),
    rows: [...t.querySelectorAll('tbody tr')].map(tr => ({
      cell_id: tr.dataset.cellId || null,
      cells: Object.fromEntries([...tr.querySelectorAll('td')].map(td => [td.dataset.col, td.textContent]))
    }))
  }));
  const de = document.documentElement;
  return {images: imgs, tables: tables, scrollWidth: Math.max(de.scrollWidth, document.body.scrollWidth),
          innerWidth: window.innerWidth, scrollHeight: de.scrollHeight, title: document.title,
          absent: [...document.querySelectorAll('[data-figure-absent]')].map(e => e.dataset.figureAbsent)};
})()"""


def find_chromium() -> str | None:
    """The Chromium binary: $SCYLLA_CHROMIUM, else the first known name on PATH."""
    env = os.environ.get("SCYLLA_CHROMIUM")
    if env:
        return env if Path(env).exists() or shutil.which(env) else None
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageReport:
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    failed_requests: list[str] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    absent_figures: list[str] = field(default_factory=list)
    tables: list[dict] = field(default_factory=list)
    scroll_width: int = 0
    viewport_width: int = 0
    scroll_height: int = 0
    title: str = ""
    screenshot: bytes | None = None

    def table(self, table_id: str) -> dict:
        hits = [t for t in self.tables if t["id"] == table_id]
        if not hits:
            raise KeyError(f"no table {table_id!r} on the page")
        return hits[0]


class _Pipe:
    """NUL-framed JSON messages to and from a Chromium started with --remote-debugging-pipe."""

    def __init__(self, binary: str, profile_dir: str):
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()

        def child_fds() -> None:  # runs in the child between fork and exec
            # Move both ends above 4 first: a pipe end may itself be fd 3 or 4, and
            # dup2 onto the same number would keep its close-on-exec flag.
            high_r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
            high_w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self.proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={profile_dir}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=child_fds, close_fds=False,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._next = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        self._next += 1
        msg = {"id": self._next, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read(timeout)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise ScyllaError(f"chromium: {method} failed: {reply['error'].get('message')}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, event: str, timeout: float) -> dict:
        for e in self.events:
            if e.get("method") == event:
                return e
        while True:
            msg = self._read(timeout)
            if "id" not in msg:
                self.events.append(msg)
                if msg.get("method") == event:
                    return msg

    def _read(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ScyllaError(f"chromium did not answer within {timeout:.0f} s")
            ready, _, _ = select.select([self._r], [], [], left)
            if ready:
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise ScyllaError(f"chromium exited (status {self.proc.poll()})")
                self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._w, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._w, self._r):
            with contextlib.suppress(OSError):
                os.close(fd)


def inspect_page(path: str | Path, width: int = 1366, height: int = 900, screenshot: bool = False,
                 screenshot_height: int | None = None, timeout: float = 60) -> PageReport:
    """Load `path` (a local HTML file) in a fresh headless Chromium and report what happened."""
    binary = find_chromium()
    if binary is None:
        raise ScyllaError("Chromium not found (install the Debian package `chromium`, or set SCYLLA_CHROMIUM)")
    page_url = Path(path).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="scylla-chromium-") as profile_dir:
        pipe = _Pipe(binary, profile_dir)
        try:
            target = pipe.send("Target.createTarget", {"url": "about:blank"}, timeout=timeout)["targetId"]
            session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                pipe.send(f"{domain}.enable", session=session)
            pipe.send("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=session)
            pipe.events.clear()
            pipe.send("Page.navigate", {"url": page_url}, session=session)
            pipe.wait_for("Page.loadEventFired", timeout)
            probe = pipe.send("Runtime.evaluate", {"expression": _PROBE, "returnByValue": True}, session=session)
            value = probe["result"]["value"]
            shot = None
            if screenshot:
                h = min(screenshot_height or value["scrollHeight"], value["scrollHeight"])
                shot_res = pipe.send("Page.captureScreenshot", {
                    "format": "png", "captureBeyondViewport": True,
                    "clip": {"x": 0, "y": 0, "width": width, "height": h, "scale": 1},
                }, session=session, timeout=timeout)
                shot = base64.b64decode(shot_res["data"])
        finally:
            pipe.close()
    rep = PageReport(
        images=value["images"], tables=value["tables"], scroll_width=value["scrollWidth"],
        viewport_width=value["innerWidth"], scroll_height=value["scrollHeight"], title=value["title"],
        absent_figures=value["absent"], screenshot=shot,
    )
    for e in pipe.events:
        method, params = e.get("method"), e.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            rep.console_errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            rep.console_errors.append(params.get("exceptionDetails", {}).get("text", "exception"))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            rep.console_errors.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip())
        elif method == "Network.requestWillBeSent":
            url = params.get("request", {}).get("url", "")
            if url != page_url:
                rep.requests.append(url[:120])
        elif method == "Network.loadingFailed":
            rep.failed_requests.append(f"{params.get('errorText')} ({params.get('type')})")
    return rep


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("html")
    ap.add_argument("--screenshot", help="write a PNG of the top of the page here")
    ap.add_argument("--height", type=int, default=1900, help="screenshot height in CSS pixels")
    ap.add_argument("--width", type=int, default=1366)
    args = ap.parse_args(argv)
    try:
        rep = inspect_page(args.html, width=args.width, screenshot=bool(args.screenshot), screenshot_height=args.height)
    except ScyllaError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.screenshot:
        Path(args.screenshot).write_bytes(rep.screenshot or b"")
    loaded = sum(1 for i in rep.images if i["complete"] and i["width"] > 0)
    print(f"figures loaded {loaded}/{len(rep.images)}, console errors {len(rep.console_errors)}, "
          f"requests {len(rep.requests)}, failed {len(rep.failed_requests)}, "
          f"page width {rep.scroll_width}/{rep.viewport_width}, height {rep.scroll_height}")
    for line in rep.console_errors + rep.failed_requests:
        print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
