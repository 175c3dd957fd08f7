"""Teacher models: any chat model that writes training replies in place of the offline templates.

Chosen with `data.teacher` (a `_target_` block, built with hydra.utils.instantiate), e.g. on the command line:
    "data.teacher={_target_:whytune.data.teacher.OpenAITeacher,base_url:'http://localhost:8000/v1',model:NAME}"
    "data.teacher={_target_:whytune.data.teacher.OpenAITeacher,base_url:'https://api.openai.com/v1',model:NAME,
                   api_key_env:OPENAI_API_KEY}"   (one argument; the key itself stays in the environment)
    "data.teacher={_target_:whytune.data.teacher.LocalTeacher,path:/models/some-instruct-model}"
A teacher is a client (whytune/clients.py, shared with the judges: timeouts, retries, the key read from the
environment at each request; up to `workers` requests in flight, which a local model generates as one batch)
plus the sampling settings its replies are drawn with. It takes chat messages and
returns the assistant's reply, or raises whytune.clients.ClientError (replies already stored are kept and a
rerun resumes); `identity` says what produced the reply, so a stored reply from another teacher or settings is
never reused.
"""

from __future__ import annotations

from typing import Any, Protocol

from hydra.utils import instantiate

from whytune.clients import HFClient, OpenAIClient


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
    return instantiate(node)


class OpenAITeacher:
    """A chat model behind an OpenAI-compatible endpoint (vLLM, llama.cpp server, OpenAI, ...), see OpenAIClient.

    The key, if any, is read from the environment variable named by `api_key_env`, never from the config.
    `client` takes the client's other settings: api_key_env, max_attempts, backoff. Reasoning the server returns
    apart from the reply (`reasoning_content`) is left out, as the replies become training text; `keep_reasoning:
    true` keeps it as a leading <think> block (and is part of the identity, so the two are never mixed).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        temperature: float = 0.7,
        max_tokens: int = 1024,
        timeout_s: float = 300,
        workers: int = 4,
        **client: Any,
    ) -> None:
        client.setdefault("keep_reasoning", False)
        self.client = OpenAIClient(model, base_url, timeout=timeout_s, **client)
        self.temperature, self.max_tokens, self.workers = temperature, max_tokens, workers

    @property
    def identity(self) -> dict[str, Any]:
        return {
            "url": self.client.url,
            "model": self.client.model,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            **({"keep_reasoning": True} if self.client.keep_reasoning else {}),
        }

    def __call__(self, messages: list[dict]) -> str:
        return self.client(messages, self.temperature, self.max_tokens)


class LocalTeacher:
    """A local chat model through transformers (see HFClient: loaded on the first request, so configs validate).

    `workers` requests at once are generated as one batch by the client (1, the default: one at a time).
    """

    def __init__(
        self, path: str, temperature: float = 0.7, max_new_tokens: int = 1024, device: str = "auto", workers: int = 1
    ) -> None:
        self.client = HFClient(path, device)
        self.temperature, self.max_new_tokens, self.workers = temperature, max_new_tokens, workers

    @property
    def identity(self) -> dict[str, Any]:
        return {"path": self.client.model, "temperature": self.temperature, "max_new_tokens": self.max_new_tokens}

    def __call__(self, messages: list[dict]) -> str:
        return self.client(messages, self.temperature, self.max_new_tokens)
