"""server/answers.py: a sized answer's headers leave the server with its body."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from mlflow.server.fastapi_app import _EfficientWSGIMiddleware

from stack_ops.server.answers import WholeAnswers, content_length


def sized(body: bytes, pieces: int = 1, pause: float = 0.0, extra=()):
    """An ASGI app answering `body` in `pieces`, with a Content-Length, pausing before each piece."""

    async def app(scope, receive, send):
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        step = max(1, -(-len(body) // pieces))
        parts = [body[i : i + step] for i in range(0, len(body), step)] or [b""]
        for n, part in enumerate(parts):
            await asyncio.sleep(pause)
            await send({"type": "http.response.body", "body": part, "more_body": n < len(parts) - 1})

    return app


HTTP = {
    "type": "http",
    "http_version": "1.1",
    "method": "POST",
    "scheme": "http",
    "path": "/api/2.0/mlflow/runs/log-batch",
    "root_path": "",
    "query_string": b"",
    "headers": [],
    "server": ("mlflow-server", 5000),
    "client": ("172.18.0.9", 40000),
}


def run(app, scope=None) -> list[tuple[int, dict]]:
    """Call `app`; every message it sends, with the event loop step it was sent in."""
    sent: list[tuple[int, dict]] = []
    step = 0

    async def main():
        nonlocal step

        async def tick():
            nonlocal step
            while True:
                step += 1
                await asyncio.sleep(0)

        ticker = asyncio.create_task(tick())

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append((step, message))

        try:
            await app(scope or HTTP, receive, send)
        finally:
            ticker.cancel()

    asyncio.run(main())
    return sent


def body_of(sent) -> bytes:
    return b"".join(m.get("body", b"") for _, m in sent if m["type"] == "http.response.body")


def test_headers_wait_for_the_body_and_leave_with_it_in_one_loop_step():
    sent = run(WholeAnswers(sized(b"{}", pause=0.05)))
    assert [m["type"] for _, m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0][0] == sent[1][0]  # no await that yields between: uvicorn writes them back to back
    assert sent[1][1] == {"type": "http.response.body", "body": b"{}", "more_body": False}
    assert sent[0][1]["status"] == 200 and content_length(sent[0][1]) == 2


def test_pieces_of_a_sized_body_are_joined_in_order():
    body = json.dumps({"runs": [{"id": i} for i in range(500)]}).encode()
    sent = run(WholeAnswers(sized(body, pieces=7, pause=0.001)))
    assert [m["type"] for _, m in sent] == ["http.response.start", "http.response.body"]
    assert body_of(sent) == body and sent[0][0] == sent[1][0]


def test_mlflow_wsgi_bridge_sends_headers_alone_and_the_middleware_joins_them():
    """The cause, on MLflow's own WSGI bridge: a body that is slow to come
    (a busy interpreter) leaves the headers alone on the wire without it."""

    def wsgi(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "2")])

        def body():
            time.sleep(0.05)
            yield b"{}"

        return body()

    bare = run(_EfficientWSGIMiddleware(wsgi))
    assert bare[0][1]["type"] == "http.response.start"
    assert bare[1][0] > bare[0][0]  # the headers went out steps before the body
    whole = run(WholeAnswers(_EfficientWSGIMiddleware(wsgi)))
    assert whole[0][1]["type"] == "http.response.start" and whole[1][0] == whole[0][0]
    assert body_of(whole) == b"{}"


def test_an_answer_without_a_length_streams_each_piece_when_ready():
    async def events(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for n in range(3):
            await asyncio.sleep(0.01)
            await send({"type": "http.response.body", "body": b"data: %d\n\n" % n, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    sent = run(WholeAnswers(events))
    assert [m.get("body") for _, m in sent] == [None, b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n", b""]
    steps = [s for s, _ in sent[:4]]
    assert steps == sorted(set(steps))  # the headers and each piece in a step of their own: nothing held


def test_a_body_over_the_limit_is_let_go_then_streamed():
    body = bytes(range(256)) * 40  # 10,240 bytes in 10 pieces
    sent = run(WholeAnswers(sized(body, pieces=10), limit=3000))
    kinds = [m["type"] for _, m in sent]
    assert kinds[0] == "http.response.start" and kinds.count("http.response.start") == 1
    assert body_of(sent) == body
    assert len(sent[1][1]["body"]) == 3072 and sent[1][1]["more_body"] is True  # the first three pieces
    assert sent[-1][1]["more_body"] is False
    assert len(sent) == 2 + 7  # then each piece as it comes


def test_an_error_before_the_body_sends_nothing_so_the_server_answers_500():
    async def fails(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        raise RuntimeError("database went away")

    sent = []

    async def main():
        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        await WholeAnswers(fails)({"type": "http", "path": "/"}, receive, send)

    with pytest.raises(RuntimeError):
        asyncio.run(main())
    assert sent == []  # uvicorn, seeing no answer started, sends a whole 500


def test_trailers_extensions_and_other_scopes_pass_through():

    async def with_trailers(scope, receive, send):
        start = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
        await send({**start, "trailers": True})
        await send({"type": "http.response.body", "body": b"ok"})
        await send({"type": "http.response.trailers", "headers": [], "more_trailers": False})

    sent = run(WholeAnswers(with_trailers))
    assert [m["type"] for _, m in sent] == ["http.response.start", "http.response.body", "http.response.trailers"]

    async def pathsend(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"9")]})
        await send({"type": "http.response.pathsend", "path": "/tmp/file"})

    sent = run(WholeAnswers(pathsend))
    assert [m["type"] for _, m in sent] == ["http.response.start", "http.response.body", "http.response.pathsend"]
    assert sent[1][1] == {"type": "http.response.body", "body": b"", "more_body": True}

    seen = []

    async def lifespan(scope, receive, send):
        seen.append(scope["type"])
        await send({"type": "lifespan.startup.complete"})

    sent = run(WholeAnswers(lifespan), scope={"type": "lifespan"})
    assert seen == ["lifespan"] and [m["type"] for _, m in sent] == ["lifespan.startup.complete"]
    assert run(WholeAnswers(sized(b"ok")))[1][1]["body"] == b"ok"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"content-length", b"17")], 17),
        ([(b"Content-Length", b"0")], 0),
        ([(b"content-type", b"text/plain")], None),
        ([(b"content-length", b"x")], None),
        ([], None),
    ],
)
def test_content_length(headers, expected):
    assert content_length({"type": "http.response.start", "headers": headers}) == expected
