"""A test helper: an ASGI app served by uvicorn in a thread, on a free loopback port."""

import socket
import threading
from contextlib import contextmanager

import uvicorn


@contextmanager
def serving(app):
    """Serve ``app`` on a socket bound to 127.0.0.1 port 0 (no race for the port); yield its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        thread.join(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
