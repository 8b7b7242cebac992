"""Request body limits for the HTTP servers (components/serve): a body is read only up to a byte limit, so one
oversized (or endless, chunked) request cannot make a server buffer it whole.

Framework-light on purpose (Starlette's ``Request`` only), so the SLM server and the logging proxy can share it.
"""

from __future__ import annotations

from starlette.requests import Request

DEFAULT_MAX_REQUEST_BYTES = 8 * 1024 * 1024  # 8 MiB: far above any chat request, far below a memory problem


class BodyTooLarge(Exception):
    """The request body is over the limit (HTTP 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than this server's limit of {limit} bytes")
        self.limit = limit


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, raising :class:`BodyTooLarge` as soon as it is known to exceed ``max_bytes``: from its
    ``Content-Length`` before anything is read, else while the chunks arrive."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise BodyTooLarge(max_bytes)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLarge(max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)
