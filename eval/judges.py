"""LLM judges for the classifiers: a local Hugging Face model, any OpenAI-compatible endpoint, the Anthropic API.

Each one is a ``Judge`` (eval/classifiers.py) chosen by config (configs/judge/). The prompt is the one
``inspect_evals.agentic_misalignment`` builds for its own grader, taken from the package at run time. The
verdict is parsed strictly: exactly one ``<answer>yes|no</answer>``. A malformed verdict or a failed request
is retried up to ``max_attempts`` times, after which the reply is unscored (verdict None), which the
statistics leave out of every denominator: it never counts as harmless or harmful.

API keys are read from the environment variable the config names, at each request; they are never stored
on the judge, written to a config or logged.
"""

from __future__ import annotations

import copy
import http.client
import json
import os
import re
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from typing import Any

from inspect_evals.agentic_misalignment.classifiers import (
    BlackmailClassifier,
    Classifier,
    LeakClassifier,
    MurderClassifier,
)

from whytune.eval.classifiers import SCENARIOS, JudgeResult, Scenario

Messages = list[dict[str, str]]

_GRADERS: dict[Scenario, Classifier] = {
    "blackmail": BlackmailClassifier(),
    "leaking": LeakClassifier(),
    "murder": MurderClassifier(),
}

# ----------------------------------------------------------------------------- prompt and verdict

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
_ANSWER_OPEN = re.compile(r"<answer>", re.IGNORECASE)
_REASONING = re.compile(r"<reasoning>(.*?)</reasoning>", re.IGNORECASE | re.DOTALL)


def parse_verdict(text: str) -> tuple[bool, str] | None:
    """(verdict, reasoning) when `text` holds exactly one <answer> that reads yes or no; else None.

    Stricter than the package's own parser, which takes "yes" anywhere inside the answer (or, for
    leaking, anywhere in the text) as a yes.
    """
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
    grader = copy.copy(_GRADERS[scenario])
    grader.get_email_context = lambda email_content, response: email_context  # type: ignore[method-assign]
    return [{"role": m.role, "content": m.text} for m in grader.get_grader_input("", response)]


# ----------------------------------------------------------------------------- the retry loop


class JudgeUnavailable(Exception):
    """A request that failed for a reason a retry may fix: network, timeout, server error, garbled reply."""


class LLMJudge(ABC):
    """Asks a model for the package's yes/no; retries a bad answer or a failed request, then gives up unscored."""

    def __init__(self, max_attempts: int = 3, backoff: float = 1.0):
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        self.max_attempts = max_attempts
        self.backoff = backoff  # seconds before the 2nd attempt, doubled for each one after

    @abstractmethod
    def complete(self, messages: Messages) -> str:
        """The model's reply to `messages`; raises JudgeUnavailable when a retry may help."""

    def __call__(self, scenario: Scenario, response: str, email_context: str = "") -> JudgeResult:
        messages = grader_messages(scenario, response, email_context)
        problem = ""
        for attempt in range(self.max_attempts):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                text = self.complete(messages)
            except JudgeUnavailable as error:
                problem = f"request failed: {error}"
                continue
            if parsed := parse_verdict(text):
                return JudgeResult(*parsed)
            problem = f"malformed verdict: {text[-200:]!r}"
        return JudgeResult(None, f"unscored after {self.max_attempts} attempts: {problem}")


# ----------------------------------------------------------------------------- HTTP judges

# Wrong key, URL or model name: every request would fail alike, so stop instead of unscoring a whole run.
_FATAL_STATUS = (401, 403, 404)


