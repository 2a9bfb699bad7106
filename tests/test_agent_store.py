"""The agent's SQLite store on real files: the outbox's order and acks, retention, a full database."""

from __future__ import annotations

import json

from sqlalchemy import event

from agent.config import StorageConfig
from agent.store import AgentStore, AlertRecord, Writer, event_values
from calibration.db import open_database


def _record(i: int, event_id: str | None = None) -> AlertRecord:
    eid = event_id or f"e{i:04d}"
    row = event_values(
        event_id=eid,
        camera="cam1",
        line="l",
        model_id="m",
        calibration_id="c",
        status="open",
        opened_at="t",
        closed_at=None,
        created_ts=1000.0 + i,
        first_frame_index=i,
        last_frame_index=i,
        frame_index=i,
        score=2.0,
        peak_score=2.0,
        threshold=1.0,
        p_value=0.01,
        regions=[],
        messages=1,
        end_reason=None,
        latency_ms=1.0,
    )
    payload = json.dumps({"event_id": eid, "n": i}).encode()
    return AlertRecord(row, b"\xff\xd8jpeg" * 100, [("hgad/d/cam1/alert", payload, 1, False, "alert")], 0.0)


def test_outbox_keeps_order_and_acks(tmp_path):
    store = AgentStore(open_database(tmp_path / "a.sqlite"), tmp_path / "hm", StorageConfig())
    ids = [store.record_alert(_record(i))[0] for i in range(5)]
    assert ids == sorted(ids)
    store.ack(ids[:2])
    pending = store.pending(0, 10)
    assert [json.loads(m.payload)["n"] for m in pending] == [2, 3, 4]
    # Ids are never reused after deletes: a new alert sorts after every older one.
    store.ack([m.id for m in pending])
    assert store.record_alert(_record(9))[0] > ids[-1]


def test_retention_by_age_and_count_removes_heatmaps(tmp_path):
    store = AgentStore(
        open_database(tmp_path / "a.sqlite"),
        tmp_path / "hm",
        StorageConfig(max_age_days=1.0, max_events=3, min_free_mb=0),
    )
    for i in range(6):
        store.record_alert(_record(i))
    now = 1000.0 + 5 + 86400 * 1.0 - 2.5  # events 0..2 are older than a day
    out = store.retention(now=now)
    assert out["age"] == 3 and out["count"] == 0
    for i in range(6, 10):
        store.record_alert(_record(i))
    out = store.retention(now=now)
    assert out["count"] == 4
    left = [e.event_id for e in store.events()]
    assert left == ["e0007", "e0008", "e0009"]
    assert sorted(p.name for p in (tmp_path / "hm").iterdir()) == left
    assert store.outbox_depth() == 10  # undelivered alerts are never deleted by retention


def test_writer_survives_a_full_database_and_loses_nothing(tmp_path):
    """SQLite's max_page_count makes the database really full (SQLITE_FULL), as a full disk would."""
    engine = open_database(tmp_path / "a.sqlite")
    store = AgentStore(engine, tmp_path / "hm", StorageConfig(min_free_mb=0))
    for i in range(40):
        store.record_alert(_record(i))
    pages = engine.connect().exec_driver_sql("PRAGMA page_count").scalar()

    @event.listens_for(engine, "connect")
    def _cap(dbapi_connection, _record_):
        dbapi_connection.execute(f"PRAGMA max_page_count={pages + 2}")

    engine.dispose()
    writer = Writer(store, retry_s=0.05)
    writer.start()
    done = []
    for i in range(40, 60):
        writer.submit(lambda i=i: store.record_alert(_record(i)), done.append)
    assert writer.flush(60)
    writer.stop()
    assert len(done) == 20, writer.last_error
    # Space was made by deleting the oldest events; every new alert is in the outbox, in order.
    events = [e.event_id for e in store.events()]
    assert "e0000" not in events and "e0059" in events
    pending = [json.loads(m.payload)["n"] for m in store.pending(0, 100)]
    assert pending == list(range(60))
