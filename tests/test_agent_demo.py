"""The demo's parts: its model is the default recipe at a smaller size, its videos hold defect episodes at
known frames, and its summary fails on a missed episode or a false alarm. `make demo` runs it whole."""

from __future__ import annotations

import dataclasses

import cv2

from agent.demo import DemoSpec, Episode, LineResult, demo_config, make_video, summary
from hgad.config import ModelConfig


def test_the_demo_model_is_the_default_recipe_but_for_size_and_epochs(tmp_path):
    spec = DemoSpec(out=tmp_path, epochs=5)
    cfg = demo_config(spec)
    default = ModelConfig(classes=cfg.classes)
    assert cfg.image_size == spec.size and cfg.train.epochs == 5
    same = dataclasses.replace(
        cfg, image_size=default.image_size, train=dataclasses.replace(cfg.train, epochs=default.train.epochs)
    )
    assert same == default
    assert demo_config(DemoSpec(out=tmp_path)).train == default.train


def test_videos_show_their_episodes_at_the_frames_they_say(tmp_path):
    spec = DemoSpec(out=tmp_path, episodes=2, episode_frames=3, gap_frames=4)
    episodes = make_video(spec, 1, "pcb", tmp_path / "pcb.avi")
    cap = cv2.VideoCapture(str(tmp_path / "pcb.avi"))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 4 + 2 * (3 + 4)
    assert [(e.first, e.last) for e in episodes] == [(4, 6), (11, 13)]
    # On pcb a hole looks like one more solder pad: a stain is shown in its place.
    assert "hole" not in [e.kind for e in episodes]


def _result(alert_frames: list[int]) -> LineResult:
    r = LineResult("fabric", "cam-fabric", 40, [Episode(10, 15, "hole"), Episode(25, 30, "scratch")])
    r.alerts = [{"frame_index": f} for f in alert_frames]
    return r


def test_the_summary_fails_on_a_missed_episode_or_a_false_alarm(tmp_path, capsys):
    spec = DemoSpec(out=tmp_path)
    db = tmp_path / "state" / "hgad-edge.sqlite"
    assert summary(spec, {"fabric": _result([11, 26])}, 1.0, db) == 0
    assert "every injected defect episode was caught, with no false alarm" in capsys.readouterr().out
    assert summary(spec, {"fabric": _result([11])}, 1.0, db) == 1
    assert summary(spec, {"fabric": _result([11, 26, 38])}, 1.0, db) == 1
    assert "0 defect episode(s) missed, 1 false alarm(s)" in capsys.readouterr().out.splitlines()[-1]
