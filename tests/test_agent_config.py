"""Agent configuration: the example file is valid, and bad configs are one clear line and exit code 2."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from agent.config import ConfigError, load_config, parse_config

from .conftest import ROOT, hgad_cli


@pytest.fixture
def base(tmp_path, tiny_model_dir) -> dict:
    video = tmp_path / "line.avi"
    video.write_bytes(b"")
    return {
        "model": str(tiny_model_dir),
        "cameras": [{"name": "cam1", "source": str(video), "line": "fabric"}],
        "storage": {"state_dir": str(tmp_path / "state")},
    }


def test_example_config_is_complete_and_valid(tmp_path, tiny_model_dir):
    data = yaml.safe_load((ROOT / "config.example.yaml").read_text())
    data["model"] = str(tiny_model_dir)
    (tmp_path / "line3.mp4").write_bytes(b"")
    data["cameras"][0]["source"] = str(tmp_path / "line3.mp4")
    cfg = parse_config(data, "config.example.yaml", tmp_path)
    assert cfg.cameras[0].line == "fabric"
    # Every option of every section is documented in the example (same keys as the dataclasses).
    from dataclasses import fields

    from agent import config as c

    for cls, section in (
        (c.AgentConfig, data),
        (c.MQTTConfig, data["mqtt"]),
        (c.TLSConfig, data["mqtt"]["tls"]),
        (c.CameraConfig, data["cameras"][0]),
        (c.DecisionConfig, data["decision"]),
        (c.StorageConfig, data["storage"]),
        (c.CalibrationConfig, data["calibration"]),
        (c.HealthConfig, data["health"]),
        (c.WebConfig, data["web"]),
        (c.FeedbackConfig, data["feedback"]),
    ):
        assert {f.name for f in fields(cls)} == set(section), cls.__name__


def test_relative_paths_are_relative_to_the_file(tmp_path, tiny_model_dir):
    shutil.copytree(tiny_model_dir, tmp_path / "models" / "m")
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "a.mp4").write_bytes(b"")
    (tmp_path / "cfg.yaml").write_text("model: models/m\ncameras:\n  - {name: c, source: videos/a.mp4, line: fabric}\n")
    cfg = load_config(tmp_path / "cfg.yaml")
    assert Path(cfg.model) == (tmp_path / "models/m").resolve()
    assert Path(cfg.cameras[0].source) == (tmp_path / "videos/a.mp4").resolve()


def test_password_never_appears_in_the_config_repr(base):
    base["mqtt"] = {"username": "line3", "password": "s3cret-Pa55"}
    cfg = parse_config(base)
    assert "s3cret-Pa55" not in repr(cfg)


BAD = [
    ("unknown_top", lambda c: c.update(modle="x"), "modle: unknown key"),
    ("missing_model", lambda c: c.pop("model"), "model: required key is missing"),
    ("model_not_dir", lambda c: c.update(model="/nonexistent/model"), "model: /nonexistent/model is not a model"),
    ("no_cameras", lambda c: c.update(cameras=[]), "cameras: at least one camera"),
    ("cameras_not_list", lambda c: c.update(cameras={"name": "x"}), "cameras: expected a list"),
    ("camera_missing_line", lambda c: c["cameras"][0].pop("line"), "cameras[0].line: required key is missing"),
    ("camera_bad_name", lambda c: c["cameras"][0].update(name="cam/1"), "cameras[0].name"),
    ("camera_dup", lambda c: c["cameras"].append(dict(c["cameras"][0])), "cameras[1].name: 'cam1' is used by two"),
    ("camera_type", lambda c: c["cameras"][0].update(type="webcam"), "cameras[0].type: 'webcam' is not one of"),
    ("camera_loop_type", lambda c: c["cameras"][0].update(loop="yes"), "cameras[0].loop: 'yes' is not true/false"),
    ("backend", lambda c: c.update(backend="onnx"), "backend: 'onnx' is not one of auto, torch, tensorrt, onnxruntime"),
    ("web_open", lambda c: c.update(web={"host": "0.0.0.0"}), "web.host: 0.0.0.0 is reachable from other machines"),
    ("web_port", lambda c: c.update(web={"port": 70000}), "web.port: 70000 is not a TCP port"),
    (
        "web_password",
        lambda c: c.update(web={"operator_password_file": "/no/pw"}),
        "web.operator_password_file: /no/pw",
    ),
    ("feedback", lambda c: c.update(feedback={"max_per_line": 0}), "feedback.max_per_line: 0 must be at least 1"),
    ("precision", lambda c: c.update(precision="fp8"), "precision: 'fp8' is not one of"),
    ("batch_type", lambda c: c.update(batch="four"), "batch: 'four' is not an integer"),
    ("batch_range", lambda c: c.update(batch=0), "batch: 0 must be between 1 and 64"),
    ("port_type", lambda c: c.update(mqtt={"port": "1883x"}), "mqtt.port: '1883x' is not an integer"),
    ("port_range", lambda c: c.update(mqtt={"port": 70000}), "mqtt.port: 70000 is not a TCP port"),
    ("prefix", lambda c: c.update(mqtt={"prefix": "hgad/#"}), "mqtt.prefix"),
    ("mqtt_unknown", lambda c: c.update(mqtt={"hostname": "x"}), "mqtt.hostname: unknown key (did you mean host?)"),
    (
        "password_both",
        lambda c: c.update(mqtt={"password": "a", "password_file": "/etc/hostname"}),
        "mqtt.password_file: give either",
    ),
    (
        "password_file_missing",
        lambda c: c.update(mqtt={"password_file": "/no/such/file"}),
        "mqtt.password_file: /no/such/file does not exist",
    ),
    (
        "tls_ca_missing",
        lambda c: c.update(mqtt={"tls": {"enabled": True, "ca_file": "/no/ca.pem"}}),
        "mqtt.tls.ca_file: /no/ca.pem does not exist",
    ),
    ("decision_zero", lambda c: c.update(decision={"open_after": 0}), "decision.open_after"),
    ("decision_type", lambda c: c.update(decision={"close_after": 2.5}), "decision.close_after: 2.5 is not an integer"),
    ("far_range", lambda c: c.update(calibration={"far": 1.5}), "calibration.far: 1.5 is not a rate"),
    (
        "live_frames",
        lambda c: c.update(calibration={"live_frames": 5}),
        "calibration.live_frames: 5 must be at least 20",
    ),
    ("retention", lambda c: c.update(storage={"max_events": 0}), "storage.max_events"),
    ("log_level", lambda c: c.update(log_level="loud"), "log_level: 'loud' is not one of"),
    ("device_id", lambda c: c.update(device_id="line 3"), "device_id: 'line 3' is not a valid name"),
    # Every rule reports its own key, not a neighbour's.
    ("stall", lambda c: c["cameras"][0].update(stall_timeout_s=0), "cameras[0].stall_timeout_s: 0.0 must be positive"),
    ("reopen", lambda c: c["cameras"][0].update(reopen_min_s=5, reopen_max_s=1), "cameras[0].reopen_max_s: 1.0 must"),
    ("max_age", lambda c: c.update(storage={"max_age_days": -1}), "storage.max_age_days: -1.0 must be positive"),
    ("min_free", lambda c: c.update(storage={"min_free_mb": -5}), "storage.min_free_mb: -5.0 must be at least 0"),
    ("reconnect", lambda c: c.update(mqtt={"reconnect_min_s": 0}), "mqtt.reconnect_min_s: 0.0 must be positive"),
    ("stats", lambda c: c.update(health={"state_interval_s": 0}), "health.state_interval_s: 0.0 must be positive"),
    ("line_name", lambda c: c["cameras"][0].update(line="fab/ric"), "cameras[0].line: 'fab/ric' is not a valid name"),
    # A recording that is not there at start: the camera, the key and the path, not a silent retry loop.
    (
        "missing_video",
        lambda c: c["cameras"][0].update(source="/no/such/video.avi"),
        "cameras[0].source: camera cam1: /no/such/video.avi does not exist",
    ),
    (
        "folder_is_a_file",
        lambda c: c["cameras"][0].update(source="/etc/hostname", type="folder"),
        "cameras[0].source: camera cam1: /etc/hostname is a file; a folder source needs a directory",
    ),
    (
        "video_is_a_folder",
        lambda c: c["cameras"][0].update(source="/tmp", type="file"),
        "cameras[0].source: camera cam1: /tmp is a directory",
    ),
    # A device's mode: both sides of a size, a real four-character code, and only where a mode can be asked.
    (
        "width_alone",
        lambda c: c["cameras"][0].update(source="0", width=1280),
        "cameras[0].height: camera cam1: give width and height together",
    ),
    ("fourcc", lambda c: c["cameras"][0].update(source="0", fourcc="MJPEG"), "cameras[0].fourcc: 'MJPEG' is not a"),
    (
        "mode_of_a_file",
        lambda c: c["cameras"][0].update(width=1280, height=720),
        "cameras[0].width: camera cam1: width, height set the mode of a device camera (a device index); a file",
    ),
    ("section_not_mapping", lambda c: c.update(health=[1, 2]), "health: expected a mapping"),
    ("device_name", lambda c: c.update(device="gpu0"), "device: 'gpu0' is not a device; use cpu, cuda"),
]
if not torch.cuda.is_available():
    BAD.append(("device_cuda", lambda c: c.update(device="cuda"), "device: cuda was asked for but CUDA is not"))


@pytest.mark.parametrize(("name", "mutate", "expect"), BAD, ids=[b[0] for b in BAD])
def test_bad_config_is_one_clear_error(name, mutate, expect, base):
    data = copy.deepcopy(base)
    mutate(data)
    with pytest.raises(ConfigError) as info:
        parse_config(data, "cfg.yaml")
    msg = str(info.value)
    assert msg.startswith("cfg.yaml: ") and expect in msg, msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("model: [unclosed\n", "not valid YAML at line"),
        ("- just\n- a list\n", "top level: expected a mapping"),
    ],
)
def test_bad_config_files_through_the_cli(text, expect, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text)
    r = hgad_cli("run", "--config", str(cfg))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and expect in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_missing_config_file_exit_code(tmp_path):
    r = hgad_cli("run", "--config", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2 and "config file does not exist" in r.stderr
