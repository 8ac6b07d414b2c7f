"""Reading HAProxy's runtime answers: a drained replica waits for its requests, not for the websockets a worker keeps
open for as long as it runs."""

from __future__ import annotations

import pytest

from infra.haproxy_runtime import parse_requests_in_flight

# Abridged from a real ``show sess all`` (HAProxy 2.6): a websocket of a worker on api-1, a request on api-1, a
# websocket on api-2, and the CLI's own stream.
SHOW_SESS = """\
0x55d53fa0dba0: [06/Dec/2026:05:28:29.684813] id=15 proto=tcpv4 source=127.0.0.1:34818
  frontend=prefect (id=2 mode=http), listener=? (id=1) addr=127.0.0.1:42239
  backend=prefect_api (id=3 mode=http) addr=127.0.0.1:59944
  server=api-1 (id=1) addr=127.0.0.1:21000
  txn=0x55d53fa0e100 flags=0x8000 meth=1 status=101 req.st=MSG_TUNNEL rsp.st=MSG_TUNNEL req.f=0xcc rsp.f=0xcc
0x55d53fa0dbb0: [06/Dec/2026:05:28:30.000000] id=17 proto=tcpv4 source=127.0.0.1:34900
  frontend=prefect (id=2 mode=http), listener=? (id=1) addr=127.0.0.1:42239
  backend=prefect_api (id=3 mode=http) addr=127.0.0.1:59950
  server=api-1 (id=1) addr=127.0.0.1:21000
  txn=0x55d53fa0e200 flags=0x0 meth=3 status=-1 req.st=MSG_DONE rsp.st=MSG_RPBEFORE req.f=0x0 rsp.f=0x0
0x7f18dc03b1e0: [06/Dec/2026:05:28:29.767940] id=16 proto=tcpv4 source=127.0.0.1:34830
  frontend=prefect (id=2 mode=http), listener=? (id=1) addr=127.0.0.1:42239
  backend=prefect_api (id=3 mode=http) addr=127.0.0.1:57004
  server=api-2 (id=2) addr=127.0.0.1:21001
  txn=0x7f18dc044d70 flags=0x8000 meth=1 status=101 req.st=MSG_TUNNEL rsp.st=MSG_TUNNEL req.f=0xcc rsp.f=0xcc
0x7f18dc047040: [06/Dec/2026:05:28:37.105292] id=24 proto=unix_stream source=unix:1
  frontend=GLOBAL (id=0 mode=tcp), listener=? (id=1) addr=unix:1
  backend=<NONE> (id=-1 mode=-)
  server=<NONE> (id=-1)
"""


@pytest.mark.parametrize(("server", "requests"), [("api-1", 1), ("api-2", 0), ("api-10", 0)])
def test_only_requests_count_not_websockets(server: str, requests: int) -> None:
    assert parse_requests_in_flight(SHOW_SESS, server) == requests


def test_no_stream_no_request() -> None:
    assert parse_requests_in_flight("", "api-1") == 0