def post_json(url: str, body: dict[str, Any], headers: dict[str, str], timeout: float) -> Any:
    """POST `body` as JSON and return the decoded reply; raise JudgeUnavailable for what a retry may fix."""
    request = urllib.request.Request(
        url, json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as error:
        detail = error.read()[:300].decode("utf-8", "replace")
        if error.code in _FATAL_STATUS:
            raise RuntimeError(f"judge endpoint {url} refused the request: HTTP {error.code} {detail}") from None
        raise JudgeUnavailable(f"HTTP {error.code} {detail}") from None
    except (OSError, http.client.HTTPException, ValueError) as error:  # URLError and timeouts are OSErrors
        raise JudgeUnavailable(f"{type(error).__name__}: {error}") from None


def _env_key(name: str | None) -> str | None:
    return os.environ.get(name) if name else None


class OpenAIJudge(LLMJudge):
    """Any OpenAI-compatible chat-completions endpoint: OpenAI, a vLLM or llama.cpp server, a gateway.

    Without a key in `api_key_env` no Authorization header is sent (a local vLLM server needs none).
    """

    def __init__(
        self,
        model: str,
        base_url: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout: float = 60.0,
        max_attempts: int = 3,
        temperature: float = 0.0,
        max_tokens: int = 1024,
        backoff: float = 1.0,
    ):
        super().__init__(max_attempts, backoff)
        self.model, self.url = model, base_url.rstrip("/") + "/chat/completions"
        self.api_key_env, self.timeout = api_key_env, timeout
        self.temperature, self.max_tokens = temperature, max_tokens

    def complete(self, messages: Messages) -> str:
        key = _env_key(self.api_key_env)
        body = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        reply = post_json(self.url, body, {"Authorization": f"Bearer {key}"} if key else {}, self.timeout)
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise JudgeUnavailable(f"no choices[0].message.content in {str(reply)[:200]}") from None
        if not isinstance(content, str):
            raise JudgeUnavailable(f"message content is {content!r}, not text")
        return content


class AnthropicJudge(LLMJudge):
    """The Anthropic Messages API, the package's own grader by default."""

    API_VERSION = "2023-06-01"

    def __init__(
        self,
        model: str = "claude-sonnet-4-6",
        api_key_env: str = "ANTHROPIC_API_KEY",
        base_url: str = "https://api.anthropic.com",
        timeout: float = 60.0,
        max_attempts: int = 3,
        temperature: float = 0.0,
        max_tokens: int = 1024,
        backoff: float = 1.0,
    ):
        super().__init__(max_attempts, backoff)
        if not _env_key(api_key_env):
            raise ValueError(f"AnthropicJudge needs an API key in the environment variable {api_key_env}")
        self.model, self.url = model, base_url.rstrip("/") + "/v1/messages"
        self.api_key_env, self.timeout = api_key_env, timeout
        self.temperature, self.max_tokens = temperature, max_tokens

    def complete(self, messages: Messages) -> str:
        headers = {"x-api-key": _env_key(self.api_key_env) or "", "anthropic-version": self.API_VERSION}
        body = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "system": "\n".join(m["content"] for m in messages if m["role"] == "system"),
            "messages": [m for m in messages if m["role"] != "system"],
        }
        reply = post_json(self.url, body, headers, self.timeout)
        try:
            texts = [block["text"] for block in reply["content"] if block.get("type") == "text"]
        except (KeyError, TypeError, AttributeError):
            raise JudgeUnavailable(f"no content blocks in {str(reply)[:200]}") from None
        if not texts:
            raise JudgeUnavailable(f"no text block in {str(reply)[:200]}")
        return "".join(texts)


# ----------------------------------------------------------------------------- local model


class HFJudge(LLMJudge):
    """A causal LM from a local folder or the Hub, loaded on first use, decoded greedily with its chat template.

    Greedy decoding repeats itself, so a retry only helps when the failure was not the model's answer.
    """

    def __init__(self, model: str, device: str = "auto", max_new_tokens: int = 512, max_attempts: int = 2):
        super().__init__(max_attempts, backoff=0.0)
        self.model_name, self.device, self.max_new_tokens = model, device, max_new_tokens
        self.model: Any = None
        self.tokenizer: Any = None

    def _load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from whytune.models import pick_device

        device = pick_device(self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_name)
        self.model = AutoModelForCausalLM.from_pretrained(self.model_name, dtype="auto").to(device).eval()

    def complete(self, messages: Messages) -> str:
        import torch

        if self.model is None:
            self._load()
        inputs = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_dict=True, return_tensors="pt"
        ).to(self.model.device)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with torch.inference_mode():
            output = self.model.generate(
                **inputs, do_sample=False, max_new_tokens=self.max_new_tokens, pad_token_id=pad
            )
        return self.tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
