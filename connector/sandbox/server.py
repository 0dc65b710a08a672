"""Serving a sandbox app: in a background thread for tests and the demo, or in the foreground."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server


@dataclass
class SandboxServer:
    app: Flask
    server: BaseWSGIServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        assert isinstance(host, str)  # an AF_INET(6) socket's name
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


# How often the serving thread looks for a stop: `stop()` waits up to this long (serve_forever's
# default, 0.5 s, made every test that starts a server half a second slower).
STOP_POLL_SECONDS = 0.02


def serve_in_thread(app: Flask, host: str = "127.0.0.1", port: int = 0) -> SandboxServer:
    """Start `app` on a threaded WSGI server; port 0 picks a free port."""
    server = make_server(host, port, app, threaded=True)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": STOP_POLL_SECONDS},
        name=f"sandbox-{app.name}",
        daemon=True,
    )
    thread.start()
    return SandboxServer(app=app, server=server, thread=thread)


def serve_forever(app: Flask, host: str, port: int) -> None:
    server = make_server(host, port, app, threaded=True)
    server.serve_forever()
