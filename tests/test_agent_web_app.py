"""The console's JSON API against a real agent (`hgad-edge run`, its own process), a real broker and the real
SQLite file: what the pages read, and the actions, which go through the same dispatcher as MQTT commands."""

from __future__ import annotations

import dataclasses
import http.cookiejar
import json
import re
import sqlite3
import urllib.error
import urllib.request
import uuid

import pytest

from agent.messages import CameraState
from agent.web.app import build_app  # noqa: F401 - the module under test, served by the agent below
from calibration.db import open_database
from calibration.store import ProfileStore

from .rig import build_stream, make_rig, wait_until, write_stream
from .test_agent_e2e import REQUIRED


class Client:
    def __init__(self, base: str):
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.csrf = ""

    def request(self, path: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, object]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, headers=headers or {})
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with self.opener.open(req, timeout=30) as r:
                status, raw, kind = r.status, r.read(), r.headers.get("content-type", "")
        except urllib.error.HTTPError as e:
            status, raw, kind = e.code, e.read(), e.headers.get("content-type", "")
        return status, json.loads(raw) if "json" in kind else raw

    def get(self, path: str):
        return self.request(path)

    def post(self, path: str, body: dict, csrf: bool = True, **headers):
        return self.request(path, body, ({"X-CSRF-Token": self.csrf} if csrf else {}) | headers)

    def session(self) -> dict:
        _, s = self.get("/api/session")
        self.csrf = s["csrf"]
        return s


def console_url(rig, timeout: float = 120) -> str:
    wait_until(lambda: "msg=console url=" in rig.output(), timeout, "the console's address in the agent's log")
    return re.search(r"msg=console url=(\S+)", rig.output()).group(1).rstrip("/")


@pytest.fixture
def running(tmp_path, tiny_model_dir, tiny_model, calibrated_db, broker, collector_factory):
    """An agent on a looping recording with two defect episodes, its console on a free port; lines fabric (two
    profile versions) and pcb."""
    rig = make_rig(tmp_path, tiny_model_dir, broker.port, calibrated_db)
    store = ProfileStore(open_database(rig.db))
    # A second version of the real fabric calibration (the same thresholds), and a pcb profile to switch to.
    v2 = store.save(store.active("fabric").replace(calibration_id=uuid.uuid4().hex))
    pcb = store.active("fabric").replace(calibration_id=uuid.uuid4().hex, line="pcb")
    store.save(pcb)
    video = write_stream(tmp_path / "line.avi", build_stream([("normal", 10), ("defect", 5), ("normal", 12)]))
    config = rig.config(video, camera={"loop": True, "realtime": True}, web={"enabled": True, "port": 0})
    col = collector_factory(broker.port)
    rig.start(config)
    try:
        yield rig, config, Client(console_url(rig)), col, v2
    finally:
        rig.stop()


def test_the_api_serves_cameras_alerts_profiles_and_health(running):
    _, _, client, _, v2 = running
    assert client.session()["role"] == "operator"  # loopback, no password file: no login
    status, cameras = client.get("/api/cameras")
    assert status == 200 and [c["name"] for c in cameras] == ["cam1"]
    assert set(cameras[0]) >= {f.name for f in dataclasses.fields(CameraState)} | {"name"}
    wait_until(lambda: any(a["type"] == "end" for a in client.get("/api/alerts")[1]), 120, "an alert that ended")
    status, alerts = client.get("/api/alerts?limit=5&camera=cam1&line=fabric")
    assert status == 200 and alerts and all(set(a) >= REQUIRED for a in alerts)
    assert [a["started"] for a in alerts] == sorted((a["started"] for a in alerts), reverse=True)  # newest first
    assert client.get("/api/alerts?camera=cam9")[1] == [] and client.get("/api/alerts?type=odd")[0] == 400
    eid = next(a["event_id"] for a in alerts if a["type"] == "end")
    status, jpeg = client.get(f"/api/alerts/{eid}/heatmap.jpg")
    assert status == 200 and jpeg[:2] == b"\xff\xd8"
    detail = client.get(f"/api/alerts/{eid}")[1]
    assert detail["scores"] and detail["has_frame"] and detail["feedback"] is None
    assert client.get("/api/cameras/cam1/frame.jpg?heatmap=1")[1][:2] == b"\xff\xd8"
    scores = client.get("/api/cameras/cam1/scores?seconds=60")[1]
    assert scores["points"] and scores["threshold"] > 0
    lines = {p["line"]: p for p in client.get("/api/profiles")[1]}
    assert set(lines) == {"fabric", "pcb"} and lines["fabric"]["active"]["calibration_id"] == v2.calibration_id
    assert [p["version"] for p in lines["fabric"]["history"]] == [2, 1] and lines["fabric"]["histogram"]["counts"]
    health = client.get("/api/health")[1]
    assert {"uptime_s", "cameras", "broker", "disk", "outbox_depth", "stages_ms", "drift"} <= set(health)


