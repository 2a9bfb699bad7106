"""The console's server: bound before it starts (a busy port is one error naming web.port), served on its
own thread, stopped cleanly."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from agent.web.server import WebServer
from hgad.errors import BadInputError


def _app() -> Starlette:
    return Starlette(routes=[Route("/", lambda r: PlainTextResponse("hello"))])


def test_it_serves_on_a_free_port_and_stops():
    server = WebServer(_app(), "127.0.0.1", 0)
    assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}/"
    server.start()
    try:
        with urllib.request.urlopen(server.url, timeout=10) as r:
            assert r.read() == b"hello"
    finally:
        server.stop()
    assert not server.thread.is_alive()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", server.port), timeout=1):
        pass


def test_a_port_in_use_is_one_error_naming_the_key():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(BadInputError, match=rf"web.port: cannot listen on 127.0.0.1:{port}"):
            WebServer(_app(), "127.0.0.1", port)
