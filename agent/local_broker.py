"""A broker on this machine for the demo and the agent bench, and a subscriber that listens as an operator.

`local_broker()` uses the broker answering on 127.0.0.1:1883, else starts Mosquitto on a free port for as
long as it is needed. `Subscriber` records every alert, state and stats message of a device, with the time
each arrived.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from hgad.errors import HgadError


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def mosquitto() -> str | None:
    return shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)


@contextlib.contextmanager
def local_broker() -> Iterator[tuple[str, int, str]]:
    """(host, port, how): the local broker if it answers on 1883, else an embedded Mosquitto."""
    if _reachable("127.0.0.1", 1883):
        yield "127.0.0.1", 1883, "the local broker on 127.0.0.1:1883"
        return
    exe = mosquitto()
    if exe is None:
        raise HgadError(
            "no MQTT broker on 127.0.0.1:1883 and `mosquitto` is not installed (apt-get install "
            "mosquitto, or run `make demo`, which installs it)"
        )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while not _reachable("127.0.0.1", port):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise HgadError("the embedded Mosquitto did not start")
                time.sleep(0.05)
            yield "127.0.0.1", port, f"an embedded Mosquitto on 127.0.0.1:{port} (no local broker answered)"
        finally:
            proc.terminate()
            proc.wait(10)


class Subscriber:
    """Subscribes to a device's topics as an operator would; `on_alert` sees each alert as it arrives."""

    def __init__(self, host: str, port: int, prefix: str, on_alert: Callable[[dict], None] = lambda a: None):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.alerts: list[dict] = []
        self.stats: dict = {}
        self.states: list[tuple[float, dict]] = []  # (arrival epoch seconds, camera state)
        self.on_alert = on_alert
        self.connected = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"hgad-operator-{time.time_ns()}")
        self.client.on_connect = lambda c, u, f, rc, p: (c.subscribe(f"{prefix}/#", qos=1), self.connected.set())
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()
        if not self.connected.wait(10):
            raise HgadError(f"could not subscribe on {host}:{port}")

    def _on_message(self, client, userdata, msg) -> None:
        if msg.topic.endswith("/alert"):
            alert = json.loads(msg.payload)
            self.alerts.append(alert)
            self.on_alert(alert)
        elif msg.topic.endswith("/stats"):
            self.stats = json.loads(msg.payload)
        elif msg.topic.endswith("/state") and not msg.topic.endswith(("line/state", "calibrate/state")):
            self.states.append((time.time(), json.loads(msg.payload)))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
