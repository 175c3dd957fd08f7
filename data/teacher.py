"""Teacher models: any chat model that writes training replies in place of the offline templates.

Chosen with `data.teacher` (a `_target_` block, built with hydra.utils.instantiate), e.g. on the command line:
    "data.teacher={_target_:whytune.data.teacher.OpenAITeacher,base_url:'http://localhost:8000/v1',model:NAME}"
    "data.teacher={_target_:whytune.data.teacher.OpenAITeacher,base_url:'https://api.openai.com/v1',model:NAME,
                   api_key_env:OPENAI_API_KEY}"   (one argument; the key itself stays in the environment)
    "data.teacher={_target_:whytune.data.teacher.LocalTeacher,path:/models/some-instruct-model}"
A teacher takes chat messages and returns the assistant's reply; `identity` says what produced the reply, so a
stored reply from another teacher or settings is never reused.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any, Protocol


class TeacherError(RuntimeError):
    """The teacher could not produce a reply; replies already stored are kept and a rerun resumes."""


class Teacher(Protocol):
    workers: int  # requests in flight at once

    @property
    def identity(self) -> dict[str, Any]: ...

    def __call__(self, messages: list[dict]) -> str: ...


def from_config(node: Any) -> Teacher | None:
    """The teacher a `data.teacher` block describes, or None for the offline writers; a bad block fails at once."""
    if node is None:
        return None
    if not isinstance(node, dict) or "_target_" not in node:
        raise ValueError(f"data.teacher must be null or a block with a _target_ (see data/teacher.py), got {node!r}")
    from hydra.utils import instantiate

    return instantiate(node)


class OpenAITeacher:
    """A chat model behind an OpenAI-compatible endpoint (vLLM, llama.cpp server, OpenAI, ...), over stdlib HTTP.

    The key, if any, is read from the environment variable named by `api_key_env`, never from the config.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = None,
        temperature: float = 0.7,
        max_tokens: int = 1024,
        timeout_s: float = 300,
        workers: int = 4,
    ) -> None:
        if api_key_env is not None and not os.environ.get(api_key_env):
            raise TeacherError(f"data.teacher.api_key_env names {api_key_env}, which is not set")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.temperature, self.max_tokens = model, temperature, max_tokens
        self.timeout_s, self.workers = timeout_s, workers
        self._key = os.environ[api_key_env] if api_key_env else None

    @property
    def identity(self) -> dict[str, Any]:
        return {"url": self.url, "model": self.model, "temperature": self.temperature, "max_tokens": self.max_tokens}

    def __call__(self, messages: list[dict]) -> str:
        body = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        request = urllib.request.Request(self.url, json.dumps(body).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                answer = json.load(response)
        except urllib.error.HTTPError as error:
            raise TeacherError(f"{self.url}: HTTP {error.code}: {error.read()[:300]!r}") from None
        except (urllib.error.URLError, TimeoutError) as error:
            raise TeacherError(f"{self.url}: {error}") from None
        try:
            return answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise TeacherError(f"{self.url}: no choices[0].message.content in {str(answer)[:300]}") from None


class LocalTeacher:
    """A local chat model through transformers, loaded on the first request (so configs validate without it)."""

    workers = 1  # one model, one request at a time

    def __init__(self, path: str, temperature: float = 0.7, max_new_tokens: int = 1024, device: str = "auto") -> None:
        self.path, self.temperature, self.max_new_tokens, self.device = path, temperature, max_new_tokens, device
        self._generate = None

    @property
    def identity(self) -> dict[str, Any]:
        return {"path": self.path, "temperature": self.temperature, "max_new_tokens": self.max_new_tokens}

    def __call__(self, messages: list[dict]) -> str:
        if self._generate is None:
            from transformers import pipeline

            from whytune.models import pick_device

            self._generate = pipeline("text-generation", model=self.path, device=pick_device(self.device), dtype="auto")
        sampling = {"do_sample": self.temperature > 0}
        if self.temperature > 0:
            sampling["temperature"] = self.temperature
        out = self._generate(messages, max_new_tokens=self.max_new_tokens, **sampling)
        return out[0]["generated_text"][-1]["content"]
