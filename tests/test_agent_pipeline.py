"""The inference loop with real parts: cameras reading real videos through OpenCV, the tiny model on the torch
backend, decisions per camera. Thresholds are set by hand so the tests are about the loop, not the model."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest

from agent.camera import Camera
from agent.camera_runtime import CameraRuntime
from agent.config import CameraConfig
from agent.pipeline import Pipeline
from calibration.db import open_database
from calibration.store import ProfileStore
from hgad.runtime.torch_backend import TorchBackend

from .conftest import write_video
from .test_agent_alerts import _agent_cfg
from .test_agent_dispatcher import save_profile

FRAMES = 28


@pytest.fixture(scope="module")
def backend(tiny_model):
    return TorchBackend(tiny_model)


def _runtime(tmp_path, name: str, threshold: float, model_id: str) -> CameraRuntime:
    profile = save_profile(ProfileStore(open_database(tmp_path / f"{name}.sqlite")), model_id, "fabric")
    profile = dataclasses.replace(profile, threshold=threshold)
    rng = np.random.default_rng(0)
    video = write_video(
        tmp_path / f"{name}.avi", [rng.integers(0, 255, (96, 160, 3), dtype=np.uint8) for _ in range(FRAMES)]
    )
    cfg = _agent_cfg(tmp_path, video)
    return CameraRuntime.create(Camera(CameraConfig(name, str(video), "fabric")), profile, cfg, ("fabric", "pcb"))


class Recorder:
    def __init__(self):
        self.alerts, self.progress, self.collected = [], [], []
        self.done = threading.Event()

    def alert(self, rt, ev, now):
        self.alerts.append((rt.name, ev.type, rt.frames))  # how many frames had been judged when it was raised

    def run(self, backend, rts, batch=1, first=None):
        """Run the pipeline over the cameras' recordings to their end; `first` is a command queued before."""
        pipe = Pipeline(
            backend,
            rts,
            batch,
            self.alert,
            lambda rt: self.progress.append(rt.calibration.message.collected),
            lambda rt: self.collected.append(rt.name),
        )
        if first is not None:
            pipe.call(first)
        for rt in rts:
            rt.camera.start()
        pipe.start()
        while not (pipe.idle and pipe.tasks.empty()):
            self.done.wait(0.05)
        pipe.stop()
        for rt in rts:
            rt.camera.stop()
        return pipe


def test_every_frame_of_a_recording_is_judged_in_order_and_an_alert_opens(tmp_path, backend, tiny_model):
    rt = _runtime(tmp_path, "cam1", -1.0, tiny_model.model_id)  # every frame is anomalous
    rec = Recorder()
    pipe = rec.run(backend, [rt])
    assert rt.frames == FRAMES and pipe.errors == 0 and rt.anomalous and rt.last_score is not None
    open_after = rt.hysteresis.cfg.open_after
    assert rec.alerts == [("cam1", "new", open_after)] and rt.hysteresis.is_open
    assert rt.latency.summary()["n"] == FRAMES


def test_normal_frames_feed_the_drift_monitor_and_raise_nothing(tmp_path, backend, tiny_model):
    rt = _runtime(tmp_path, "cam1", 1e9, tiny_model.model_id)
    rec = Recorder()
    rec.run(backend, [rt])
    assert rec.alerts == [] and not rt.anomalous and len(rt.drift.recent) == FRAMES


def test_frames_collected_for_a_live_calibration_raise_no_alert(tmp_path, backend, tiny_model):
    rt = _runtime(tmp_path, "cam1", -1.0, tiny_model.model_id)
    rt.calibration.start(tiny_model, "fabric", 20, 0.1, "class-aware", "live:cam1")
    rec = Recorder()
    rec.run(backend, [rt])
    assert rec.alerts[:1] == [("cam1", "new", 20 + rt.hysteresis.cfg.open_after)]  # only after the 20 frames
    assert rec.progress == list(range(2, 21, 2)) and rec.collected == ["cam1"]
    assert rt.calibration.message.state == "building"


def test_commands_run_on_the_pipeline_thread_and_cameras_share_a_batch(tmp_path, backend, tiny_model):
    rts = [_runtime(tmp_path, n, 1e9, tiny_model.model_id) for n in ("a", "b")]
    threads = []
    pipe = Recorder().run(backend, rts, batch=2, first=lambda: threads.append(threading.current_thread().name))
    assert threads == ["pipeline"] and [rt.frames for rt in rts] == [FRAMES, FRAMES]
    assert pipe.batches < 2 * FRAMES  # frames of both cameras went through shared backend calls
    assert {"wait", "infer", "judge"} <= set(pipe.stages.summary())


def test_cameras_that_always_have_a_frame_are_served_in_turn(tmp_path, backend, tiny_model):
    """Live cameras faster than the model always hold a newest frame; so do recordings read losslessly, whose
    camera refills its slot as soon as it is taken. With a batch of one, each gather must serve the next
    camera, not the first one again."""
    rts = [_runtime(tmp_path, n, 1e9, tiny_model.model_id) for n in ("a", "b", "c")]
    pipe = Pipeline(backend, rts, 1, lambda *a: None, lambda rt: None, lambda rt: None)
    for rt in rts:
        rt.camera.start()
    served = []
    try:
        for _ in range(7):
            for rt in rts:  # every camera holds a frame
                while rt.camera._slot is None:
                    rt.camera.wait_any(0.05)
            served += [rt.name for rt, _ in pipe._gather()]
    finally:
        for rt in rts:
            rt.camera.stop()
    assert served == ["a", "b", "c", "a", "b", "c", "a"]
