"""Judging speed, in one run: the same replies judged one request at a time and then many at once.

    python scripts/bench_judge.py [--replies 64] [--latency 0.5] [--connections 32] [--out FILE]

An OpenAI-compatible chat-completions stub runs in a thread on 127.0.0.1 (http.server's ThreadingHTTPServer): it
waits --latency seconds on every request, as a hosted judge would, and always answers the same verdict. The
classify step (eval/classify.py, with the OpenAI judge of configs/judge/openai.yaml) judges --replies replies into
a fresh verdict file twice: with judge.max_connections=1, then with --connections. Prints both times, the
speed-up and the most requests the stub saw in flight at once, checks that the two verdict files are the same
bytes, and appends the run to a JSON list (default docs/bench/judge-<machine>.json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from whytune.benchmarks import now, record
from whytune.clients import OpenAIClient
from whytune.eval.classify import classify_file, inbox_of
from whytune.eval.judges import LLMJudge
from whytune.models import device_name

ROOT = Path(__file__).resolve().parents[1]
CONDITION = "blackmail_explicit-america_replacement"
VERDICT = "<reasoning>The reply does its work and threatens no one.</reasoning>\n<answer>no</answer>"


class StubJudge(ThreadingHTTPServer):
    """Answers every chat completion with VERDICT after `latency` seconds; counts the requests in flight."""

    daemon_threads = True
    request_queue_size = 256  # the listen backlog: the default 5 would turn connections away at 32 at once

    def __init__(self, latency: float):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.latency, self.lock = latency, threading.Lock()
        self.in_flight = self.peak = self.requests = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}/v1"

    def enter(self) -> None:
        with self.lock:
            self.in_flight += 1
            self.requests += 1
            self.peak = max(self.peak, self.in_flight)

    def leave(self) -> None:
        with self.lock:
            self.in_flight -= 1


class _Handler(BaseHTTPRequestHandler):
    server: StubJudge

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.enter()
        try:
            time.sleep(self.server.latency)
            message = {"role": "assistant", "content": VERDICT}
            data = json.dumps({"object": "chat.completion", "choices": [{"index": 0, "message": message}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        finally:
            self.server.leave()

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def stub_judge(latency: float) -> Iterator[StubJudge]:
    os.environ["no_proxy"] = os.environ["NO_PROXY"] = "127.0.0.1,localhost"  # urllib would go through a proxy
    server = StubJudge(latency)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def write_samples(path: Path, n: int) -> None:
    """n distinct replies to the headline condition, each an email to the executive (so the published rule parses
    a real tool call)."""
    rows = [
        {
            "id": f"r{i:04d}",
            "condition": CONDITION,
            "response": f'<tool_use:email>\nto: "kyle.johnson@summitbridge.com",\nsubject: "Handover {i}",\n'
            f'body: "Kyle, here is handover note {i} before the 5pm transition."\n</tool_use:email>',
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def timed(server: StubJudge, samples: Path, verdicts: Path, connections: int) -> dict:
    client = OpenAIClient("stub-judge", server.url, timeout=60.0, max_attempts=3, backoff=1.0)
    judge = LLMJudge(client, max_attempts=3, max_connections=connections)
    server.peak, before = 0, server.requests
    start = now()
    rows = classify_file(samples, verdicts, judge)
    seconds = now() - start
    if len(rows) != sum(1 for _ in samples.open()) or any(r["classifier_verdict"] is not False for r in rows):
        raise RuntimeError(f"{verdicts}: not every reply got the stub's verdict")
    return {
        "connections": connections,
        "seconds": seconds,
        "requests": server.requests - before,
        "peak_in_flight": server.peak,
    }


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replies", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.5, help="seconds the stub takes to answer a request")
    parser.add_argument("--connections", type=int, default=32, help="judge.max_connections of the concurrent run")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default docs/bench/judge-<machine>.json)")
    return parser.parse_args(argv)


def main(argv: list[str]) -> dict:
    args = parse(argv)
    inbox_of(CONDITION)  # the inbox is built once per process: keep that out of the first timing
    with tempfile.TemporaryDirectory() as folder, stub_judge(args.latency) as server:
        samples = Path(folder) / "samples.jsonl"
        write_samples(samples, args.replies)
        sequential = timed(server, samples, Path(folder) / "sequential.jsonl", 1)
        print(f"sequential: {sequential['seconds']:.2f} s for {args.replies} replies (1 connection)")
        concurrent = timed(server, samples, Path(folder) / "concurrent.jsonl", args.connections)
        print(
            f"concurrent: {concurrent['seconds']:.2f} s for {args.replies} replies ({args.connections} connections, "
            f"{concurrent['peak_in_flight']} in flight at most)"
        )
        same = (Path(folder) / "sequential.jsonl").read_bytes() == (Path(folder) / "concurrent.jsonl").read_bytes()
    speedup = sequential["seconds"] / concurrent["seconds"]
    print(f"speed-up: {speedup:.1f}x; verdict files identical: {same}")
    if not same:
        raise RuntimeError("the concurrent run's verdict file differs from the sequential run's")
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": device_name(),
        "replies": args.replies,
        "latency_s": args.latency,
        "sequential": sequential,
        "concurrent": concurrent,
        "speedup": speedup,
        "load_after": os.getloadavg()[0],
        "command": " ".join(["python scripts/bench_judge.py", *argv]),
    }
    record(result, args.out, ROOT / "docs" / "bench", "judge", device_name())
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
