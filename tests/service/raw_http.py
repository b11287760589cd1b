"""HTTP/1.1 over a bare socket: to see what a server does with one connection (keep-alive,
slow clients), which HTTP client libraries hide."""

from __future__ import annotations

import re
import socket

_LENGTH = re.compile(rb"^content-length:\s*(\d+)\s*$", re.IGNORECASE | re.MULTILINE)


def connect(url: str, timeout: float = 30.0) -> socket.socket:
    """A connection to `url` (http://host:port); `timeout` only bounds a failing test."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=timeout)


def request(
    path: str, *, method: str = "GET", body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """(status, body) of the next response; ConnectionError if the server closed instead."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed by the server after {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    match = _LENGTH.search(head)
    length = int(match.group(1)) if match else 0
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the server mid-body")
        body += chunk
    return int(head.split()[1]), body


def closed_by_server(sock: socket.socket) -> bool:
    """Block until the server closes the connection (True) or sends something (False)."""
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True
