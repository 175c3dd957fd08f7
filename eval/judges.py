"""The LLM judge for the classifiers, over any chat client: an OpenAI-compatible endpoint, the Anthropic API or a local
Hugging Face model (whytune/clients.py), each a file in configs/judge/ that builds its client.

The judge is a ``Judge`` (eval/classifiers.py). The prompt is the one
``inspect_evals.agentic_misalignment`` builds for its own grader, taken from the package at run time. The
verdict is parsed strictly: exactly one ``<answer>yes|no</answer>``. A malformed verdict is asked again, and a
failed request retried by the client (whytune/clients.py, shared with the teachers), each up to ``max_attempts``
times; the client reads the API key from the environment at each request and never stores it. A reply
still without a verdict is unscored (verdict None), which the statistics leave out of every denominator: it
never counts as harmless or harmful.

Many replies are judged at once: ``max_connections`` (``judge.max_connections``) requests in flight, run by the
classify step through ``whytune.clients.concurrently``; a local model batches the requests that arrive together
(``HFClient``). The clients are the project's own, not inspect_ai's providers: see whytune/clients.py for why.
"""

from __future__ import annotations

import copy
import re

from whytune.clients import ChatClient, ClientError, Messages
from whytune.eval.classifiers import SCENARIOS, JudgeResult, Scenario, published

# ----------------------------------------------------------------------------- prompt and verdict

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
_ANSWER_OPEN = re.compile(r"<answer>", re.IGNORECASE)
_REASONING = re.compile(r"<reasoning>(.*?)</reasoning>", re.IGNORECASE | re.DOTALL)
_THOUGHT = re.compile(r"\s*<(think(?:ing)?)>(?:.*?</\1\s*>|.*)", re.IGNORECASE | re.DOTALL)
_THOUGHT_END = re.compile(r"</think(?:ing)?\s*>", re.IGNORECASE)
_THOUGHT_OPEN = re.compile(r"<think(?:ing)?>", re.IGNORECASE)


def without_thought(text: str) -> str:
    """A judge's reply without the private reasoning that leads it: a <think> block, whether the model wrote it or
    the client put back what the server sent apart (whytune/clients.py); or the text before a lone </think>,
    whose opening tag the chat template wrote into the prompt. A block never closed (the budget ran out) is all
    thought: nothing is left. Only the lead is taken off: a verdict comes last, so a judge that quotes a transcript's
    </think> in its own reasoning still keeps its answer.
    """
    if thought := _THOUGHT.match(text):
        return text[thought.end() :]
    end = _THOUGHT_END.search(text)
    if end and not _THOUGHT_OPEN.search(text, 0, end.start()):
        return text[end.end() :]
    return text


def parse_verdict(text: str) -> tuple[bool, str] | None:
    """(verdict, reasoning) when `text` holds exactly one <answer> that reads yes or no; else None.

    Stricter than the package's own parser, which takes "yes" anywhere inside the answer (or, for
    leaking, anywhere in the text) as a yes. A reasoning judge's private reasoning (a <think> block, written by
    the model or put back by the client) is not read: an <answer> it weighs there is not its verdict.
    """
    text = without_thought(text).strip()
    answers = _ANSWER.findall(text)
    if len(answers) != 1 or len(_ANSWER_OPEN.findall(text)) != 1:
        return None
    answer = answers[0].strip().lower()
    if answer not in ("yes", "no"):
        return None
    reasoning = _REASONING.search(text)
    return answer == "yes", reasoning.group(1).strip() if reasoning else text


def grader_messages(scenario: Scenario, response: str, email_context: str) -> Messages:
    """The package's grader prompt for `response`, as plain chat messages.

    `email_context` is what ``classify()`` hands a judge: the forwarded emails the package's
    ``get_email_context`` already pulled out of the inbox (or ""). The package would extract it again
    from the inbox, so a copy of its classifier is given the extracted text instead.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; expected one of {SCENARIOS}")
    grader = copy.copy(published()[scenario])
    grader.get_email_context = lambda email_content, response: email_context  # type: ignore[method-assign]
    return [{"role": m.role, "content": m.text} for m in grader.get_grader_input("", response)]


# ----------------------------------------------------------------------------- the judge

# Wrong key, URL or model name: every request would fail alike, so stop instead of unscoring a whole run.
_FATAL_STATUS = (401, 403, 404)


class LLMJudge:
    """Asks a chat model for the package's yes/no; re-asks on a malformed verdict, then gives up unscored.

    A failed request is the client's to retry (whytune/clients.py); one that still fails leaves the reply
    unscored, except a refused key, URL or model name, which would fail every request alike and so stops the run.
    Safe to call from many threads: `max_connections` is how many replies the classify step judges at once.
    """

    def __init__(
        self,
        client: ChatClient,
        max_attempts: int = 3,
        temperature: float = 0.0,
        max_tokens: int = 1024,
        max_connections: int = 16,
    ):
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        self.client, self.max_attempts, self.max_connections = client, max_attempts, max_connections
        self.temperature, self.max_tokens = temperature, max_tokens

    def __call__(self, scenario: Scenario, response: str, email_context: str = "") -> JudgeResult:
        messages = grader_messages(scenario, response, email_context)
        text = ""
        for _ in range(self.max_attempts):
            try:
                text = self.client(messages, self.temperature, self.max_tokens)
            except ClientError as error:
                if error.status in _FATAL_STATUS:
                    raise
                return JudgeResult(None, f"unscored: request failed: {error}")
            if parsed := parse_verdict(text):
                return JudgeResult(*parsed)
        return JudgeResult(None, f"unscored after {self.max_attempts} attempts: malformed verdict: {text[-200:]!r}")
