"""The demo's and the bench's broker: one that answers, and a subscriber that records what an operator sees."""

from __future__ import annotations

import json
import socket
import time

from agent.local_broker import Subscriber, local_broker


def test_the_broker_answers_and_the_subscriber_records_alerts_states_and_stats(broker, collector_factory):
    with local_broker() as (host, port, how):
        with socket.create_connection((host, port), timeout=2):
            pass
        assert str(port) in how
    seen = []
    sub = Subscriber("127.0.0.1", broker.port, "hgad/dev", seen.append)
    pub = collector_factory(broker.port)
    try:
        pub.publish("hgad/dev/cam1/alert", json.dumps({"type": "new", "n": 1}))
        pub.publish("hgad/dev/cam1/state", json.dumps({"frames": 3}))
        pub.publish("hgad/dev/cam1/line/state", json.dumps({"ok": True}))
        pub.publish("hgad/dev/stats", json.dumps({"uptime_s": 1}))
        pub.wait_for(lambda ms: len(ms) >= 4)
        deadline = time.monotonic() + 10
        while not (sub.stats and sub.states and seen) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sub.close()
    assert seen == sub.alerts == [{"type": "new", "n": 1}]
    assert [s for _, s in sub.states] == [{"frames": 3}] and sub.stats == {"uptime_s": 1}
