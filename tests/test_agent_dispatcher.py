"""The command dispatcher with real parts: the tiny model, profiles in a real SQLite file, the agent's store
and its writer thread. The transport is replaced by a list of published messages: the dispatcher's contract
is what it publishes on which topic and what it returns, whoever carries it."""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest

from agent.alerts import AlertEmitter
from agent.camera import Camera
from agent.camera_runtime import CameraRuntime
from agent.commands import CommandError
from agent.config import parse_config
from agent.decision import Observation
from agent.dispatcher import Dispatcher
from agent.mqtt import Topics
from agent.status import StatePublisher
from agent.store import AgentStore, Writer
from calibration.db import open_database
from calibration.profile import build_profile
from calibration.store import ProfileStore
from calibration.threshold import choose_threshold

from .conftest import write_video


def save_profile(
    store: ProfileStore, model_id: str, line: str, seed: int = 0, source: str = "test", mode: str = "class-aware"
):
    """A real profile of `line` from 60 normal scores (the images behind them do not matter here)."""
    scores = np.random.default_rng(seed).normal(1.0, 0.1, 60)
    profile = build_profile(
        model_id=model_id,
        line=line,
        mode=mode,
        source=source,
        threshold=choose_threshold(scores, 0.05),
        scores=scores,
        normal_maps=np.random.default_rng(seed).random((4, 8, 8)),
        pixel_far=0.001,
        images_hash="x",
        image_shape=(64, 64, 3),
        model_normalisation={},
    )
    return store.save(profile)


class Rig:
    def __init__(self, tmp_path, tiny_model, calibrated_db):
        video = write_video(tmp_path / "v.avi", [np.zeros((64, 64, 3), np.uint8)] * 3)
        data = {"model": str(tmp_path / "model"), "device_id": "d", "storage": {"state_dir": str(tmp_path / "s")}}
        shutil.copytree(tiny_model.path, tmp_path / "model")
        data["cameras"] = [{"name": n, "source": str(video), "line": "fabric"} for n in ("cam1", "cam2")]
        self.cfg = parse_config(data)
        shutil.copyfile(calibrated_db, tmp_path / "db.sqlite")
        engine = open_database(tmp_path / "db.sqlite")
        self.profiles = ProfileStore(engine)
        self.pcb = save_profile(self.profiles, tiny_model.model_id, "pcb")
        self.store = AgentStore(engine, tmp_path / "hm", self.cfg.storage)
        self.writer = Writer(self.store)
        self.writer.start()
        self.sent: list[tuple[str, dict, int, bool]] = []
        self.publisher = StatePublisher(Topics("hgad", "d"), self._sink, tiny_model.model_id, "torch")
        self.alerts = AlertEmitter(
            "d",
            tiny_model.model_id,
            Topics("hgad", "d"),
            5,
            256,
            self.writer,
            self.store.record_alert,
            lambda ids: None,
        )
        fabric = self.profiles.active_for("fabric", tiny_model.model_id)
        self.runtimes = {
            c.name: CameraRuntime.create(Camera(c), fabric, self.cfg, tiny_model.model.classes)
            for c in self.cfg.cameras
        }
        self.built = []
        self.dispatcher = Dispatcher(
            self.cfg, tiny_model, self.profiles, self.runtimes, lambda task: task(), self.publisher, self.alerts,
            self.writer, lambda camera, line: self.store.set_line(camera, line, "fabric"), self._build,
        )  # fmt: skip

    def _sink(self, topic, payload, qos, retain):
        self.sent.append((topic, json.loads(payload), qos, retain))

    def _build(self, rt):
        result = rt.calibration.collector.build()
        self.built.append(result.profile)
        return self.profiles.save(result.profile)

    def on(self, suffix):
        return [(m, retain) for topic, m, _, retain in self.sent if topic.endswith(suffix)]

    def close(self):
        self.writer.stop()


@pytest.fixture
def rig(tmp_path, tiny_model, calibrated_db):
    r = Rig(tmp_path, tiny_model, calibrated_db)
    yield r
    r.close()


def _open_alert(rt: CameraRuntime) -> None:
    for i in range(rt.hysteresis.cfg.open_after):
        rt.hysteresis.observe(Observation(i, 0.0, 0.0, 9.0, 1.0, 0.01, True))
    assert rt.hysteresis.is_open


