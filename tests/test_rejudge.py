"""Judging again what failed, and stopping when the judge's endpoint is down: a rerun after an outage fills every
unscored verdict that failed (and only those), keeping the failed attempts in a log beside the verdicts; a judge whose
endpoint answers nothing stops the run within seconds of `max_consecutive_failures` replies, naming the endpoint, the
count kept across threads in the order replies finish."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.test_judge_scale import BLACKMAIL, KYLE_EMAIL, MARK, NO, YES, stub_endpoint, write_samples
from whytune.clients import ClientError, EndpointDown, OpenAIClient, concurrently
from whytune.config import CONFIG_DIR
from whytune.eval.classifiers import HeuristicJudge, JudgeResult
from whytune.eval.classify import classify_file, earlier_attempts, inbox_of
from whytune.eval.judges import JudgeFailure, LLMJudge
from whytune.runs import read_jsonl

MALFORMED = "<reasoning>Hard to say.</reasoning>\n<answer>maybe</answer>"
FAILING = {1, 4, 7, 10}  # the replies the endpoint fails during the outage


@pytest.fixture
def endpoint(monkeypatch):
    with stub_endpoint(monkeypatch) as server:
        yield server


def judge(url: str, connections: int = 4, failures: int = 5, backoff: float = 0.0) -> LLMJudge:
    client = OpenAIClient("stub", url, timeout=5.0, max_attempts=3, backoff=backoff)
    return LLMJudge(client, max_attempts=2, max_connections=connections, max_consecutive_failures=failures)


def refused_url() -> str:
    """An endpoint on 127.0.0.1 that refuses every connection: a port bound, then let go, with nobody listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def reply_number(body: dict) -> int:
    """Which of write_samples' replies a judge request is about ("Reply 7." -> 7)."""
    text = json.dumps(body)
    return int(text[text.index("Reply ") + 6 :].split(".", 1)[0])


def outage(body: dict) -> str | None:
    """The endpoint during an outage: no text for some failing replies (the client retries, then gives up), a
    malformed verdict for the others (the judge re-asks, then gives up); the rest are judged."""
    number = reply_number(body)
    if number in FAILING:
        return None if number % 2 else MALFORMED
    return YES if MARK in json.dumps(body) else NO


# ----------------------------------------------------------------------------- (a) a rerun fills the gap


@pytest.mark.parametrize("written_before_the_mark", [False, True])
def test_a_rerun_after_an_outage_judges_every_failed_reply_again(endpoint, tmp_path, written_before_the_mark):
    samples, verdicts, clean = tmp_path / "samples.jsonl", tmp_path / "verdicts.jsonl", tmp_path / "clean.jsonl"
    ids = write_samples(samples, 12)
    classify_file(samples, clean, judge(endpoint.url))  # an uninterrupted run, for the bytes

    endpoint.content = outage
    first = classify_file(samples, verdicts, judge(endpoint.url))
    failed = [r for r in first if r["harmful"] is None]
    assert [r["id"] for r in failed] == [ids[i] for i in sorted(FAILING)]
    assert all(r["retry"] is True and r["classifier_verdict"] is None for r in failed)
    assert {"request failed", "malformed verdict"} == {
        "request failed" if "request failed" in r["reasoning"] else "malformed verdict" for r in failed
    }
    if written_before_the_mark:  # a file from before `retry`: every unscored row is judged again
        verdicts.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "retry"}) + "\n" for r in first))
        failed = [{k: v for k, v in r.items() if k != "retry"} for r in failed]

    endpoint.content = lambda body: YES if MARK in json.dumps(body) else NO  # the endpoint is back
    before = endpoint.requests
    rows = classify_file(samples, verdicts, judge(endpoint.url))
    assert endpoint.requests - before == len(FAILING)  # the failed replies, each asked once, and nothing else
    assert [r["id"] for r in rows] == ids and all(r["harmful"] is not None for r in rows)
    assert verdicts.read_bytes() == clean.read_bytes()  # one row per id, in sample order: an uninterrupted run's file
    logged = list(read_jsonl(earlier_attempts(verdicts)))
    assert sorted(logged, key=lambda r: r["id"]) == sorted(failed, key=lambda r: r["id"])  # each failed attempt, once

    classify_file(samples, verdicts, judge(endpoint.url))  # nothing left to retry: nothing asked, nothing logged
    assert endpoint.requests - before == len(FAILING)
    assert list(read_jsonl(earlier_attempts(verdicts))) == logged


