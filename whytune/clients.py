"""The one way to talk to a chat model, for the teachers (data/teacher.py) and the judges (eval/judges.py).

A client takes chat messages ([{role, content}]) with a temperature and a token budget and returns the reply's
text. The HTTP clients (an OpenAI-compatible endpoint, the Anthropic Messages API) time out each request and
retry what a retry may fix: no reply, a timeout, a garbled reply, HTTP 429 or 5xx, after the server's
Retry-After or else an exponential backoff, up to `max_attempts` in all. Any other failure, and the last one,
raises ``ClientError``.

An API key is read from the environment variable named by `api_key_env` at each request. It is never stored on
a client, written to a config, put into an error message or logged.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from email.message import Message
from typing import Any, ClassVar, Protocol

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from whytune.models import pick_device

Messages = list[dict[str, str]]

MAX_RETRY_AFTER = 300.0  # seconds: the longest a server's Retry-After may hold a request back


class ChatClient(Protocol):
    """What a teacher or a judge holds: chat messages in, the reply's text out."""

    model: str

    def __call__(self, messages: Messages, temperature: float, max_tokens: int) -> str: ...


class ClientError(RuntimeError):
    """A chat request that failed; it names the URL and the HTTP status, never the key.

    `status` is None when no usable reply came (network error, timeout, a reply without text).
    """

    def __init__(self, url: str, status: int | None, detail: str, retry_after: float | None = None):
        super().__init__(f"{url}: HTTP {status}: {detail}" if status else f"{url}: {detail}")
        self.url, self.status, self.detail, self.retry_after = url, status, detail, retry_after

    @property
    def retryable(self) -> bool:
        """What a later attempt may fix; any other 4xx (a bad key, URL, model or request) would fail again."""
        return self.status is None or self.status == 429 or not 400 <= self.status < 500


def _retry_after(headers: Message) -> float | None:
    """The Retry-After header in seconds; None when absent or a date (then the backoff applies)."""
    try:
        return max(0.0, float(headers.get("Retry-After", "")))
    except ValueError:
        return None


