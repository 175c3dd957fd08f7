"""Tests for whytune.clients against a real scripted server on 127.0.0.1: retries, timeouts, and the key kept out
of every object and error. The judges' tests (tests/test_judges.py) use the same server."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from whytune.clients import AnthropicClient, ClientError, Completion, EndpointDown, HFClient, OpenAIClient, concurrently
from whytune.data.teacher import OpenAITeacher
from whytune.eval.judges import LLMJudge

KEY_ENV = "WHYTUNE_TEST_CLIENT_KEY"
KEY = "sk-test-secret-123"
HELLO = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]


# ----------------------------------------------------------------------------- the scripted server


class _Handler(BaseHTTPRequestHandler):
    """Answers each request with the next step of the server's script (the last step repeats).

    Steps: ("reply", text); ("truncated", text): a reply that stopped at max_tokens; ("status", code): an error;
    ("retry_after", seconds): a 429 with Retry-After; ("echo_key", code): an error whose body repeats the key it was
    sent; ("sleep", seconds): no reply that long.
    """

    server: ScriptedServer

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        kind, value = self.server.record(self, body)
        headers = {"Retry-After": str(value)} if kind == "retry_after" else {}
        if kind == "sleep":
            self.server.release.wait(value)
            kind, value = "reply", "late reply"
        if kind in ("status", "retry_after", "echo_key"):
            sent = self.headers.get("Authorization") or self.headers.get("x-api-key")
            error = {"message": "scripted failure", **({"received": sent} if kind == "echo_key" else {})}
            payload, status = {"error": error}, 429 if kind == "retry_after" else value
        elif self.path.endswith("/v1/messages"):  # Anthropic's Messages API
            stop = "max_tokens" if kind == "truncated" else "end_turn"
            payload, status = (
                {"type": "message", "content": [{"type": "text", "text": value}], "stop_reason": stop},
                200,
            )
        else:
            message = {"role": "assistant", "content": value}
            choice = {"index": 0, "message": message, "finish_reason": "length" if kind == "truncated" else "stop"}
            payload, status = {"object": "chat.completion", "choices": [choice]}, 200
        self._send_json(status, json.dumps(payload).encode(), headers)

    def _send_json(self, status: int, data: bytes, headers: dict[str, str]) -> None:
        try:
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and hung up
            pass

    def log_message(self, *args):
        pass


class ScriptedServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script: list[tuple[str, object]] = [("reply", "scripted reply")]
        self.requests: list[dict] = []
        self.release = threading.Event()
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}/v1"

    def record(self, handler: _Handler, body: dict) -> tuple[str, object]:
        with self.lock:
            self.requests.append(
                {
                    "path": handler.path,
                    "body": body,
                    "at": time.monotonic(),
                    "headers": {k: handler.headers.get(k) for k in ("Authorization", "x-api-key", "anthropic-version")},
                }
            )
            return self.script[min(len(self.requests), len(self.script)) - 1]


@contextmanager
def scripted_server(monkeypatch) -> Iterator[ScriptedServer]:
    """A ScriptedServer on 127.0.0.1, reached without a proxy, with no test key in the environment."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")  # urllib would send 127.0.0.1 through a proxy
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv(KEY_ENV, raising=False)
    httpd = ScriptedServer()
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def server(monkeypatch):
    with scripted_server(monkeypatch) as httpd:
        yield httpd


def client(server: ScriptedServer, **kwargs) -> OpenAIClient:
    options = {"timeout": 0.5, "max_attempts": 3, "backoff": 0.0, **kwargs}
    return OpenAIClient("test-model", server.url, **options)


# ----------------------------------------------------------------------------- retries


@pytest.mark.parametrize(
    "script",
    [
        [("status", 500), ("status", 503), ("reply", "ok")],
        [("retry_after", 0), ("status", 502), ("reply", "ok")],
        [("sleep", 30.0), ("reply", "ok")],  # a timeout
        [("reply", None), ("reply", "ok")],  # a reply without text
    ],
)
def test_transient_failures_are_retried_until_a_reply(server, script):
    server.script = script
    start = time.monotonic()
    assert client(server)(HELLO, 0.0, 16) == "ok"
    assert time.monotonic() - start < 5
    assert len(server.requests) == len(script)
    assert all(r["body"] == server.requests[0]["body"] for r in server.requests)


