"""The MQTT link's topics, and what it says when the broker cannot be reached."""

from __future__ import annotations

import time

from agent.mqtt import Topics

VERBS = ("line", "calibrate")


def test_topics():
    t = Topics("hgad", "dev1")
    assert t.camera("cam1", "alert") == "hgad/dev1/cam1/alert"
    assert t.parse_command("hgad/dev1/cam1/line/set", VERBS) == ("cam1", "line")
    assert t.parse_command("hgad/dev1/cam1/calibrate/set", VERBS) == ("cam1", "calibrate")
    assert t.parse_command("hgad/dev2/cam1/line/set", VERBS) is None
    assert t.parse_command("hgad/dev1/cam1/line/state", VERBS) is None


def test_an_unreachable_broker_is_a_warning_naming_it_then_info_when_connected(tmp_path, caplog):
    """Nothing listens on the configured port: within seconds a warning names host:port and why, one per
    backoff step; when a broker appears there, an info line says it connected and the status says so."""
    from agent.config import parse_config
    from agent.mqtt import MQTTLink
    from agent.store import AgentStore, Writer
    from calibration.db import open_database

    from .conftest import Broker
    from .test_agent_alerts import _agent_cfg

    broker = Broker(tmp_path)  # its port, not yet listening
    video = tmp_path / "v.avi"
    video.write_bytes(b"")
    base = _agent_cfg(tmp_path, video)
    cfg = parse_config(
        {"model": base.model, "cameras": [{"name": "c", "source": str(video), "line": "l"}],
         "mqtt": {"port": broker.port, "reconnect_min_s": 1, "reconnect_max_s": 2}}
    )  # fmt: skip
    store = AgentStore(open_database(tmp_path / "a.sqlite"), tmp_path / "hm", cfg.storage)
    writer = Writer(store)
    link = MQTTLink(cfg, store, writer, lambda *a: None, lambda: [])
    with caplog.at_level("INFO", logger="agent.mqtt"):
        t0 = time.monotonic()
        link.start()
        while not any(r.msg == "mqtt broker unreachable" for r in caplog.records) and time.monotonic() - t0 < 15:
            time.sleep(0.05)
        first = time.monotonic() - t0
        warning = next(r for r in caplog.records if r.msg == "mqtt broker unreachable")
        assert first < 15 and warning.levelname == "WARNING"
        assert warning.fields["broker"] == f"127.0.0.1:{broker.port}" and "refused" in warning.fields["reason"].lower()
        status = link.status()
        assert not status["connected"] and status["address"] == f"127.0.0.1:{broker.port}" and status["error"]
        broker.start()
        try:
            assert link.connected.wait(15)
            assert any(r.msg == "mqtt connected" and r.levelname == "INFO" for r in caplog.records)
            assert link.status()["connected"] and link.status()["error"] is None
        finally:
            link.stop()
            broker.stop()
    assert not any(r.levelname == "WARNING" and r.msg == "mqtt connection lost" for r in caplog.records)
