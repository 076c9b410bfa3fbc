"""Serve a directory over HTTP on 127.0.0.1, so a generated pool is downloaded the real way."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from curate.errors import UserError

logger = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 10.0


class _QuietHandler(SimpleHTTPRequestHandler):
    """Files under the served directory; request lines go to ``logging`` at debug level."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        logger.debug("%s %s", self.address_string(), format % args)

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()


@contextmanager
def serve_directory(path: Path | str) -> Iterator[str]:
    """Serve ``path`` on 127.0.0.1 at a port the OS picks; yield the base URL (ending in "/").

    The server runs in a daemon thread and is shut down and closed on exit from the block.
    """
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"cannot serve {root}: not a directory")
    handler = functools.partial(_QuietHandler, directory=str(root.resolve()))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    host, port = server.server_address[:2]
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True,
        name=f"serve-{port}",
    )  # fmt: skip
    thread.start()
    base_url = f"http://{host}:{port}/"
    logger.info("serving %s at %s", root, base_url)
    try:
        yield base_url
    finally:
        server.shutdown()
        server.server_close()
        thread.join(SHUTDOWN_TIMEOUT_S)
        logger.info("stopped serving %s", root)