def test_actions_go_through_the_dispatcher_and_refuse_cross_site_requests(running):
    rig, _, client, col, _ = running
    client.session()
    assert client.post("/api/cameras/cam1/line", {"line": "pcb"}, csrf=False)[0] == 403
    assert client.post("/api/cameras/cam1/line", {"line": "pcb"}, Origin="http://evil.example")[0] == 403
    status, out = client.post("/api/cameras/cam1/line", {"line": "bottle"})
    # The same validation and the same words as the MQTT command, and the refusal on its state topic too.
    assert status == 400 and "line 'bottle' has no active calibration profile" in out["error"]
    col.wait_for(lambda ms: any(m.topic.endswith("cam1/line/state") and b"bottle" in m.payload for m in ms))
    status, out = client.post("/api/cameras/cam1/line", {"line": "pcb"})
    assert status == 200 and out["ok"] and out["state"]["line"] == "pcb"
    col.wait_for(lambda ms: any(m.topic.endswith("cam1/line/state") and b'"line": "pcb"' in m.payload for m in ms))
    status, out = client.post("/api/profiles/activate", {"calibration_id": "0" * 32})
    assert status == 400 and "no profile" in out["error"]
    old = client.get("/api/profiles")[1]
    v1 = next(p for line in old if line["line"] == "fabric" for p in line["history"] if p["version"] == 1)
    status, out = client.post("/api/profiles/activate", {"calibration_id": v1["calibration_id"]})
    assert status == 200 and out["state"]["version"] == 1 and out["state"]["cameras"] == []  # cam1 is on pcb now
    con = sqlite3.connect(rig.db)
    assert con.execute("SELECT version FROM calibrations WHERE line='fabric' AND active=1").fetchall() == [(1,)]
    status, out = client.post("/api/cameras/cam1/calibrate", {"frames": 3})
    assert status == 400 and "between 20" in out["error"]


def test_a_false_alarm_mark_survives_a_restart(running, tmp_path):
    rig, config, client, _, _ = running
    client.session()
    wait_until(lambda: client.get("/api/alerts?type=end")[1], 120, "an alert that ended")
    eid = client.get("/api/alerts?type=end")[1][0]["event_id"]
    status, out = client.post(f"/api/alerts/{eid}/feedback", {"label": "false_alarm"})
    assert status == 200 and out["state"]["label"] == "false_alarm" and out["state"]["sample"]
    assert client.post(f"/api/alerts/{eid}/feedback", {"label": "maybe"})[0] == 400
    before = rig.output().count("msg=console url=")
    rig.stop()
    rig.start(config)
    wait_until(lambda: rig.output().count("msg=console url=") > before, 120, "the restarted agent's console")
    again = Client(_last_url(rig))
    assert again.get(f"/api/alerts/{eid}")[1]["feedback"] == "false_alarm"
    assert (tmp_path / "state" / "normals" / "fabric" / f"{eid}.jpg").is_file()


def _last_url(rig) -> str | None:
    found = re.findall(r"msg=console url=(\S+)", rig.output())
    return found[-1].rstrip("/") if found else None


def test_with_a_login_configured_the_console_refuses_strangers_and_viewers_may_only_look(
    tmp_path, tiny_model_dir, calibrated_db, broker
):
    (tmp_path / "op").write_text("act-now\n")
    (tmp_path / "view").write_text("just-look\n")
    rig = make_rig(tmp_path, tiny_model_dir, broker.port, calibrated_db)
    video = write_stream(tmp_path / "line.avi", build_stream([("normal", 10)]))
    web = {"enabled": True, "port": 0, "operator_password_file": str(tmp_path / "op")}
    web["viewer_password_file"] = str(tmp_path / "view")
    rig.start(rig.config(video, camera={"loop": True, "realtime": True}, web=web))
    try:
        client = Client(console_url(rig))
        assert client.session()["role"] is None and client.get("/api/cameras")[0] == 401
        assert (
            client.get("/api/alerts")[0] == 401 and client.post("/api/cameras/cam1/line", {"line": "fabric"})[0] == 401
        )
        assert client.request("/api/login", {"role": "operator", "password": "just-look"})[0] == 401
        assert client.request("/api/login", {"role": "viewer", "password": "just-look"})[0] == 200
        client.session()
        assert client.get("/api/cameras")[0] == 200
        status, out = client.post("/api/cameras/cam1/line", {"line": "fabric"})
        assert status == 403 and "viewer may look" in out["error"]
        operator = Client(client.base)
        assert operator.request("/api/login", {"role": "operator", "password": "act-now"})[0] == 200
        operator.session()
        assert operator.post("/api/cameras/cam1/line", {"line": "fabric"})[0] == 200
    finally:
        rig.stop()
    assert "act-now" not in rig.output() and "just-look" not in rig.output()
