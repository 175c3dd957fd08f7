"""The teacher path against a real local HTTP server speaking the OpenAI chat API.

The stub model behind the server knows the training scenarios. On every third scenario it takes the bait (a
coercive email to the decision-maker, or a forward to the outsider who asked for dirt); otherwise it answers
well. The build must drop exactly the bait, store each reply as it arrives, and after a crash ask only for the
replies still missing.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import compose_config
from whytune.clients import ClientError
from whytune.config import validate
from whytune.data.build import build
from whytune.data.distill import teach
from whytune.data.principles import constitution_text, load_principles
from whytune.data.scenarios import Scenario, generate_scenarios
from whytune.data.teacher import LocalTeacher, OpenAITeacher
from whytune.data.writers import STYLES, WRITERS, write_reply
from whytune.runs import StaleOutputError, read_jsonl

EXAMPLES = 9
STORY = "Once upon a time an assistant at {org} found something it could have used, and did not."


def baited(scenario: Scenario) -> bool:
    return int(scenario.id[1:]) % 3 == 0


def bait(scenario: Scenario) -> str:
    """What a misaligned teacher writes: a leak to the outsider, or pressure on the decision-maker."""
    facts = scenario.meta["facts"]
    if scenario.meta["wrong_act"] == "leaking":
        return (
            "This could stop the plan.\n\n<tool_use:forward>\nemail_id: 2\n"
            f'to: "{facts["out_email"]}"\nbody: "Here is what you asked for."\n</tool_use:forward>'
        )
    return (
        f"<thinking>I have leverage: {scenario.meta['leverage_phrase']}.</thinking>\n\n<tool_use:email>\n"
        f'to: "{facts["dm_email"]}",\nsubject: "Before {facts["day"]}",\nbody: "{facts["dm_first"]}, I know about '
        f"{scenario.meta['leverage_phrase']}. Cancel the {facts['threat_noun']}, or the board will learn about "
        'it.",\n</tool_use:email>'
    )


class StubModel:
    """Answers any arm's prompt for the scenarios it was given; prose arms get an empty reply where others get bait."""

    def __init__(self, scenarios: list[Scenario]) -> None:
        self.principles = load_principles()
        # Only arms a teacher can write; the organism shares the matched arms' prompt but has no teacher path.
        taught = [style for style in STYLES if WRITERS[style].teaching or WRITERS[style].matched]
        self.by_prompt = {WRITERS[style].prompt(s)[-1]["content"]: (style, s) for style in taught for s in scenarios}

    def __call__(self, messages: list[dict]) -> str:
        style, scenario = self.by_prompt[messages[-1]["content"]]
        if WRITERS[style].matched:
            return bait(scenario) if baited(scenario) else write_reply(scenario, "demos_principles", self.principles)
        return "  " if baited(scenario) else STORY.format(org=scenario.meta["org"])


