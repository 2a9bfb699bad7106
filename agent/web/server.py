"""The console's HTTP server: uvicorn serving the app on its own thread and event loop.

Starlette and uvicorn: maintained, small (pure Python beside the anyio and h11 the project already pulls in),
and an ASGI server runs beside a threaded daemon as one more thread with its own loop: server-sent events cost
no thread per client, and actions wait for the pipeline without holding a worker. The port is bound here,
before anything starts, so a port in use is one configuration error naming `web.port`.
"""

from __future__ import annotations

import logging
import socket
import threading

import uvicorn

from hgad.errors import BadInputError

log = logging.getLogger(__name__)


class WebServer:
    def __init__(self, app, host: str, port: int):
        self.host, self.port = host, port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError as exc:
            self.sock.close()
            raise BadInputError(f"web.port: cannot listen on {host}:{port}: {exc.strerror}") from None
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._serve, name="web", daemon=True)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}/"

    def _serve(self) -> None:
        self.server.run(sockets=[self.sock])

    def start(self) -> None:
        self.thread.start()
        log.info("console", extra={"fields": {"url": self.url}})

    def stop(self, timeout: float = 5.0) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout)
        self.sock.close()
