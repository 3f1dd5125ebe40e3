"""A sized answer leaves the server together with its headers.

MLflow's Flask app runs behind Starlette's WSGI bridge, which hands the
answer to uvicorn in pieces from its worker thread: the status and headers
first, then the body, each after a hop back to the event loop. uvicorn writes
the headers to the socket as soon as it has them, so for a moment a finished
request (its rows committed) has sent its headers and not its body. A server
killed in that moment (a SIGKILLed replica, an OOM-killed worker) leaves
nginx with half an answer: it has already passed the headers on, so it can
neither answer 502 nor retry, and the client reads a body that ends early
(`IncompleteRead(0 bytes read, 2 more expected)` for log-batch's `{}`),
which MLflow's client does not retry. A kill before the headers is a 502 the
client retries; logging a metric again is harmless (MLflow keeps one copy).

`WholeAnswers` holds the headers of an answer that states its
Content-Length until its body is complete (up to LIMIT bytes, then it lets
what it holds go and streams the rest), and sends both in one step of the
event loop, with no await that yields in between: uvicorn writes them back to
back. An answer without a length (server-sent events, chunked streams) passes
through untouched, as soon as each piece is ready.
"""

from __future__ import annotations

LIMIT = 1 << 20  # bytes of a sized body held to leave with its headers


def content_length(start: dict) -> int | None:
    """The Content-Length an http.response.start states, or None."""
    for name, value in start.get("headers", ()):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class WholeAnswers:
    """ASGI middleware: a sized answer's headers leave with its body."""

    def __init__(self, app, limit: int = LIMIT) -> None:
        self.app = app
        self.limit = limit

    def __getattr__(self, name: str):
        return getattr(self.app, name)  # the wrapped FastAPI app's `routes`, `router`, ...

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: dict | None = None  # the answer's http.response.start, until its body is here
        chunks: list[bytes] = []
        size = 0

        async def release(more_body: bool) -> None:
            nonlocal held, chunks
            start, held = held, None
            body, chunks = b"".join(chunks), []
            await send(start)
            await send({"type": "http.response.body", "body": body, "more_body": more_body})

        async def send_whole(message) -> None:
            nonlocal held, size
            kind = message["type"]
            if kind == "http.response.start":
                if content_length(message) is not None and not message.get("trailers", False):
                    held = message
                    return
                await send(message)
                return
            if held is None:
                await send(message)
                return
            if kind != "http.response.body":  # an extension's message (pathsend, ...): in order
                await release(more_body=True)
                await send(message)
                return
            body = message.get("body", b"")
            if body:
                chunks.append(body)
                size += len(body)
            more = message.get("more_body", False)
            if not more or size >= self.limit:
                await release(more)

        await self.app(scope, receive, send_whole)
