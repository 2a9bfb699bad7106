"""The console's HTTP routes: the pages (static files shipped in the package), the JSON API, live updates by
server-sent events. Actions call the same dispatcher as MQTT commands, so they are validated, applied and
answered exactly alike (and their state topics go out on MQTT as well).

Reads need a viewer's or an operator's session (none when no login is configured), actions an operator's and
the CSRF token (auth.py). Handlers that read the database or encode a frame are plain functions, which
Starlette runs in its thread pool; actions await the dispatcher's future, so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..dispatcher import Dispatcher, Outcome
from .auth import COOKIE, CSRF_HEADER, Auth, Identity
from .views import ALERT_TYPES, ConsoleData

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
COMMAND_TIMEOUT_S = 30.0
EVENT_INTERVAL_S = 1.0


class Refused(Exception):
    def __init__(self, status: int, error: str):
        super().__init__(error)
        self.status = status


def _json_body(raw: bytes) -> bytes:
    return raw if raw.strip() else b"{}"


class Console:
    def __init__(self, data: ConsoleData, dispatcher: Dispatcher, auth: Auth, live_fps: float):
        self.data, self.dispatcher, self.auth, self.live_fps = data, dispatcher, auth, live_fps

    # ------------------------------------------------------------------ access
    def identity(self, request: Request) -> Identity:
        return self.auth.identify(request.cookies.get(COOKIE))

    def reader(self, request: Request) -> Identity:
        who = self.identity(request)
        if who.role is None:
            raise Refused(401, "log in first")
        return who

    def actor(self, request: Request) -> Identity:
        who = self.reader(request)
        origin = request.headers.get("origin")
        if origin and origin.split("://", 1)[-1] != request.headers.get("host"):
            raise Refused(403, f"a request from {origin} is not the console's own")
        if not self.auth.csrf_ok(who, request.headers.get(CSRF_HEADER)):
            raise Refused(403, "missing or wrong X-CSRF-Token (reload the page)")
        if not who.may_act:
            raise Refused(403, "a viewer may look, not act: log in as an operator")
        return who

    # ------------------------------------------------------------------ commands
    async def outcome(self, future: Future[Outcome]) -> JSONResponse:
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(future), COMMAND_TIMEOUT_S)
        except asyncio.TimeoutError:
            return JSONResponse({"ok": False, "error": "the agent did not answer in time", "state": None}, 504)
        state = result.state.__dict__ if hasattr(result.state, "__dict__") else result.state
        body = {"ok": result.ok, "error": result.error, "state": state}
        return JSONResponse(body, 200 if result.ok else 400)

    def camera_command(self, verb: str) -> Callable:
        async def handler(request: Request) -> Response:
            self.actor(request)
            body = _json_body(await request.body())
            return await self.outcome(self.dispatcher.submit(request.path_params["name"], verb, body))

        return handler

    def device_command(self, verb: str, body: Callable[[Request, bytes], bytes]) -> Callable:
        async def handler(request: Request) -> Response:
            who = self.actor(request)
            raw = body(request, _json_body(await request.body()))
            return await self.outcome(self.dispatcher.submit_device(verb, raw, who.role or "operator"))

        return handler

    # ------------------------------------------------------------------ pages and reads
    def index(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    def session(self, request: Request) -> Response:
        who = self.identity(request)
        body = {"role": who.role, "login_required": self.auth.required, "csrf": self.auth.csrf(who)}
        return JSONResponse(body | {"live_fps": self.live_fps})

    async def login(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
            cookie = self.auth.login(str(body.get("role", "")), str(body.get("password", "")))
        except (ValueError, AttributeError):
            cookie = None
        if cookie is None:
            client = request.client.host if request.client else "?"
            log.info("console login refused", extra={"fields": {"client": client}})
            return JSONResponse({"ok": False, "error": "wrong role or password"}, 401)
        response = JSONResponse({"ok": True, "role": body["role"]})
        max_age = int(self.auth.cfg.session_hours * 3600)
        response.set_cookie(COOKIE, cookie, max_age=max_age, httponly=True, samesite="strict")
        return response

    def logout(self, request: Request) -> Response:
        response = JSONResponse({"ok": True})
        response.delete_cookie(COOKIE)
        return response

    def cameras(self, request: Request) -> Response:
        self.reader(request)
        return JSONResponse(self.data.cameras())

    def frame(self, request: Request) -> Response:
        self.reader(request)
        jpeg = self.data.frame_jpeg(request.path_params["name"], request.query_params.get("heatmap") == "1")
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"}) if jpeg else _missing()

    def scores(self, request: Request) -> Response:
        self.reader(request)
        result = self.data.scores(request.path_params["name"], _number(request, "seconds", 300.0))
        return JSONResponse(result) if result is not None else _missing()

    def alerts(self, request: Request) -> Response:
        self.reader(request)
        q = request.query_params
        kind = q.get("type") or None
        if kind is not None and kind not in ALERT_TYPES:
            raise Refused(400, f"type: {kind!r} is not one of {', '.join(ALERT_TYPES)}")
        limit = int(min(max(_number(request, "limit", 50), 1), 1000))
        when = {"since": _number(request, "since", None), "until": _number(request, "until", None)}
        return JSONResponse(self.data.alerts(limit, q.get("camera") or None, q.get("line") or None, type=kind, **when))

    def alert(self, request: Request) -> Response:
        self.reader(request)
        found = self.data.alert(request.path_params["event_id"])
        return JSONResponse(found) if found else _missing()

    def alert_image(self, which: str) -> Callable:
        def handler(request: Request) -> Response:
            self.reader(request)
            path = self.data.alert_file(request.path_params["event_id"], which)
            return FileResponse(path, media_type="image/jpeg") if path else _missing()

        return handler

    def profiles(self, request: Request) -> Response:
        self.reader(request)
        return JSONResponse(self.data.profiles_by_line())

    def health(self, request: Request) -> Response:
        self.reader(request)
        return JSONResponse(self.data.health())

    async def events(self, request: Request) -> Response:
        self.reader(request)
        headers = {"Cache-Control": "no-store"}
        return StreamingResponse(_events(request, self.data), media_type="text/event-stream", headers=headers)


def _feedback_body(request: Request, raw: bytes) -> bytes:
    body = json.loads(raw)
    if not isinstance(body, dict):
        raise Refused(400, 'expected a JSON object like {"label": "false_alarm"}')
    return json.dumps(body | {"event_id": request.path_params["event_id"]}).encode()


def build_app(c: Console) -> Starlette:
    routes = [
        Route("/", c.index),
        Route("/api/session", c.session),
        Route("/api/login", c.login, methods=["POST"]),
        Route("/api/logout", c.logout, methods=["POST"]),
        Route("/api/cameras", c.cameras),
        Route("/api/cameras/{name}/frame.jpg", c.frame),
        Route("/api/cameras/{name}/scores", c.scores),
        Route("/api/cameras/{name}/line", c.camera_command("line"), methods=["POST"]),
        Route("/api/cameras/{name}/calibrate", c.camera_command("calibrate"), methods=["POST"]),
        Route("/api/alerts", c.alerts),
        Route("/api/alerts/{event_id}", c.alert),
        Route("/api/alerts/{event_id}/heatmap.jpg", c.alert_image("heatmap")),
        Route("/api/alerts/{event_id}/frame.jpg", c.alert_image("frame")),
        Route("/api/alerts/{event_id}/feedback", c.device_command("feedback", _feedback_body), methods=["POST"]),
        Route("/api/profiles", c.profiles),
        Route("/api/profiles/activate", c.device_command("profile", lambda r, raw: raw), methods=["POST"]),
        Route("/api/health", c.health),
        Route("/api/events", c.events),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, exception_handlers={Refused: _refused, ValueError: _bad_value})


async def _events(request: Request, data: ConsoleData):
    """Every second: the cameras (state, calibration progress), the newest alert's id, the broker's state."""
    while not await request.is_disconnected():
        head = await asyncio.to_thread(data.alerts, 1)
        health = await asyncio.to_thread(data.stats)
        payload = {
            "ts": time.time(),
            "cameras": await asyncio.to_thread(data.cameras),
            "latest_alert": head[0]["event_id"] if head else None,
            "broker": health.get("broker"),
        }
        yield f"event: update\ndata: {json.dumps(payload)}\n\n"
        await asyncio.sleep(EVENT_INTERVAL_S)


def _number(request: Request, key: str, default: Any) -> Any:
    value = request.query_params.get(key)
    if value in (None, ""):
        return default
    try:
        return float(value)
    except ValueError:
        raise Refused(400, f"{key}: {value!r} is not a number") from None


def _missing() -> Response:
    return JSONResponse({"ok": False, "error": "not found"}, 404)


async def _refused(request: Request, exc: Exception) -> Response:
    status = exc.status if isinstance(exc, Refused) else 400
    return JSONResponse({"ok": False, "error": str(exc)}, status)


async def _bad_value(request: Request, exc: Exception) -> Response:
    return JSONResponse({"ok": False, "error": f"bad request: {exc}"}, 400)
