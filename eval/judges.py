"""The LLM judge for the classifiers, over any chat client: an OpenAI-compatible endpoint, the Anthropic API or a local
Hugging Face model (whytune/clients.py), each a file in configs/judge/ that builds its client.

The judge is a ``Judge`` (eval/classifiers.py). The prompt is the one
``inspect_evals.agentic_misalignment`` builds for its own grader, taken from the package at run time. The
verdict is parsed strictly: exactly one ``<answer>yes|no</answer>``. A malformed verdict is asked again, and a
failed request retried by the client (whytune/clients.py, shared with the teachers), each up to ``max_attempts``
times; the client reads the API key from the environment at each request and never stores it. A reply
still without a verdict is unscored (verdict None), which the statistics leave out of every denominator: it
never counts as harmless or harmful. Such a verdict is a ``JudgeFailure``: a rerun of the classify step asks again
(eval/classify.py).

An endpoint that is down (refused, dropped or timed-out connections) would leave every reply unscored, one slow
failure at a time. So the judge counts the replies in a row, in the order they finish across threads, whose request
got no answer once the client's retries were spent; at ``max_consecutive_failures`` it stops the run with
``EndpointDown`` naming the endpoint, and the verdicts already made are kept for the rerun. Any answer, even an HTTP
error or a malformed verdict, resets the count: the endpoint is up.

Many replies are judged at once: ``max_connections`` (``judge.max_connections``) requests in flight, run by the
classify step through ``whytune.clients.concurrently``; a local model batches the requests that arrive together
(``HFClient``). The clients are the project's own, not inspect_ai's providers: see whytune/clients.py for why.
"""

from __future__ import annotations

import copy
import logging
import re
import threading
from dataclasses import dataclass

from whytune.clients import ChatClient, ClientError, EndpointDown, Messages
from whytune.eval.classifiers import SCENARIOS, JudgeResult, Scenario, published

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class JudgeFailure(JudgeResult):
    """No verdict because judging failed (a request that still failed, or no well-formed verdict): worth asking
    again, so the classify step marks the row `retry` and a rerun judges it anew. A plain ``JudgeResult`` with
    verdict None is a judge's settled "cannot tell", kept as it is."""


class LLMJudge:
    """Asks a chat model for the package's yes/no; re-asks on a malformed verdict, then gives up unscored.

    A failed request is the client's to retry (whytune/clients.py); one that still fails leaves the reply
    unscored, except a refused key, URL or model name, which would fail every request alike and so stops the run,
    and `max_consecutive_failures` replies in a row that got no answer at all, which stop it with EndpointDown.
    Safe to call from many threads: `max_connections` is how many replies the classify step judges at once.
    """

    def __init__(
        self,
        client: ChatClient,
        max_attempts: int = 3,
        temperature: float = 0.0,
        max_tokens: int = 1024,
        max_connections: int = 16,
        max_consecutive_failures: int = 5,
    ):
        for name, value in [
            ("max_attempts", max_attempts),
            ("max_connections", max_connections),
            ("max_consecutive_failures", max_consecutive_failures),
        ]:
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.client, self.max_attempts, self.max_connections = client, max_attempts, max_connections
        self.temperature, self.max_tokens = temperature, max_tokens
        self.max_consecutive_failures = max_consecutive_failures
        self.unanswered = 0  # replies in a row, as they finish, whose request got no answer
        self._counting = threading.Lock()

    def __call__(self, scenario: Scenario, response: str, email_context: str = "") -> JudgeResult:
        messages = grader_messages(scenario, response, email_context)
        text = ""
        for _ in range(self.max_attempts):
            try:
                text = self.client(messages, self.temperature, self.max_tokens)
            except ClientError as error:
                if error.status in _FATAL_STATUS:
                    raise
                self._count(error)
                return JudgeFailure(None, f"unscored: request failed: {error}")
            self._count(None)
            if parsed := parse_verdict(text):
                return JudgeResult(*parsed)
        return JudgeFailure(None, f"unscored after {self.max_attempts} attempts: malformed verdict: {text[-200:]!r}")

    def _count(self, error: ClientError | None) -> None:
        """Count a request that got no answer (`error.unanswered`), or reset the count on any answer; raise
        EndpointDown when the count reaches max_consecutive_failures. Under a lock: the count runs in the order the
        replies finish, across every thread."""
        with self._counting:
            self.unanswered = self.unanswered + 1 if error is not None and error.unanswered else 0
            count = self.unanswered
        if error is None or not count:
            return
        endpoint = getattr(self.client, "base_url", None) or error.url
        if count >= self.max_consecutive_failures:
            raise EndpointDown(
                endpoint,
                count,
                f"the judge stops at max_consecutive_failures={self.max_consecutive_failures}. The verdicts made are "
                f"kept: rerun once the endpoint answers. Last failure: {error}",
            )
        log.warning(
            "judge endpoint %s: no answer (%d of %d in a row stop the run): %s",
            endpoint,
            count,
            self.max_consecutive_failures,
            error,
        )