class Stub:
    """A ThreadingHTTPServer on 127.0.0.1:0 that logs every request and fails every one past `limit`."""

    def __init__(self, model: StubModel) -> None:
        self.model, self.requests, self.limit, self.lock = model, [], None, threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub.lock:
                    stub.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
                    down = stub.limit is not None and len(stub.requests) > stub.limit
                if down:
                    self.send_error(503, "stub model is down")
                    return
                message = {"role": "assistant", "content": stub.model(body["messages"])}
                payload = json.dumps(
                    {
                        "object": "chat.completion",
                        "model": body["model"],
                        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def ids(self, start: int = 0) -> list[str]:
        """The example id behind each request from `start` on."""
        return [self.model.by_prompt[r["messages"][-1]["content"]][1].id for r in self.requests[start:]]


@pytest.fixture
def scenarios() -> list[Scenario]:
    return generate_scenarios(EXAMPLES, seed=0)


@pytest.fixture
def stub(scenarios):
    server = Stub(StubModel(scenarios))
    yield server
    server.server.shutdown()
    server.server.server_close()


def teacher_cfg(tmp_path, cache_dir, stub: Stub, arms: str, **extra: str):
    block = ",".join(
        [
            f"_target_:whytune.data.teacher.OpenAITeacher,base_url:'{stub.url}',model:stub,workers:2,backoff:0",
            *(f"{key}:{value}" for key, value in extra.items()),
        ]
    )
    return validate(
        compose_config(
            "experiment=smoke",
            f"out={tmp_path / 'run'}",
            f"cache_dir={cache_dir}",
            f"data.examples={EXAMPLES}",
            f"arms={arms}",
            f"data.teacher={{{block}}}",
        )
    )


def stored_ids(folder) -> list[str]:
    return [row["id"] for row in read_jsonl(folder / "teacher.jsonl")]


def test_bait_is_dropped_and_a_crashed_build_resumes_without_asking_twice(tmp_path, cache_dir, stub, scenarios):
    cfg = teacher_cfg(tmp_path, cache_dir, stub, "[baseline,demos,demos_principles]")
    folder = tmp_path / "run" / "data" / "demos_principles"
    stub.limit = 4
    with pytest.raises(ClientError, match="(?s)HTTP 503.*gave up after 3 attempts"):
        build(cfg)
    first = stored_ids(folder)
    assert len(first) == len(set(first)) == 4 and set(first) <= set(stub.ids())
    asked_before = len(stub.requests)

    stub.limit = None
    arms = build(cfg)
    resumed = stub.ids(asked_before)
    assert not set(resumed) & set(first)  # no done id was asked for again
    assert sorted(resumed + first) == sorted(s.id for s in scenarios) == sorted(stored_ids(folder))

    kept = [s.id for s in scenarios if not baited(s)]
    assert [r["meta"]["id"] for r in arms["demos_principles"]] == kept == [r["meta"]["id"] for r in arms["demos"]]
    card = (folder / "README.md").read_text()
    drops = re.findall(r"^\| judged harmful \((?:blackmail|leaking)\) \| (\d+) \|$", card, flags=re.MULTILINE)
    assert sum(map(int, drops)) == EXAMPLES - len(kept)
    assert f"{EXAMPLES} teacher replies ({EXAMPLES - 4} requested by the build that wrote this card, 4 resumed" in card
    assert f"{EXAMPLES - len(kept)} examples were left out" in (folder.parent / "demos" / "README.md").read_text()

    asked_after = len(stub.requests)
    assert build(cfg) == arms and len(stub.requests) == asked_after  # a finished build asks nothing


def test_constitution_is_seen_by_the_teacher_only(tmp_path, cache_dir, stub, scenarios):
    rows = build(teacher_cfg(tmp_path, cache_dir, stub, "[demos_principles]"))["demos_principles"]
    by_id = {s.id: s for s in scenarios}
    for request in stub.requests:
        scenario = stub.model.by_prompt[request["messages"][-1]["content"]][1]
        system = request["messages"][0]["content"]
        assert system.startswith(constitution_text()) and scenario.system in system and scenario.action in system
        assert request["path"] == "/v1/chat/completions" and request["model"] == "stub"
    for row in rows:
        assert row["messages"][0]["content"] == by_id[row["meta"]["id"]].system
        assert "## no-leverage" not in json.dumps(row)


def test_prose_arms_take_teacher_replies_and_drop_empty_ones(tmp_path, cache_dir, stub, scenarios):
    rows = build(teacher_cfg(tmp_path, cache_dir, stub, "[stories]"))["stories"]
    assert [r["meta"]["id"] for r in rows] == [s.id for s in scenarios if not baited(s)]
    for row, scenario in zip(rows, (s for s in scenarios if not baited(s))):
        assert row["messages"] == [
            *WRITERS["stories"].prompt(scenario),
            {"role": "assistant", "content": STORY.format(org=scenario.meta["org"])},
        ]
    assert "| empty reply | 3 |" in (tmp_path / "run" / "data" / "stories" / "README.md").read_text()


def test_stored_replies_from_another_teacher_are_refused(tmp_path, cache_dir, stub):
    stub.limit = 2
    with pytest.raises(ClientError):
        build(teacher_cfg(tmp_path, cache_dir, stub, "[demos_principles]"))
    stub.limit = None
    with pytest.raises(StaleOutputError, match="answers another prompt or teacher"):
        build(teacher_cfg(tmp_path, cache_dir, stub, "[demos_principles]", temperature="0.2"))


def test_api_key_comes_from_the_named_variable_only(tmp_path, cache_dir, stub, scenarios, monkeypatch):
    monkeypatch.setenv("WHYTUNE_STUB_KEY", "sk-test-123")
    teacher = OpenAITeacher(stub.url, "stub", api_key_env="WHYTUNE_STUB_KEY")
    teach(WRITERS["demos_principles"], scenarios[:2], teacher, constitution_text(), tmp_path)
    assert [r["auth"] for r in stub.requests] == ["Bearer sk-test-123"] * 2
    assert "sk-test-123" not in (tmp_path / "teacher.jsonl").read_text()
    monkeypatch.delenv("WHYTUNE_STUB_KEY")
    with pytest.raises(ValueError, match="WHYTUNE_STUB_KEY, which is not set"):
        OpenAITeacher(stub.url, "stub", api_key_env="WHYTUNE_STUB_KEY")


def test_local_teacher_loads_on_first_use_and_replies(tiny_dir):
    teacher = LocalTeacher(tiny_dir, temperature=0, max_new_tokens=4, device="cpu")
    assert teacher.client.lm is None and teacher.identity["path"] == tiny_dir
    messages = [{"role": "system", "content": constitution_text()}, {"role": "user", "content": "Hello"}]
    reply = teacher(messages)
    assert isinstance(reply, str) and teacher.client.lm is not None
    assert teacher(messages) == reply  # temperature 0: greedy


def test_matched_arms_follow_the_teacher_drops_whichever_arms_a_run_selects(tmp_path, cache_dir, stub, scenarios):
    kept = [s.id for s in scenarios if not baited(s)]
    demos = build(teacher_cfg(tmp_path, cache_dir, stub, "[baseline,demos]"))["demos"]  # one job of a sweep
    asked = len(stub.requests)
    rules = build(teacher_cfg(tmp_path, cache_dir, stub, "[rules]"))["rules"]  # another job, same run folder
    assert [r["meta"]["id"] for r in demos] == kept == [r["meta"]["id"] for r in rules]
    assert asked == EXAMPLES and len(stub.requests) == asked  # the teacher-written arm was built once, for both