def test_retry_after_overrides_the_backoff(server):
    server.script = [("retry_after", 1), ("retry_after", 0), ("reply", "ok")]
    start = time.monotonic()
    assert client(server, backoff=60.0)(HELLO, 0.0, 16) == "ok"  # the backoff alone would wait a minute
    first, second, third = (r["at"] for r in server.requests)
    assert second - first >= 0.9 and third - second < 0.5 and time.monotonic() - start < 5


@pytest.mark.parametrize(
    ("script", "status", "requests", "says"),
    [
        ([("status", 502)], 502, 3, "HTTP 502: {"),
        ([("retry_after", 0)], 429, 3, "HTTP 429"),
        ([("sleep", 30.0)], None, 3, "timed out"),
        ([("status", 400)], 400, 1, "HTTP 400"),  # a bad request would fail again
        ([("status", 401)], 401, 1, "HTTP 401"),
    ],
)
def test_gives_up_with_the_url_and_status(server, script, status, requests, says):
    server.script = script
    start = time.monotonic()
    with pytest.raises(ClientError) as raised:
        client(server)(HELLO, 0.0, 16)
    assert time.monotonic() - start < 5  # a hanging server costs max_attempts x timeout, no more
    assert len(server.requests) == requests and raised.value.status == status
    message = str(raised.value)
    assert message.startswith(f"{server.url}/chat/completions: ") and says in message
    assert ("gave up after 3 attempts" if requests == 3 else "not retried") in message


def test_unreachable_endpoint_gives_up(server):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    unreachable = OpenAIClient("m", f"http://127.0.0.1:{port}/v1", timeout=0.5, max_attempts=2, backoff=0)
    with pytest.raises(ClientError, match="gave up after 2 attempts") as raised:
        unreachable(HELLO, 0.0, 16)
    assert raised.value.status is None and raised.value.retryable


@pytest.mark.parametrize(
    ("script", "unanswered"),
    [
        ([("sleep", 30.0)], True),  # timed out: no answer
        ([("status", 503)], False),  # an answer, if an error
        ([("reply", None)], False),  # an answer without text
    ],
)
def test_a_request_that_got_no_answer_says_so(server, script, unanswered):
    """`unanswered` tells an endpoint that is down (what the judge counts) from one that answers badly."""
    server.script = script
    with pytest.raises(ClientError) as raised:
        client(server, max_attempts=2)(HELLO, 0.0, 16)
    assert raised.value.unanswered is unanswered


def test_a_refused_connection_is_unanswered():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ClientError, match="gave up after 2 attempts") as raised:
        OpenAIClient("m", f"http://127.0.0.1:{port}/v1", timeout=0.5, max_attempts=2, backoff=0)(HELLO, 0.0, 16)
    assert raised.value.unanswered and raised.value.status is None


def test_an_endpoint_down_is_raised_at_once_what_is_in_flight_abandoned():
    """Another failure waits for the work in flight (tests/test_judge_scale.py); an EndpointDown does not: the work in
    flight goes to the same dead endpoint."""
    release = threading.Event()

    def work(item: int) -> int:
        if item == 3:
            raise EndpointDown("http://judge.invalid/v1", 5, "stop")
        release.wait(30)  # a request that would hang until its timeout
        return item

    start = time.monotonic()
    with pytest.raises(EndpointDown, match="no answer to 5 requests in a row"):
        list(concurrently(work, range(100), 4))
    release.set()
    assert time.monotonic() - start < 5


def test_max_attempts_must_be_positive():
    with pytest.raises(ValueError, match="max_attempts"):
        OpenAIClient("m", "http://127.0.0.1:9/v1", max_attempts=0)


# ----------------------------------------------------------------------------- the key


def test_no_authorization_header_without_a_named_key(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)  # present, but not named
    assert client(server)(HELLO, 0.5, 16) == "scripted reply"
    (request,) = server.requests
    assert request["headers"]["Authorization"] is None
    assert request["body"] == {"model": "test-model", "messages": HELLO, "temperature": 0.5, "max_tokens": 16}


def test_a_named_key_must_be_set_at_construction():
    with pytest.raises(ValueError, match=f"{KEY_ENV}, which is not set"):
        OpenAIClient("m", "http://127.0.0.1:9/v1", api_key_env=KEY_ENV)