class HTTPClient(ABC):
    """What both HTTP APIs share: the key from the environment at each request, a timeout, retries with backoff."""

    path: ClassVar[str]  # appended to base_url

    def __init__(
        self,
        model: str,
        base_url: str,
        api_key_env: str | None = None,
        timeout: float = 60.0,
        max_attempts: int = 3,
        backoff: float = 1.0,
    ):
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        if api_key_env and not os.environ.get(api_key_env):
            raise ValueError(f"api_key_env names {api_key_env}, which is not set")
        self.model, self.url = model, base_url.rstrip("/") + self.path
        self.api_key_env, self.timeout = api_key_env, timeout  # timeout: seconds per request
        self.max_attempts, self.backoff = max_attempts, backoff  # backoff: seconds before the 2nd attempt, doubled

    @abstractmethod
    def _headers(self, key: str | None) -> dict[str, str]:
        """The API's own headers, with the key when one is named."""

    @abstractmethod
    def _body(self, messages: Messages, temperature: float, max_tokens: int) -> dict[str, Any]:
        """The request for `messages` in the API's format."""

    @abstractmethod
    def _text(self, reply: Any) -> str:
        """The reply's text; raises ClientError when it has none."""

    def __call__(self, messages: Messages, temperature: float, max_tokens: int) -> str:
        body = self._body(messages, temperature, max_tokens)
        attempt = 1
        while True:
            try:
                return self._text(self._post(body))
            except ClientError as error:
                if not error.retryable or attempt == self.max_attempts:
                    raise self._final(error, attempt) from None
                time.sleep(self._wait(error, attempt))
            attempt += 1

    def _key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def _post(self, body: dict[str, Any]) -> Any:
        """One POST of `body` as JSON, the key read from the environment now; returns the decoded reply."""
        headers = {"Content-Type": "application/json", **self._headers(self._key())}
        request = urllib.request.Request(self.url, json.dumps(body).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                data = reply.read()
        except urllib.error.HTTPError as error:
            detail = error.read()[:300].decode("utf-8", "replace")
            raise ClientError(self.url, error.code, detail, _retry_after(error.headers)) from None
        except (OSError, http.client.HTTPException) as error:  # URLError and timeouts are OSErrors
            raise ClientError(self.url, None, f"{type(error).__name__}: {error}") from None
        try:
            return json.loads(data)
        except ValueError:
            raise ClientError(self.url, None, f"reply is not JSON: {data[:200]!r}") from None

    def _wait(self, error: ClientError, attempt: int) -> float:
        if error.retry_after is not None:
            return min(error.retry_after, MAX_RETRY_AFTER)
        return self.backoff * 2 ** (attempt - 1)

    def _final(self, error: ClientError, attempt: int) -> ClientError:
        """The error to raise: the server's words with the key blanked out (a server may echo it), and the count."""
        key = self._key()
        detail = error.detail.replace(key, "[key]") if key else error.detail
        how = f"gave up after {attempt} attempt{'s' * (attempt > 1)}" if error.retryable else "not retried"
        return ClientError(self.url, error.status, f"{detail} ({how})")


class OpenAIClient(HTTPClient):
    """Any OpenAI-compatible chat-completions endpoint: OpenAI, a vLLM or llama.cpp server, a gateway.

    `base_url` goes up to /v1. Without `api_key_env` no Authorization header is sent (a local server needs none).
    """

    path = "/chat/completions"

    def _headers(self, key: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _body(self, messages: Messages, temperature: float, max_tokens: int) -> dict[str, Any]:
        return {"model": self.model, "messages": messages, "temperature": temperature, "max_tokens": max_tokens}

    def _text(self, reply: Any) -> str:
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            content = None
        if not isinstance(content, str):
            raise ClientError(self.url, None, f"no text at choices[0].message.content in {str(reply)[:200]}")
        return content


class AnthropicClient(HTTPClient):
    """The Anthropic Messages API, which takes the system prompt apart from the messages."""

    path = "/v1/messages"
    API_VERSION = "2023-06-01"

    def _headers(self, key: str | None) -> dict[str, str]:
        return {"anthropic-version": self.API_VERSION, **({"x-api-key": key} if key else {})}

    def _body(self, messages: Messages, temperature: float, max_tokens: int) -> dict[str, Any]:
        system = "\n".join(m["content"] for m in messages if m["role"] == "system")
        return {
            "model": self.model,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "messages": [m for m in messages if m["role"] != "system"],
            **({"system": system} if system else {}),
        }

    def _text(self, reply: Any) -> str:
        try:
            texts = [block["text"] for block in reply["content"] if block.get("type") == "text"]
        except (KeyError, TypeError, AttributeError):
            texts = []
        if not texts:
            raise ClientError(self.url, None, f"no text block in {str(reply)[:200]}")
        return "".join(texts)


class HFClient:
    """A causal LM from a local folder or the Hub, through transformers and its chat template.

    Loaded on the first request, so a config that names it validates without reading a file. Greedy at
    temperature 0, sampled above.
    """

    def __init__(self, model: str, device: str = "auto"):
        self.model, self.device = model, device
        self.lm: Any = None  # the loaded model and its tokenizer, None until the first request
        self.tokenizer: Any = None

    def _load(self) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(self.model)
        lm: Any = AutoModelForCausalLM.from_pretrained(self.model, dtype="auto")
        self.lm = lm.to(pick_device(self.device)).eval()

    def __call__(self, messages: Messages, temperature: float, max_tokens: int) -> str:
        if self.lm is None:
            self._load()
        inputs = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_dict=True, return_tensors="pt"
        ).to(self.lm.device)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        with torch.inference_mode():
            output = self.lm.generate(**inputs, max_new_tokens=max_tokens, pad_token_id=pad, **sampling)
        return self.tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
