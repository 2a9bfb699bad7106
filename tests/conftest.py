"""Shared fixtures: a small trained model on synthetic data, a real Mosquitto broker, an MQTT collector.

The model is real (packaged Lite0 weights, real training) and the default recipe, only smaller: 128 px and
fewer epochs, two lines, so the whole suite trains it once in seconds on two CPU cores.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from hgad.config import ModelConfig, TrainConfig
from hgad.data.datasets import load_split
from hgad.data.synth import SynthSpec, write_dataset
from hgad.model import HGAD
from hgad.model_dir import load_model, save_model
from hgad.train import train

ROOT = Path(__file__).resolve().parents[1]
SIZE = 128
EPOCHS = 6


def rebuilt_config(cfg: ModelConfig, section: str = "train", **changes) -> ModelConfig:
    """`cfg` with keys of `section` changed."""
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **changes)})


def rebuilt(trained: HGAD, section: str = "score", **changes) -> HGAD:
    """The trained model's weights under its configuration with keys of `section` changed."""
    model = HGAD(rebuilt_config(trained.cfg, section, **changes), pretrained_backbone=False)
    model.load_state_dict(trained.state_dict())
    return model.eval()


def hgad_cli(*args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None):
    """Run the installed command line as a user would; returns the CompletedProcess."""
    exe = Path(sys.executable).with_name("hgad-edge")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "agent.cli"]
    return subprocess.run(
        [*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    write_dataset(root, SynthSpec(classes=2, train=40, test=12, size=SIZE, seed=3))
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model")
    classes = ("fabric", "pcb")
    cfg = ModelConfig(classes=classes, image_size=SIZE, train=TrainConfig(epochs=EPOCHS))
    model, report = train(cfg, load_split(tiny_data, "train", list(classes)))
    save_model(model, out, report.to_dict())
    return out


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    return load_model(tiny_model_dir)


@pytest.fixture(scope="session")
def calibrated_db(tiny_model, tmp_path_factory) -> Path:
    """A database with an active profile of the `fabric` line for the tiny model (60 normal frames)."""
    import sqlite3

    from .rig import calibrate

    root = tmp_path_factory.mktemp("cal")
    db = root / "hgad-edge.sqlite"
    calibrate(tiny_model, db, root / "normals")
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # one file: a plain copy is the whole database
    con.close()
    return db


# ------------------------------------------------------------------------------------------ broker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mosquitto_binary() -> str:
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if exe is None:
        raise RuntimeError("mosquitto is not installed: run `make test` (it installs it) or apt-get install mosquitto")
    return exe


class Broker:
    """A real Mosquitto on a free port, which a test may stop and start again on the same port."""

    def __init__(self, folder: Path, extra_conf: str = "", persistent: bool = False):
        self.port = free_port()
        self.folder = folder
        self.conf = folder / "mosquitto.conf"
        # Persistence keeps subscribers' sessions (and their queued QoS 1 messages) across a restart.
        persist = f"persistence true\npersistence_location {folder}/\n" if persistent else "persistence false\n"
        auth = "" if "password_file" in extra_conf else "allow_anonymous true\n"
        # Run as root (CI is), Mosquitto drops to the `mosquitto` user, which cannot read pytest's
        # 0700 temporary folders (password file, persistence): stay root there instead.
        user = "user root\n" if os.geteuid() == 0 else ""
        self.conf.write_text(f"{user}listener {self.port} 127.0.0.1\n{auth}{persist}{extra_conf}")
        self.proc: subprocess.Popen | None = None
        self.log = folder / "mosquitto.log"

    def start(self, timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen(
            [mosquitto_binary(), "-c", str(self.conf)], stdout=self.log.open("ab"), stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mosquitto exited: {self.log.read_text()[-500:]}") from None
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


@dataclass
class Message:
    topic: str
    payload: bytes
    retain: bool
    t: float

    def json(self) -> dict:
        return json.loads(self.payload)


class Collector:
    """Subscribes like an operator would and records every message; waits on conditions, never sleeps
    for a fixed time."""

    def __init__(self, port: int, topic: str = "hgad/#", persistent: bool = False, auth: tuple[str, str] | None = None):
        self.messages: list[Message] = []
        self._cond = threading.Condition()
        self.connected = threading.Event()
        # A persistent session (fixed id, clean_session False) is queued for by the broker while away.
        cid = f"test-collector-{port}" if persistent else f"test-collector-{port}-{id(self)}"
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, clean_session=not persistent)
        if auth:
            self.client.username_pw_set(*auth)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.topic = topic
        self.client.reconnect_delay_set(1, 2)
        self.client.connect_async("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        assert self.connected.wait(10), "collector could not connect to the broker"

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        client.subscribe(self.topic, qos=1)
        self.connected.set()

    def _on_message(self, client, userdata, msg) -> None:
        with self._cond:
            self.messages.append(Message(msg.topic, bytes(msg.payload), bool(msg.retain), time.monotonic()))
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[Message]], bool], timeout: float = 30.0) -> list[Message]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"condition not met within {timeout} s; {len(self.messages)} messages: "
                        f"{[m.topic for m in self.messages[-10:]]}"
                    )
                self._cond.wait(left)
            return list(self.messages)

    def wait_stopped(self, timeout: float = 30.0) -> list[Message]:
        """Until the agent's retained `stopped`: its final stats (published just before, same QoS) are in."""
        return self.wait_for(
            lambda ms: any(m.topic.endswith("/status") and m.payload == b"stopped" for m in ms), timeout
        )

    def on(self, suffix: str) -> list[Message]:
        with self._cond:
            return [m for m in self.messages if m.topic.endswith(suffix)]

    def alerts(self) -> list[dict]:
        return [m.json() for m in self.on("/alert")]

    def publish(self, topic: str, payload: bytes | str, qos: int = 1) -> None:
        self.client.publish(topic, payload, qos=qos).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def collector_factory():
    made: list[Collector] = []

    def make(
        port: int, topic: str = "hgad/#", persistent: bool = False, auth: tuple[str, str] | None = None
    ) -> Collector:
        c = Collector(port, topic, persistent, auth)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


# ------------------------------------------------------------------------------------------ videos


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0, fourcc: str = "MJPG") -> Path:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened(), f"OpenCV cannot write {fourcc} video here"
    for f in frames:
        writer.write(f)
    writer.release()
    return path
