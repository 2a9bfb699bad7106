"""Operators' verdicts on alerts and the false alarms kept as normal samples: bounded, exported for training."""

from __future__ import annotations

import os
import time

import cv2
import numpy as np
import pytest

from agent.config import FeedbackConfig, StorageConfig
from agent.feedback import FeedbackStore, export_samples
from agent.store import AgentStore
from calibration.db import open_database
from hgad.errors import BadInputError

from .test_agent_store import _record


def _stores(tmp_path, **cfg):
    engine = open_database(tmp_path / "a.sqlite")
    store = AgentStore(engine, tmp_path / "hm", StorageConfig())
    return store, FeedbackStore(engine, tmp_path / "normals", FeedbackConfig(**cfg))


def _alert(store, i: int, line: str = "l") -> str:
    rec = _record(i)
    rec.event["line"] = line
    _, jpeg = cv2.imencode(".jpg", np.full((40, 60, 3), i, np.uint8))
    rec.frame_jpeg = jpeg.tobytes()
    store.record_alert(rec)
    return rec.event["event_id"]


def test_a_false_alarm_keeps_its_frame_and_a_defect_verdict_takes_it_back(tmp_path):
    store, feedback = _stores(tmp_path)
    eid = _alert(store, 1)
    verdict = feedback.mark(eid, "false_alarm", "operator")
    assert verdict.label == "false_alarm" and verdict.line == "l" and os.path.isfile(verdict.sample)
    assert len(feedback.sample_frames("l")) == 1 and feedback.labels([eid]) == {eid: "false_alarm"}
    again = feedback.mark(eid, "defect", "operator")
    assert again.sample is None and feedback.samples("l") == [] and feedback.labels([eid]) == {eid: "defect"}
    with pytest.raises(BadInputError, match="no alert 'ffff'"):
        feedback.mark("ffff", "defect", "operator")


def test_kept_frames_are_bounded_per_line_and_by_age(tmp_path):
    store, feedback = _stores(tmp_path, max_per_line=3, max_age_days=1.0)
    ids = [_alert(store, i) for i in range(5)]
    for i, eid in enumerate(ids):
        feedback.mark(eid, "false_alarm", "operator")
        os.utime(feedback.samples("l")[-1], (time.time() - 10 + i,) * 2)
    kept = [p.stem for p in feedback.samples("l")]
    assert kept == sorted(ids)[-3:]  # the oldest went first
    assert feedback.retention(now=time.time() + 2 * 86400) == 3 and feedback.samples("l") == []


def test_export_writes_a_training_folder_per_line(tmp_path):
    store, feedback = _stores(tmp_path)
    for i, line in enumerate(("a", "a", "b")):
        feedback.mark(_alert(store, i, line), "false_alarm", "operator")
    counts = export_samples(tmp_path / "normals", tmp_path / "out")
    assert counts == {"a": 2, "b": 1}
    assert len(list((tmp_path / "out" / "a" / "train" / "good").glob("*.jpg"))) == 2
    assert export_samples(tmp_path / "normals", tmp_path / "only", "b") == {"b": 1}