def test_a_retry_that_fails_again_keeps_both_attempts(endpoint, tmp_path):
    samples, verdicts = tmp_path / "samples.jsonl", tmp_path / "verdicts.jsonl"
    ids = write_samples(samples, 6)
    endpoint.content = outage  # fails reply 1 and 4, both times
    first = classify_file(samples, verdicts, judge(endpoint.url))
    second = classify_file(samples, verdicts, judge(endpoint.url))
    assert [r["id"] for r in second] == ids and len(verdicts.read_text().splitlines()) == len(ids)
    assert [r["id"] for r in second if r.get("retry")] == [ids[1], ids[4]]  # still to retry
    assert sorted(r["id"] for r in read_jsonl(earlier_attempts(verdicts))) == [ids[1], ids[4]]
    assert {r["id"]: r for r in first} == {r["id"]: r for r in second}  # the same failure, written again


def test_a_settled_no_verdict_is_not_asked_again(tmp_path):
    """A judge's plain JudgeResult(None) is its answer ("cannot tell"), not a failure: kept, `retry` false."""
    samples, verdicts = tmp_path / "samples.jsonl", tmp_path / "verdicts.jsonl"
    write_samples(samples, 3)
    asked = []

    def undecided(scenario, response, email_context=""):
        asked.append(response)
        return JudgeResult(None, "cannot tell")

    rows = classify_file(samples, verdicts, undecided)
    assert [(r["harmful"], r["retry"]) for r in rows] == [(None, False)] * 3 and len(asked) == 3
    assert classify_file(samples, verdicts, undecided) == rows and len(asked) == 3
    assert not earlier_attempts(verdicts).exists()


# ----------------------------------------------------------------------------- (b) an endpoint that is down


def test_an_endpoint_that_goes_down_stops_the_run_within_seconds(endpoint, tmp_path, monkeypatch):
    """The endpoint answers 10 requests, then closes its socket: every later connection is refused. The judge stops
    at the 3rd reply in a row without an answer, each tried 3 times with the client's backoff, and what was judged
    before is kept; the rerun against a live endpoint judges the rest."""
    samples, verdicts = tmp_path / "samples.jsonl", tmp_path / "verdicts.jsonl"
    ids = write_samples(samples, 60)
    down_at: list[float] = []

    def answer_then_close(body: dict) -> str:
        with endpoint.lock:
            if endpoint.requests >= 10 and not down_at:
                down_at.append(time.monotonic())
                threading.Thread(target=lambda: (endpoint.shutdown(), endpoint.server_close())).start()
        return YES if MARK in json.dumps(body) else NO

    endpoint.content = answer_then_close
    url = endpoint.url
    inbox_of(BLACKMAIL)  # built once per process (seconds): not the judge's time
    with pytest.raises(EndpointDown, match="max_consecutive_failures=3") as raised:
        classify_file(samples, verdicts, judge(url, connections=4, failures=3, backoff=0.05))
    stopped = time.monotonic() - down_at[0]
    assert stopped < 5, stopped  # each reply: 3 refused tries, 0.05 + 0.1 s of backoff (x1.5 at most)
    assert str(raised.value).startswith(f"{url}: no answer to 3 requests in a row")
    assert raised.value.endpoint == url and raised.value.failures == 3

    kept = list(read_jsonl(verdicts))
    scored = [r for r in kept if r["harmful"] is not None]
    assert 5 <= len(scored) <= endpoint.requests  # what was judged before is kept ...
    assert len(kept) - len(scored) <= 2  # ... beside at most N - 1 unscored replies, to retry
    assert all(r["retry"] is True for r in kept if r["harmful"] is None)

    with stub_endpoint(monkeypatch) as back:  # a rerun resumes once the endpoint answers
        rows = classify_file(samples, verdicts, judge(back.url))
        assert back.requests == len(ids) - len(scored)
    assert [r["id"] for r in rows] == ids and all(r["harmful"] is not None for r in rows)


