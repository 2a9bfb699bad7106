"""The bench's console viewers: the remote viewer asks what the cameras page asks, at the live rate. (Both
viewers run against a real agent in test_agent_bench_agent.py.)"""

from __future__ import annotations

import asyncio
import json
import threading
import time

from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from agent.console_viewers import remote_viewer
from agent.web.server import WebServer


def test_the_remote_viewer_asks_for_frames_events_and_charts():
    asked: list[str] = []
    lock = threading.Lock()

    def seen(request) -> None:
        with lock:
            asked.append(request.url.path)

    def cameras(request):
        seen(request)
        return JSONResponse([{"name": "cam1"}, {"name": "cam2"}])

    def frame(request):
        seen(request)
        return Response(b"\xff\xd8jpeg", media_type="image/jpeg")

    def scores(request):
        seen(request)
        return JSONResponse({"points": []})

    async def events(request):
        seen(request)

        async def stream():
            while True:
                yield f"event: update\ndata: {json.dumps({'t': time.time()})}\n\n"
                await asyncio.sleep(0.2)

        return StreamingResponse(stream(), media_type="text/event-stream")

    routes = [Route("/api/cameras", cameras), Route("/api/cameras/{n}/frame.jpg", frame)]
    routes += [Route("/api/cameras/{n}/scores", scores), Route("/api/events", events)]
    server = WebServer(Starlette(routes=routes), "127.0.0.1", 0)
    server.start()
    try:
        with remote_viewer(server.url, fps=4.0) as viewer:
            deadline = time.monotonic() + 15
            while (
                viewer.frames_shown() < 8 or "/api/cameras/cam1/scores" not in asked
            ) and time.monotonic() < deadline:
                time.sleep(0.1)
    finally:
        server.stop()
    assert viewer.frames_shown() >= 8
    assert {"/api/cameras/cam1/frame.jpg", "/api/cameras/cam2/frame.jpg", "/api/events"} <= set(asked)
    assert "/api/cameras/cam1/scores" in asked
