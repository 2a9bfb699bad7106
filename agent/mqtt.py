"""MQTT with paho-mqtt 2: connection lifecycle, retained state, the outbox publisher, command intake.

- The will (`offline`, retained) is set before connecting; the client id is unique per device.
- On every CONNACK with reason code 0: resubscribe, republish retained state, then `online`.
- The outbox is published in id order, at most `max_inflight` unacknowledged at once, only while
  connected. paho re-sends its own unacknowledged QoS 1 messages after a reconnect, so rows already
  handed to it are not published again by us in the same process; after a restart every row left in
  the outbox is published again (QoS 1: at least once; `event_id` is the idempotency key).
- paho calls on_publish while holding its message lock: the callback only queues the message id, and
  the publisher thread does the rest, so no lock of ours is ever taken inside paho's.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from .config import AgentConfig, read_password
from .store import AgentStore, OutboxMessage, Writer

log = logging.getLogger(__name__)

# While the broker stays unreachable at the longest backoff, a reminder every this many failed attempts.
REMIND_EVERY = 10


@dataclass(frozen=True)
class Topics:
    prefix: str
    device: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.device}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def stats(self) -> str:
        return f"{self.base}/stats"

    def camera(self, camera: str, leaf: str) -> str:
        return f"{self.base}/{camera}/{leaf}"

    def commands(self, verbs: Sequence[str]) -> list[str]:
        return [f"{self.base}/+/{verb}/set" for verb in verbs]

    def parse_command(self, topic: str, verbs: Sequence[str]) -> tuple[str, str] | None:
        """(camera, verb) for a command topic of this device."""
        parts = topic.split("/")
        base = self.base.split("/")
        if len(parts) != len(base) + 3 or parts[: len(base)] != base or parts[-1] != "set":
            return None
        if parts[-2] not in verbs:
            return None
        return parts[len(base)], parts[-2]


class MQTTLink:
    def __init__(
        self,
        cfg: AgentConfig,
        store: AgentStore,
        writer: Writer,
        on_command: Callable[[str, str, bytes], None],
        retained_state: Callable[[], list[tuple[str, bytes, int]]],
        on_alert_acked: Callable[[OutboxMessage, float], None] | None = None,
    ):
        self.cfg = cfg
        self.topics = Topics(cfg.mqtt.prefix, cfg.device_name)
        self.store = store
        self.writer = writer
        self.on_command = on_command
        self.retained_state = retained_state
        self.on_alert_acked = on_alert_acked
        self.verbs: Sequence[str] = ()  # the dispatcher's; subscribed as PREFIX/DEVICE/+/VERB/set
        self.connected = threading.Event()
        self.connects = 0
        self.disconnects = 0
        self.last_error = ""
        self.down_since: float | None = time.time()
        self._failures = 0
        self._stopping = False
        self._acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._inflight: dict[int, OutboxMessage] = {}
        self._last_sent_id = 0
        self._publisher = threading.Thread(target=self._publish_loop, name="mqtt-outbox", daemon=True)
        self.client = self._make_client()

    # ------------------------------------------------------------------ setup
    def _make_client(self) -> mqtt.Client:
        m = self.cfg.mqtt
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.cfg.client_id, clean_session=True)
        c.will_set(self.topics.status, "offline", qos=1, retain=True)
        if m.username:
            c.username_pw_set(m.username, read_password(m))
        if m.tls.enabled:
            c.tls_set(
                ca_certs=m.tls.ca_file, certfile=m.tls.cert_file, keyfile=m.tls.key_file, cert_reqs=ssl.CERT_REQUIRED
            )
            c.tls_insecure_set(m.tls.insecure)
        c.reconnect_delay_set(max(1, int(m.reconnect_min_s)), max(1, int(m.reconnect_max_s)))
        c.max_inflight_messages_set(m.max_inflight)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        c.on_connect_fail = self._on_connect_fail
        return c

    def start(self) -> None:
        m = self.cfg.mqtt
        self.client.connect_async(m.host, m.port, keepalive=m.keepalive_s)
        self.client.loop_start()
        self._publisher.start()

    def stop(self, grace_s: float = 5.0) -> None:
        """Publish `stopped`, give the outbox a moment to drain, disconnect (the will is not sent)."""
        self._stopping = True
        deadline = time.monotonic() + grace_s
        self.writer.flush(grace_s)
        self._wake.set()
        while time.monotonic() < deadline and self.connected.is_set() and (self._inflight or self._has_pending()):
            time.sleep(0.05)
        if self.connected.is_set():
            info = self.client.publish(self.topics.status, "stopped", qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(max(0.5, deadline - time.monotonic()))
        self._stop.set()
        self._wake.set()
        self._publisher.join(2.0)
        self.client.disconnect()
        self.client.loop_stop()

    def wake(self) -> None:
        """New rows are in the outbox."""
        self._wake.set()

    @property
    def address(self) -> str:
        return f"{self.cfg.mqtt.host}:{self.cfg.mqtt.port}"

    def status(self) -> dict[str, Any]:
        """For stats and the console's health page."""
        return {
            "connected": self.connected.is_set(),
            "address": self.address,
            "connects": self.connects,
            "disconnects": self.disconnects,
            "error": self.last_error or None,
            "down_since": self.down_since,
        }

    # ------------------------------------------------------------------ paho callbacks (network thread)
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code != 0:
            self._failed(f"the broker refused the connection: {reason_code}")
            return
        self.connects += 1
        for t in self.topics.commands(self.verbs):
            client.subscribe(t, qos=1)
        for topic, payload, qos in self.retained_state():
            client.publish(topic, payload, qos=qos, retain=True)
        client.publish(self.topics.status, "online", qos=1, retain=True)
        if self._failures:
            log.info(
                "mqtt connected after failures", extra={"fields": {"broker": self.address, "failures": self._failures}}
            )
        self.last_error, self._failures, self.down_since = "", 0, None
        # Logged before the event is set, so whoever waits on `connected` finds the line already written.
        log.info("mqtt connected", extra={"fields": {"broker": self.address, "client_id": self.cfg.client_id}})
        self.connected.set()
        self._wake.set()

    def _on_connect_fail(self, client, userdata) -> None:
        self._failed(self._probe())

    def _probe(self) -> str:
        """Why the broker cannot be reached: paho does not say, so ask the network once more."""
        m = self.cfg.mqtt
        try:
            with socket.create_connection((m.host, m.port), timeout=min(5.0, m.keepalive_s)):
                return "the TCP connection opens but the MQTT handshake fails (TLS or protocol settings?)"
        except socket.gaierror as exc:
            return f"cannot resolve the host name: {exc.strerror}"
        except OSError as exc:
            return exc.strerror or type(exc).__name__

    def _failed(self, reason: str) -> None:
        """One warning per backoff step while the delay grows, then a reminder every REMIND_EVERY attempts."""
        self._failures += 1
        changed = reason != self.last_error
        self.last_error = reason
        n, m = self._failures, self.cfg.mqtt
        growing = m.reconnect_min_s * 2 ** (n - 1) <= m.reconnect_max_s
        if changed or growing or n % REMIND_EVERY == 0:
            fields = {"broker": self.address, "reason": reason, "attempts": n, "outbox": "alerts wait in the outbox"}
            log.warning("mqtt broker unreachable", extra={"fields": fields})

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        if not was:
            return
        self.disconnects += 1
        self.down_since = time.time()
        if self._stopping:
            log.info("mqtt disconnected", extra={"fields": {"broker": self.address, "reason": str(reason_code)}})
        else:
            self.last_error = f"connection lost: {reason_code}"
            log.warning("mqtt connection lost", extra={"fields": {"broker": self.address, "reason": str(reason_code)}})

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        parsed = self.topics.parse_command(msg.topic, self.verbs)
        if parsed is None:
            return
        camera, verb = parsed
        try:
            self.on_command(camera, verb, bytes(msg.payload))
        except Exception:
            log.exception("command handler failed", extra={"fields": {"topic": msg.topic}})

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._acks.put(mid)
        self._wake.set()

    # ------------------------------------------------------------------ other messages
    def publish_state(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False) -> None:
        """Fire-and-forget state and stats; dropped while disconnected (retained state is republished on
        every connect)."""
        if self.connected.is_set():
            self.client.publish(topic, payload, qos=qos, retain=retain)

    # ------------------------------------------------------------------ outbox publisher thread
    def _has_pending(self) -> bool:
        return bool(self.store.pending(self._last_sent_id, 1))

    def inflight(self) -> int:
        return len(self._inflight)

    def _drain_acks(self) -> None:
        acked: list[OutboxMessage] = []
        while True:
            try:
                mid = self._acks.get_nowait()
            except queue.Empty:
                break
            msg = self._inflight.pop(mid, None)
            if msg is not None:
                acked.append(msg)
        if not acked:
            return
        now = time.monotonic()
        ids = [m.id for m in acked]
        self.writer.submit(lambda: self.store.ack(ids))
        if self.on_alert_acked:
            for m in acked:
                if m.kind == "alert":
                    self.on_alert_acked(m, now)

    def _publish_loop(self) -> None:
        window = self.cfg.mqtt.max_inflight
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            self._drain_acks()
            if not self.connected.is_set():
                continue
            room = window - len(self._inflight)
            if room <= 0:
                continue
            try:
                batch = self.store.pending(self._last_sent_id, room)
            except Exception as exc:  # a busy or damaged database must not kill the publisher
                log.error("outbox read failed", extra={"fields": {"error": str(exc)[:200]}})
                continue
            for msg in batch:
                if not self.connected.is_set():
                    break
                info = self.client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain)
                if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                    log.warning("outbox publish refused", extra={"fields": {"id": msg.id, "rc": int(info.rc)}})
                    break
                self._last_sent_id = msg.id
                if msg.qos == 0:
                    self.writer.submit(lambda i=msg.id: self.store.ack([i]))
                else:
                    self._inflight[info.mid] = msg
            if batch:
                self._wake.set()  # there may be more