def test_a_line_switch_changes_the_profile_closes_the_alert_and_is_persisted(rig):
    rt = rig.runtimes["cam1"]
    _open_alert(rt)
    outcome = rig.dispatcher.apply("cam1", "line", b'{"line": "pcb"}')
    assert outcome.ok and outcome.error is None and outcome.state.line == "pcb"
    assert rt.profile.calibration_id == rig.pcb.calibration_id and not rt.hysteresis.is_open
    ((state, retained),) = rig.on("cam1/line/state")
    assert retained and state["ok"] and state["line"] == "pcb" and state["calibration_id"] == rig.pcb.calibration_id
    assert rig.on("cam1/state")[-1][0]["line"] == "pcb"
    assert rig.writer.flush(10)
    lines = rig.store.camera_lines()
    assert lines.line_for("cam1", "fabric")[0] == "pcb" and lines.line_for("cam2", "fabric")[0] == "fabric"
    # The open alert ended with the reason, through the writer into the events table.
    (event,) = rig.store.events("cam1")
    assert event.status == "closed" and event.end_reason == "line changed"
    assert rig.runtimes["cam2"].line == "fabric"


@pytest.mark.parametrize(
    ("payload", "expect"),
    [
        (b'{"line": "bottle"}', "has no active calibration profile"),
        (b'{"line": "fab/ric"}', "is not a valid name"),
        (b"{", "not valid JSON"),
    ],
)
def test_a_refused_command_changes_nothing_and_says_why_on_its_topic(rig, payload, expect):
    rt = rig.runtimes["cam1"]
    before = rt.profile.calibration_id
    outcome = rig.dispatcher.apply("cam1", "line", payload)
    assert not outcome.ok and expect in outcome.error
    ((state, retained),) = rig.on("cam1/line/state")
    assert retained and not state["ok"] and expect in state["error"]
    assert state["line"] == "fabric" and state["calibration_id"] == before == rt.profile.calibration_id
    assert rig.on("cam1/state") == []  # nothing changed, so no new camera state


def test_a_command_for_an_unknown_camera_is_answered_on_its_topic_not_retained(rig):
    outcome = rig.dispatcher.apply("cam9", "line", b"pcb")
    assert not outcome.ok and "unknown camera 'cam9' (cameras: cam1, cam2)" in outcome.error
    ((state, retained),) = rig.on("cam9/line/state")
    assert not retained and not state["ok"] and set(state) == {"ok", "line", "calibration_id", "error", "ts"}
    with pytest.raises(CommandError, match="unknown command 'zoom'"):
        rig.dispatcher.apply("cam1", "zoom", b"{}")


def test_a_live_calibration_blocks_other_changes_then_switches_the_camera(rig, tiny_model):
    rt = rig.runtimes["cam1"]
    assert rig.dispatcher.apply("cam1", "calibrate", b'{"frames": 20, "far": 0.05}').ok
    again = rig.dispatcher.apply("cam1", "calibrate", b"{}")
    assert not again.ok and "already in progress" in again.error and again.state.state == "collecting"
    assert "in progress" in rig.dispatcher.apply("cam1", "line", b"pcb").error
    for i in range(20):
        rng = np.random.default_rng(i)
        message = rt.calibration.add(
            rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), float(rng.random()), rng.random((16, 16))
        )
    assert message.state == "building"
    rig.dispatcher.calibration_collected(rt)
    assert rig.writer.flush(30)
    (profile,) = rig.built
    assert rt.profile.calibration_id == profile.calibration_id and rt.calibration.message.state == "done"
    states = [m["state"] for m, _ in rig.on("cam1/calibrate/state")]
    assert states[0] == "collecting" and states[-1] == "done"
    assert rig.on("cam1/line/state")[-1][0]["calibration_id"] == profile.calibration_id
    assert rig.profiles.active("fabric").calibration_id == profile.calibration_id


def test_submit_from_a_transport_thread_resolves_when_the_pipeline_runs_the_command(rig):
    queue: list = []
    rig.dispatcher.run = queue.append  # the pipeline's queue, run below as the pipeline thread would
    result = {}

    def transport():
        result["outcome"] = rig.dispatcher.submit("cam2", "line", b"pcb").result(10)

    t = threading.Thread(target=transport)
    t.start()
    while not queue:
        t.join(0.01)
    queue.pop()()
    t.join(10)
    assert result["outcome"].ok and rig.runtimes["cam2"].line == "pcb"


def test_reload_takes_a_profile_activated_meanwhile(rig, tiny_model):
    newer = save_profile(rig.profiles, tiny_model.model_id, "fabric", seed=1)
    rig.dispatcher.reload_profiles()
    assert {rt.profile.calibration_id for rt in rig.runtimes.values()} == {newer.calibration_id}
    assert len(rig.on("/line/state")) == 2