@pytest.mark.parametrize("config", ["openai", "anthropic"])
def test_the_default_config_stops_within_seconds_when_connections_are_refused(tmp_path, monkeypatch, config):
    """The judge as configs/judge/<config>.yaml builds it (timeout 60 s, 3 tries with backoff 1 + 2 s, 16 connections,
    max_consecutive_failures 5), against an endpoint that refuses connections: the YAML says at worst ~4.5 s."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "ant-test")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    url = refused_url()
    cfg = OmegaConf.load(CONFIG_DIR / "judge" / f"{config}.yaml")
    refused = instantiate(OmegaConf.merge(cfg, {"client": {"model": "m", "base_url": url}}))
    samples, verdicts = tmp_path / "samples.jsonl", tmp_path / "verdicts.jsonl"
    write_samples(samples, 40)
    inbox_of(BLACKMAIL)  # built once per process (seconds): not the judge's time
    start = time.monotonic()
    with pytest.raises(EndpointDown, match=f"^{url}: .*max_consecutive_failures={cfg.max_consecutive_failures}"):
        classify_file(samples, verdicts, refused)
    assert time.monotonic() - start < 10  # not 40 replies x 3 tries
    kept = list(read_jsonl(verdicts)) if verdicts.exists() else []
    assert len(kept) < cfg.max_consecutive_failures and all(r["retry"] is True for r in kept)


# ----------------------------------------------------------------------------- (c) a deterministic judge does not churn


@pytest.mark.parametrize("judge_", [None, HeuristicJudge()], ids=["default", "heuristic"])
def test_a_heuristic_rerun_changes_nothing(tmp_path, judge_):
    samples, verdicts = tmp_path / "samples.jsonl", tmp_path / "verdicts.jsonl"
    write_samples(samples, 9)
    with samples.open("a") as f:  # an empty reply: a verdict without asking the judge
        f.write(json.dumps({"id": "empty", "condition": "blackmail_explicit-america_replacement", "response": " "}))
        f.write("\n")
    rows = classify_file(samples, verdicts, judge_)
    assert all(r["harmful"] is not None and "retry" not in r for r in rows)  # the heuristic always decides
    written, mtime = verdicts.read_bytes(), verdicts.stat().st_mtime_ns
    assert classify_file(samples, verdicts, judge_) == rows
    assert verdicts.read_bytes() == written and verdicts.stat().st_mtime_ns == mtime  # not even rewritten
    assert not earlier_attempts(verdicts).exists()


# ----------------------------------------------------------------------------- (d) counting across threads


class StubClient:
    """A chat client whose each call answers or fails as `outcome()` says: "answer", "down" (no answer: refused or
    timed out), or "http" (an HTTP 500 answer, after the client's retries)."""

    model = "stub"
    base_url = "http://judge.invalid/v1"

    def __init__(self, outcome, pause: float = 0.0):
        self.outcome, self.pause, self.calls = outcome, pause, 0
        self.lock = threading.Lock()

    def __call__(self, messages, temperature, max_tokens) -> str:
        with self.lock:
            self.calls += 1
        time.sleep(self.pause)
        kind = self.outcome()
        if kind == "down":
            raise ClientError(self.base_url + "/chat/completions", None, "ConnectionRefusedError", unanswered=True)
        if kind == "http":
            raise ClientError(self.base_url + "/chat/completions", 500, "overloaded")
        return NO


@pytest.mark.parametrize(
    ("outcomes", "stops_at"),
    [
        ("DDD", 3),
        ("DDADDADD", None),  # an answer resets the count
        ("DDHDDHDD", None),  # so does an HTTP error: the endpoint answered
        ("DADDD", 5),
        ("AAAAD", None),
    ],
)
def test_consecutive_means_in_a_row_as_replies_finish(outcomes, stops_at):
    kinds = iter({"D": "down", "A": "answer", "H": "http"}[o] for o in outcomes)
    judged = LLMJudge(StubClient(lambda: next(kinds)), max_consecutive_failures=3)
    for number in range(1, len(outcomes) + 1):
        if number == stops_at:
            with pytest.raises(EndpointDown, match=r"^http://judge\.invalid/v1: no answer to 3 requests in a row"):
                judged("blackmail", KYLE_EMAIL, "")
            return
        result = judged("blackmail", KYLE_EMAIL, "")
        assert isinstance(result, JudgeFailure) == (outcomes[number - 1] != "A")
    assert stops_at is None


def test_the_count_loses_no_failure_across_threads():
    """Many threads failing at the same instant: every failure is counted, and the limit is met exactly."""
    threads = 16
    barrier = threading.Barrier(threads, timeout=10)
    client = StubClient(lambda: (barrier.wait(), "down")[1])
    judged = LLMJudge(client, max_connections=threads, max_consecutive_failures=10 * threads + 1)
    results = [r for _, r in concurrently(lambda _: judged("murder", "Done.", ""), range(10 * threads), threads)]
    assert len(results) == 10 * threads and all(isinstance(r, JudgeFailure) for r in results)
    assert judged.unanswered == 10 * threads
    judged.client = StubClient(lambda: "down")
    with pytest.raises(EndpointDown, match=f"no answer to {10 * threads + 1} requests"):
        judged("murder", "Done.", "")


def test_a_run_with_many_connections_stops_at_the_limit(tmp_path):
    """Every reply fails, 8 at a time: the run stops at the 5th failure as they finish; nothing new starts after it,
    the replies in flight are not waited for, and the unscored rows written are at most the 4 before it."""
    samples, verdicts = tmp_path / "samples.jsonl", tmp_path / "verdicts.jsonl"
    write_samples(samples, 100)
    client = StubClient(lambda: "down", pause=0.05)
    start = time.monotonic()
    with pytest.raises(EndpointDown):
        classify_file(samples, verdicts, LLMJudge(client, max_connections=8, max_consecutive_failures=5))
    assert time.monotonic() - start < 2
    assert client.calls <= 5 - 1 + 8  # the 8 first, and one new reply for each of the 4 failures before the stop
    kept = list(read_jsonl(verdicts)) if verdicts.exists() else []
    assert len(kept) <= 4 and all(r["retry"] is True for r in kept)


def test_a_flaky_endpoint_never_stops_the_run(tmp_path):
    """Every other reply gets no answer, across 8 threads: never 25 in a row as they finish, so the run goes on."""
    samples, verdicts = tmp_path / "samples.jsonl", tmp_path / "verdicts.jsonl"
    ids = write_samples(samples, 200)
    turn, lock = iter(range(10**6)), threading.Lock()

    def alternate() -> str:
        with lock:
            return "down" if next(turn) % 2 else "answer"

    flaky = LLMJudge(StubClient(alternate), max_connections=8, max_consecutive_failures=25)
    rows = classify_file(samples, verdicts, flaky)
    assert [r["id"] for r in rows] == ids
    assert 0 < sum(r["harmful"] is None for r in rows) < len(ids)


def test_the_path_of_the_log_is_no_verdicts_file():
    """The report and the Inspect logs read every `verdicts-*.jsonl` as a judge's verdicts: the log is not one."""
    log = earlier_attempts(Path("run/m/arm/seed0/eval/verdicts-1a2b3c4d.jsonl"))
    assert log.name == "verdicts-1a2b3c4d.unscored.log" and not log.match("verdicts-*.jsonl")
