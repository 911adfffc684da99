"""A small HTTP file server on 127.0.0.1 for download tests, with switches to misbehave.

    with FileServer({"dir/a.bin": b"..."}) as server:
        server.url               # "http://127.0.0.1:<port>/"
        server.corrupt.add("dir/a.bin")   # serve it with one byte flipped
        server.drop_once.add("dir/a.bin") # first GET sends half the body, then hangs up
        server.lie_size["dir/a.bin"] = 7  # Content-Length claims 7 bytes more than it sends
        server.fail["dir/a.bin"] = [503]  # answer these statuses first, one per request
        server.ignore_range = True        # answer Range requests with 200 and the whole file
        server.requests                   # [(path, Range header or None), ...]

Paths are the URL-unquoted paths below the root, so names may contain spaces.
"""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote


class FileServer:
    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.corrupt: set[str] = set()
        self.drop_once: set[str] = set()
        self.lie_size: dict[str, int] = {}
        self.fail: dict[str, list[int]] = {}
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/"

    def count(self, path: str) -> int:
        with self._lock:
            return sum(1 for p, _ in self.requests if p == path)

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    # The handler class closes over this server's state.
    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request per connection: a drop is a close

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                path = unquote(self.path.lstrip("/"))
                range_header = self.headers.get("Range")
                with server._lock:
                    server.requests.append((path, range_header))
                    statuses = server.fail.get(path)
                    status = statuses.pop(0) if statuses else None
                    drop = path in server.drop_once
                    server.drop_once.discard(path)
                if status is not None:
                    return self._send(status, b"")
                if path not in server.files:
                    return self._send(404, b"not found")
                body = server.files[path]
                if path in server.corrupt:
                    body = bytes([body[0] ^ 0xFF]) + body[1:]
                start = self._range_start(range_header)
                if start is not None and start >= len(body):
                    return self._send(416, b"", {"Content-Range": f"bytes */{len(body)}"})
                if start is None:
                    status, payload, extra = 200, body, {}
                else:
                    payload = body[start:]
                    extra = {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"}
                    status = 206
                length = len(payload) + server.lie_size.get(path, 0)
                if drop:
                    payload = payload[: len(payload) // 2]
                self._send(status, payload, extra, length=length)

            def _range_start(self, header: str | None) -> int | None:
                if header is None or server.ignore_range:
                    return None
                match = re.fullmatch(r"bytes=(\d+)-", header.strip())
                return int(match.group(1)) if match else None

            def _send(self, status: int, payload: bytes, extra: dict | None = None, length: int | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(payload) if length is None else length))
                self.send_header("Accept-Ranges", "none" if server.ignore_range else "bytes")
                for key, value in (extra or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)
                self.wfile.flush()

        return Handler
