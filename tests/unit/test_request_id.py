"""The API replicas' request-id layer around an ASGI app: one access line per HTTP request with its id, the id on every
record logged while the request is served and on the response, and websockets untouched."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from infra.logs.request_id import ACCESS_LOGGER, RequestIdMiddleware, current_request_id

INNER = "tests.inner"


async def things(request: Request) -> PlainTextResponse:
    logging.getLogger(INNER).warning("serving %s", request.url.path)
    return PlainTextResponse(current_request_id() or "")


async def health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("true")


async def broken(request: Request) -> PlainTextResponse:
    raise RuntimeError("broken on purpose")


class Client:
    """Requests to the wrapped app in process (httpx's ASGI transport), one event loop per request."""

    def __init__(self) -> None:
        app = Starlette(routes=[Route("/api/things", things, methods=["GET", "POST"]), Route("/api/health", health),
                                Route("/api/broken", broken)])
        self.app = RequestIdMiddleware(app)

    def request(self, method: str, path: str, headers: Any = None) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://replica") as client:
                return await client.request(method, path, headers=headers)

        return asyncio.run(send())

    def get(self, path: str, headers: Any = None) -> httpx.Response:
        return self.request("GET", path, headers)

    def post(self, path: str, headers: Any = None) -> httpx.Response:
        return self.request("POST", path, headers)


@pytest.fixture
def client() -> Client:
    return Client()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger=ACCESS_LOGGER)
    return caplog


def access_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == ACCESS_LOGGER]


def test_access_line_carries_the_request_id(client: Client, logs: pytest.LogCaptureFixture) -> None:
    client.post("/api/things", headers={"X-Request-ID": "chosen-id.1_A"})
    [line] = access_lines(logs)
    assert (line.levelno, line.request_id) == (logging.INFO, "chosen-id.1_A")  # type: ignore[attr-defined]
    assert line.getMessage().startswith("POST /api/things 200 ")
    assert line.getMessage().endswith(" ms request_id=chosen-id.1_A")


def test_access_line_fields(client: Client, logs: pytest.LogCaptureFixture) -> None:
    client.get("/api/things?limit=3", headers={"X-Request-ID": "abc"})
    [line] = access_lines(logs)
    assert (line.method, line.path, line.status) == ("GET", "/api/things", 200)  # type: ignore[attr-defined]
    assert line.duration_ms >= 0  # type: ignore[attr-defined]


def test_records_inside_the_request_carry_its_id(client: Client, logs: pytest.LogCaptureFixture) -> None:
    client.get("/api/things", headers={"X-Request-ID": "abc"})
    [inner] = [r for r in logs.records if r.name == INNER]
    assert inner.request_id == "abc"  # type: ignore[attr-defined]


def test_records_outside_a_request_carry_none(client: Client, logs: pytest.LogCaptureFixture) -> None:
    client.get("/api/things", headers={"X-Request-ID": "abc"})
    logging.getLogger(INNER).warning("after")
    assert not hasattr(logs.records[-1], "request_id")
    assert current_request_id() is None


def test_the_app_and_the_response_see_the_same_id(client: Client) -> None:
    response = client.get("/api/things", headers={"X-Request-ID": "abc"})
    assert (response.text, response.headers["X-Request-ID"]) == ("abc", "abc")


def test_without_an_id_one_is_made(client: Client, logs: pytest.LogCaptureFixture) -> None:
    response = client.get("/api/things")
    made = response.headers["X-Request-ID"]
    assert uuid.UUID(made) and response.text == made
    assert access_lines(logs)[0].request_id == made  # type: ignore[attr-defined]


@pytest.mark.parametrize("header", ["bad id", "a,b", "x" * 129, "<script>", "a\u00e9"])
def test_a_malformed_id_is_replaced(client: Client, header: str) -> None:
    response = client.get("/api/things", headers={"X-Request-ID": header.encode()})
    assert uuid.UUID(response.headers["X-Request-ID"])


def test_two_ids_are_replaced(client: Client) -> None:
    response = client.get("/api/things", headers=[("X-Request-ID", "a"), ("X-Request-ID", "b")])
    assert uuid.UUID(response.headers["X-Request-ID"])


def test_health_checks_log_at_debug(client: Client, logs: pytest.LogCaptureFixture) -> None:
    client.get("/api/health")
    assert [r.levelno for r in access_lines(logs)] == [logging.DEBUG]


def test_no_line_below_the_logger_level(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=ACCESS_LOGGER)
    client.get("/api/things")
    assert access_lines(caplog) == []


def test_a_failing_request_is_logged_as_500(client: Client, logs: pytest.LogCaptureFixture) -> None:
    assert client.get("/api/broken", headers={"X-Request-ID": "abc"}).status_code == 500
    assert [(r.status, r.request_id) for r in access_lines(logs)] == [(500, "abc")]  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", ["websocket", "lifespan"])
def test_other_scopes_pass_through_untouched(kind: str, logs: pytest.LogCaptureFixture) -> None:
    seen: list[tuple[Any, ...]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope, receive, send, current_request_id()))

    async def receive() -> dict[str, Any]:
        return {}

    async def send(message: Any) -> None:
        pass

    scope = {"type": kind, "path": "/api/events/in", "headers": [(b"x-request-id", b"abc")]}
    asyncio.run(RequestIdMiddleware(app)(scope, receive, send))
    [(app_scope, app_receive, app_send, request_id)] = seen
    assert (app_scope is scope, app_receive is receive, app_send is send, request_id) == (True, True, True, None)
    assert access_lines(logs) == []
