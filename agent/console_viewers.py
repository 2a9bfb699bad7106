"""Viewers of the console while the agent bench runs (`hgad-edge bench --agent --console`), to measure what an
open console costs the agent:

- `remote_viewer`: what an operator's browser on another machine asks of the agent, request for request (every
  camera's live frame at the live rate, the event stream, the score charts every two seconds), from a thread
  of the bench: the agent's own cost of serving the console;
- `watching`: a real headless Chromium on the agent's machine (Debian's Chromium and chromedriver, driven by
  selenium, a development dependency: nothing is downloaded), as when the console is opened on the box's own
  screen: the browser's rendering shares the agent's cores too.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import threading
import urllib.request
from collections.abc import Iterator

from hgad.errors import HgadError

ARGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
)  # fmt: skip


def chromium(profile: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        raise HgadError("Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    options = Options()
    options.binary_location = browser
    for arg in (*ARGS, f"--user-data-dir={profile}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=options)


class Watcher:
    def __init__(self, url: str):
        self.url = url
        self.profile = tempfile.mkdtemp(prefix="chromium-")
        self.driver = chromium(self.profile)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._open, daemon=True)
        self.shown = 0

    def _open(self) -> None:
        """Keep trying until the agent serves the page, then leave it open."""
        from selenium.common.exceptions import WebDriverException

        while not self.stop.is_set():
            try:
                self.driver.get(self.url)
                if self.driver.execute_script("return document.querySelectorAll('img[data-live]').length") > 0:
                    return
            except WebDriverException:
                pass
            self.stop.wait(0.5)

    def frames_shown(self) -> int:
        """Live frames the page fetched (the browser's own record of its requests)."""
        return self.shown

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        script = "return performance.getEntriesByType('resource').filter((e) => e.name.includes('frame.jpg')).length"
        with contextlib.suppress(Exception):  # the agent may be gone already: the count is then unknown
            self.shown = int(self.driver.execute_script(script))
        self.driver.quit()
        shutil.rmtree(self.profile, ignore_errors=True)


@contextlib.contextmanager
def watching(url: str) -> Iterator[Watcher]:
    watcher = Watcher(url)
    watcher.thread.start()
    try:
        yield watcher
    finally:
        watcher.close()


class RemoteViewer:
    """The requests of the console's cameras page, as another machine's browser makes them."""

    def __init__(self, base: str, fps: float):
        self.base, self.period = base.rstrip("/"), 1.0 / fps
        self.stop = threading.Event()
        self.shown = 0
        self.threads = [threading.Thread(target=t, daemon=True) for t in (self._frames, self._events, self._charts)]

    def _get(self, path: str, timeout: float = 5.0) -> bytes | None:
        try:
            with urllib.request.urlopen(self.base + path, timeout=timeout) as r:
                return r.read()
        except OSError:
            return None

    def _cameras(self) -> list[str]:
        while not self.stop.is_set():
            found = self._get("/api/cameras")
            if found:
                return [c["name"] for c in json.loads(found)]
            self.stop.wait(0.2)
        return []

    def _frames(self) -> None:
        names = self._cameras()
        while not self.stop.wait(self.period):
            for name in names:
                if self._get(f"/api/cameras/{name}/frame.jpg?heatmap=1"):
                    self.shown += 1

    def _charts(self) -> None:
        names = self._cameras()
        while not self.stop.wait(2.0):
            for name in names:
                self._get(f"/api/cameras/{name}/scores?seconds=300")

    def _events(self) -> None:
        self._cameras()
        with contextlib.suppress(OSError), urllib.request.urlopen(self.base + "/api/events", timeout=5) as stream:
            while not self.stop.is_set():
                stream.readline()

    def frames_shown(self) -> int:
        return self.shown


@contextlib.contextmanager
def remote_viewer(base: str, fps: float) -> Iterator[RemoteViewer]:
    viewer = RemoteViewer(base, fps)
    for t in viewer.threads:
        t.start()
    try:
        yield viewer
    finally:
        viewer.stop.set()
        for t in viewer.threads:
            t.join(6)