@pytest.mark.parametrize("cls", [OpenAIClient, AnthropicClient])
def test_the_key_is_sent_but_never_kept_nor_repeated(server, monkeypatch, cls):
    monkeypatch.setenv(KEY_ENV, KEY)
    base_url = server.url.removesuffix("/v1") if cls is AnthropicClient else server.url
    http = cls("test-model", base_url, KEY_ENV, timeout=0.5, max_attempts=1)
    server.script = [("echo_key", 500)]
    with pytest.raises(ClientError) as raised:
        http(HELLO, 0.0, 16)
    headers = server.requests[0]["headers"]
    assert KEY in (headers["Authorization"] or headers["x-api-key"])  # sent, and echoed back by the server
    assert "[key]" in str(raised.value) and KEY not in str(raised.value) and KEY not in repr(raised.value)
    assert KEY not in repr(vars(http)) + repr(http)

    monkeypatch.setenv(KEY_ENV, "sk-rotated")  # read at each request, so a rotated key is used at once
    server.script = [("reply", "ok")]
    assert http(HELLO, 0.0, 16) == "ok"
    assert "sk-rotated" in str(server.requests[-1]["headers"])


def test_no_key_on_a_teacher_or_a_judge(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    teacher = OpenAITeacher("http://127.0.0.1:9/v1", "m", api_key_env=KEY_ENV)
    judge = LLMJudge(OpenAIClient("m", "http://127.0.0.1:9/v1", api_key_env=KEY_ENV))
    for holder in (teacher, judge):
        assert KEY not in repr(vars(holder)) + repr(vars(holder.client)) + repr(holder)


# ----------------------------------------------------------------------------- the clients' users


def test_the_teacher_now_retries(server):
    server.script = [("status", 503), ("retry_after", 0), ("sleep", 30.0), ("reply", "A good reply.")]
    teacher = OpenAITeacher(server.url, "m", temperature=0.3, max_tokens=99, timeout_s=0.5, max_attempts=4, backoff=0)
    assert teacher(HELLO) == "A good reply."
    assert len(server.requests) == 4
    assert {k: server.requests[-1]["body"][k] for k in ("temperature", "max_tokens")} == {
        "temperature": 0.3,
        "max_tokens": 99,
    }
    server.script, before = [("status", 503)], len(server.requests)
    with pytest.raises(ClientError, match="HTTP 503.*gave up after 4 attempts"):
        teacher(HELLO)
    assert len(server.requests) - before == 4


def test_anthropic_client_sends_the_system_prompt_apart(server):
    http = AnthropicClient("claude-test", server.url.removesuffix("/v1"), None, 0.5)
    assert http(HELLO, 0.0, 8) == "scripted reply"
    (request,) = server.requests
    assert request["path"] == "/v1/messages" and request["headers"]["x-api-key"] is None
    assert request["body"] == {
        "model": "claude-test",
        "max_tokens": 8,
        "temperature": 0.0,
        "system": "Be brief.",
        "messages": HELLO[1:],
    }


@pytest.mark.parametrize("cls", [OpenAIClient, AnthropicClient])
def test_complete_says_whether_the_reply_stopped_at_max_tokens(server, cls):
    """`complete` gives the reply and why it ended; the seed goes to an OpenAI-compatible server, not to Anthropic's
    API, which takes none; calling the client still returns the text alone."""
    base_url = server.url.removesuffix("/v1") if cls is AnthropicClient else server.url
    http = cls("test-model", base_url, None, 0.5)
    server.script = [("reply", "whole"), ("truncated", "cut off")]
    assert http.complete(HELLO, 1.0, 8, seed=7) == Completion("whole", "eos")
    assert http.complete(HELLO, 1.0, 8, seed=7) == Completion("cut off", "length")
    assert http(HELLO, 1.0, 8) == "cut off"
    seeds = [request["body"].get("seed") for request in server.requests]
    assert seeds == ([7, 7, None] if cls is OpenAIClient else [None, None, None])


def test_hf_client_loads_once_and_greedy_decoding_repeats(tiny_dir, monkeypatch):
    model = HFClient(tiny_dir, device="cpu")
    assert model.lm is None and model.tokenizer is None
    loads = []
    load = model._load
    monkeypatch.setattr(model, "_load", lambda: (loads.append(1), load())[1])
    greedy = model(HELLO, 0.0, 6)
    assert model(HELLO, 0.0, 6) == greedy and isinstance(model(HELLO, 1.0, 6), str)
    assert loads == [1]
