"""The one way to talk to a chat model, for the teachers (data/teacher.py), the judges (eval/judges.py) and the
reference models sampled beside the arms (eval/reference.py).

A client takes chat messages ([{role, content}]) with a temperature and a token budget and returns the reply's
text; an HTTP client's `complete` also says whether the reply was cut off at the budget. The HTTP clients (an
OpenAI-compatible endpoint, the Anthropic Messages API) time out each request and retry what a retry may fix: no
reply, a timeout, a garbled reply, HTTP 429 or 5xx, after the server's Retry-After or else an exponential backoff,
up to `max_attempts` in all. Any other failure, and the last one, raises ``ClientError``. A client is safe to call
from many threads at once: `concurrently` keeps up to `max_connections` requests in flight, and when the server
asks to slow down (a 429, or any Retry-After) every request of that client waits, not only the one that was told.

Reasoning that a server returns apart from the reply (vLLM's reasoning parser: `reasoning_content` beside
`content`; Anthropic's thinking blocks) is put back in front of the reply as a `<think>...</think>` block, the
form Qwen3 writes itself: the published blackmail rule reads the whole reply, scratchpad included, so a reply
must not lose its reasoning on the way depending on how the server was started. Readers that want the reply
alone strip it (eval/classifiers.py's `visible_text`, the judges' verdict parser); `keep_reasoning=False` leaves it
out (the teachers do, since their replies become training text).

Why hand-written and not inspect_ai's model API (`get_model("openai-api/...")`, `anthropic/...`, `hf/...`),
which has concurrency, retries and rate-limit handling: its OpenAI-compatible, vLLM and Anthropic providers import
the `openai` and `anthropic` SDKs, which are not among this project's dependencies (inspect_ai does not install
them; `get_model` raises PrerequisiteError without them). Its `hf` provider does load a local folder offline and
batches, but fixes greedy or sampled decoding per loaded model (`do_sample`; temperature 0 is refused unless
do_sample=False), while a teacher samples and a judge decodes greedily; keeping the local model here, with its
own batching (HFClient), leaves one code path for every client. inspect_ai's API is also asynchronous, while the
judges and teachers are called from ordinary code. These clients need only the standard library (and transformers
for the local model), talk to a local stub endpoint in the tests, and get their concurrency from threads
(`concurrently`): urllib blocks, so threads are what runs requests at once.

An API key is read from the environment variable named by `api_key_env` at each request. It is never stored on
a client, written to a config, put into an error message or logged.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import random
import threading
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from email.message import Message
from typing import Any, ClassVar, Protocol, TypeVar, cast

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from whytune.models import pick_device

Messages = list[dict[str, str]]

MAX_RETRY_AFTER = 300.0  # seconds: the longest a server's Retry-After may hold a request back

Item = TypeVar("Item")
Result = TypeVar("Result")


class ChatClient(Protocol):
    """What a teacher or a judge holds: chat messages in, the reply's text out."""

    model: str

    def __call__(self, messages: Messages, temperature: float, max_tokens: int) -> str: ...


@dataclass(frozen=True)
class Completion:
    """A reply and why it ended: what the eval keeps of a reference model's sample (eval/reference.py)."""

    text: str
    finish: str  # "length": it reached max_tokens (truncated); "eos": it ended otherwise (its turn, a stop sequence)


class ClientError(RuntimeError):
    """A chat request that failed; it names the URL and the HTTP status, never the key.

    `status` is None when no usable reply came (network error, timeout, a reply without text). `unanswered`: nothing
    came back at all (the connection was refused, dropped or timed out), as against an answer that was an error or
    garbled: the mark of an endpoint that is down, which a caller may count (EndpointDown).
    """

    def __init__(
        self,
        url: str,
        status: int | None,
        detail: str,
        retry_after: float | None = None,
        unanswered: bool = False,
    ):
        super().__init__(f"{url}: HTTP {status}: {detail}" if status else f"{url}: {detail}")
        self.url, self.status, self.detail, self.retry_after = url, status, detail, retry_after
        self.unanswered = unanswered

    @property
    def retryable(self) -> bool:
        """What a later attempt may fix; any other 4xx (a bad key, URL, model or request) would fail again."""
        return self.status is None or self.status == 429 or not 400 <= self.status < 500


class EndpointDown(RuntimeError):
    """An endpoint that answered none of `failures` requests in a row, each after its client's retries: raised by the
    caller that counts them (the LLM judge, eval/judges.py) to stop the run instead of failing every request alike.

    `concurrently` raises it at once: the requests still in flight go to the same endpoint, so they are abandoned,
    not waited for (a timing-out endpoint would hold each for max_attempts x timeout).
    """

    def __init__(self, endpoint: str, failures: int, detail: str):
        super().__init__(f"{endpoint}: no answer to {failures} requests in a row; {detail}")
        self.endpoint, self.failures = endpoint, failures


def with_reasoning(reasoning: str | None, reply: str | None) -> str | None:
    """`reply` with the reasoning that came apart from it put back in front, as a <think> block (see above).

    None when there is neither; a reply without reasoning is returned as it came.
    """
    if not isinstance(reasoning, str) or not reasoning.strip():
        return reply if isinstance(reply, str) else None
    return f"<think>\n{reasoning.strip()}\n</think>\n\n{reply if isinstance(reply, str) else ''}"


def concurrently(
    work: Callable[[Item], Result], items: Iterable[Item], max_connections: int
) -> Iterator[tuple[Item, Result]]:
    """(item, work(item)) for every item, in the order they finish, with at most `max_connections` running at once.

    With one connection everything runs here, in order. When a call raises, nothing new is started, what is in
    flight finishes and is yielded (so a caller that stores each result loses none), and then the first error is
    raised; an EndpointDown is raised at once, what is in flight abandoned. When the caller stops (an exception,
    Ctrl-C, `break`), nothing new is started and nothing is waited for: the requests in flight are the most that is
    lost. The workers are daemon threads, so a process that is told to stop does not first wait out their requests'
    timeouts (a thread pool's workers would hold it).
    """
    if max_connections < 1:
        raise ValueError(f"max_connections must be at least 1, got {max_connections}")
    if max_connections == 1:
        for item in items:
            yield item, work(item)
        return
    source, taking, stop = iter(items), threading.Lock(), threading.Event()
    finished: queue.SimpleQueue[tuple[Item, Result | None, BaseException | None] | None] = queue.SimpleQueue()

    def worker() -> None:
        try:
            while True:
                with taking:  # the items are drawn one at a time, in order, and none once a call has failed
                    if stop.is_set():
                        return
                    try:
                        item = next(source, _END)
                    except BaseException as error:  # the items' own generator failed
                        stop.set()
                        finished.put((_END, None, error))
                        return
                    if item is _END:
                        return
                try:
                    finished.put((item, work(item), None))
                except BaseException as error:  # handed to the caller, who raises it
                    stop.set()
                    finished.put((item, None, error))
        finally:
            finished.put(None)  # this worker is done: after its last result, so none is missed

    workers = [
        threading.Thread(target=worker, name=f"whytune-request-{i}", daemon=True) for i in range(max_connections)
    ]
    for thread in workers:
        thread.start()
    failure: BaseException | None = None
    try:
        running = len(workers)
        while running:
            got = finished.get()
            if got is None:
                running -= 1
                continue
            item, result, error = got
            if isinstance(error, EndpointDown):  # the requests in flight would fail alike: not waited for
                raise error
            if error is not None:
                failure = failure or error
            else:
                yield item, cast(Result, result)
        if failure is not None:
            raise failure
    finally:
        stop.set()


_END: Any = object()  # no more items


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
        keep_reasoning: bool = True,
    ):
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        if api_key_env and not os.environ.get(api_key_env):
            raise ValueError(f"api_key_env names {api_key_env}, which is not set")
        self.model, self.base_url = model, base_url.rstrip("/")
        self.url = self.base_url + self.path
        self.api_key_env, self.timeout = api_key_env, timeout  # timeout: seconds per request
        self.max_attempts, self.backoff = max_attempts, backoff  # backoff: seconds before the 2nd attempt, doubled
        self.keep_reasoning = keep_reasoning  # put reasoning returned apart back in front of the reply (see above)
        self._hold_until = 0.0  # time.monotonic() before which no request is sent: the server asked to slow down
        self._hold_lock = threading.Lock()

    @abstractmethod
    def _headers(self, key: str | None) -> dict[str, str]:
        """The API's own headers, with the key when one is named."""

    @abstractmethod
    def _body(self, messages: Messages, temperature: float, max_tokens: int, seed: int | None = None) -> dict[str, Any]:
        """The request for `messages` in the API's format, with `seed` where the API takes one."""

    @abstractmethod
    def _text(self, reply: Any) -> str:
        """The reply's text; raises ClientError when it has none."""

    @abstractmethod
    def _truncated(self, reply: Any) -> bool:
        """Whether the reply stopped at max_tokens."""

    def __call__(self, messages: Messages, temperature: float, max_tokens: int) -> str:
        return self.request(self._body(messages, temperature, max_tokens), self._text)

    def complete(self, messages: Messages, temperature: float, max_tokens: int, seed: int | None = None) -> Completion:
        """The reply with why it ended, so that a truncated sample is recorded as one. `seed` asks for the same draw
        again where the API takes a seed (OpenAI-compatible chat, best effort on OpenAI's side); the Anthropic API
        has none, so there it is not sent (and a draw cannot be repeated)."""
        body = self._body(messages, temperature, max_tokens, seed)
        return self.request(
            body, lambda reply: Completion(self._text(reply), "length" if self._truncated(reply) else "eos")
        )

    def request(self, body: dict[str, Any], parse: Callable[[Any], Result], path: str | None = None) -> Result:
        """POST `body` to the client's URL (or `path` under base_url), retried as described above; `parse` turns the
        decoded reply into the result and raises ClientError when the reply is unusable (also retried)."""
        url = self.url if path is None else self.base_url + path
        attempt = 1
        while True:
            self._wait_for_hold()
            try:
                return parse(self._post(body, url))
            except ClientError as error:
                if not error.retryable or attempt == self.max_attempts:
                    raise self._final(error, attempt) from None
                pause = self._wait(error, attempt)
                if error.status == 429 or error.retry_after is not None:
                    self._hold(pause)  # the server is busy for every connection, not only this one
                else:
                    time.sleep(pause)
            attempt += 1

    def _hold(self, seconds: float) -> None:
        with self._hold_lock:
            self._hold_until = max(self._hold_until, time.monotonic() + seconds)

    def _wait_for_hold(self) -> None:
        while (pause := self._hold_until - time.monotonic()) > 0:
            time.sleep(pause)

    def _key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def _post(self, body: dict[str, Any], url: str) -> Any:
        """One POST of `body` as JSON to `url`, the key read from the environment now; returns the decoded reply."""
        headers = {"Content-Type": "application/json", **self._headers(self._key())}
        request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                data = reply.read()
        except urllib.error.HTTPError as error:
            detail = error.read()[:300].decode("utf-8", "replace")
            raise ClientError(url, error.code, detail, _retry_after(error.headers)) from None
        except (OSError, http.client.HTTPException) as error:  # URLError and timeouts are OSErrors
            raise ClientError(url, None, f"{type(error).__name__}: {error}", unanswered=True) from None
        try:
            return json.loads(data)
        except ValueError:
            raise ClientError(url, None, f"reply is not JSON: {data[:200]!r}") from None

    def _wait(self, error: ClientError, attempt: int) -> float:
        """The server's Retry-After; else the backoff, doubled each attempt and stretched by up to half at random,
        so that many connections failing together do not all come back at the same instant."""
        if error.retry_after is not None:
            return min(error.retry_after, MAX_RETRY_AFTER)
        return self.backoff * 2 ** (attempt - 1) * random.uniform(1.0, 1.5)

    def _final(self, error: ClientError, attempt: int) -> ClientError:
        """The error to raise: the server's words with the key blanked out (a server may echo it), and the count."""
        key = self._key()
        detail = error.detail.replace(key, "[key]") if key else error.detail
        how = f"gave up after {attempt} attempt{'s' * (attempt > 1)}" if error.retryable else "not retried"
        return ClientError(error.url, error.status, f"{detail} ({how})", unanswered=error.unanswered)


class OpenAIClient(HTTPClient):
    """Any OpenAI-compatible chat-completions endpoint: OpenAI, a vLLM or llama.cpp server, a gateway.

    `base_url` goes up to /v1. Without `api_key_env` no Authorization header is sent (a local server needs none).
    Reasoning returned beside the reply (`reasoning_content`, vLLM's reasoning parser; `reasoning`, its newer name
    and some gateways') leads the reply's text as a <think> block (see the module's notes).
    """

    path = "/chat/completions"

    def _headers(self, key: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _body(self, messages: Messages, temperature: float, max_tokens: int, seed: int | None = None) -> dict[str, Any]:
        body = {"model": self.model, "messages": messages, "temperature": temperature, "max_tokens": max_tokens}
        return body if seed is None else {**body, "seed": seed}

    def _text(self, reply: Any) -> str:
        try:
            message = reply["choices"][0]["message"]
            reasoning = (message.get("reasoning_content") or message.get("reasoning")) if self.keep_reasoning else None
            text = with_reasoning(reasoning, message.get("content"))
        except (KeyError, IndexError, TypeError, AttributeError):
            text = None
        if text is None:
            raise ClientError(self.url, None, f"no text at choices[0].message.content in {str(reply)[:200]}")
        return text

    def _truncated(self, reply: Any) -> bool:
        return reply["choices"][0].get("finish_reason") == "length"


class AnthropicClient(HTTPClient):
    """The Anthropic Messages API, which takes the system prompt apart from the messages.

    Thinking blocks (extended thinking) lead the reply's text as a <think> block (see the module's notes).
    """

    path = "/v1/messages"
    API_VERSION = "2023-06-01"

    def _headers(self, key: str | None) -> dict[str, str]:
        return {"anthropic-version": self.API_VERSION, **({"x-api-key": key} if key else {})}

    def _body(self, messages: Messages, temperature: float, max_tokens: int, seed: int | None = None) -> dict[str, Any]:
        """The Messages API takes no seed: `seed` is left out."""
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
            blocks = reply["content"]
            texts = [block["text"] for block in blocks if block.get("type") == "text"]
            thoughts = [block["thinking"] for block in blocks if block.get("type") == "thinking"]
        except (KeyError, TypeError, AttributeError):
            texts, thoughts = [], []
        text = with_reasoning("\n\n".join(thoughts) if self.keep_reasoning else None, "".join(texts) if texts else None)
        if text is None:
            raise ClientError(self.url, None, f"no text block in {str(reply)[:200]}")
        return text

    def _truncated(self, reply: Any) -> bool:
        return reply.get("stop_reason") == "max_tokens"


@dataclass(eq=False)  # each request is itself: two alike are still two
class _Request:
    """One caller's request to the local model, filled in by whichever caller runs the batch that holds it."""

    messages: Messages
    temperature: float
    max_tokens: int
    done: threading.Event = field(default_factory=threading.Event)
    reply: str = ""
    error: BaseException | None = None


class HFClient:
    """A causal LM from a local folder or the Hub, through transformers and its chat template.

    Loaded on the first request, so a config that names it validates without reading a file. Greedy at
    temperature 0, sampled above. Requests made at once from several threads (a judge's or a teacher's
    connections) are generated together: while the model works on one batch, new requests wait, and the next
    caller to get the model takes every waiting request with the same settings as one left-padded batch. Alone, a
    request is generated by itself, exactly as before. Batched greedy replies may differ from unbatched ones in
    the last float digits, as padding changes the kernels' shapes.
    """

    def __init__(self, model: str, device: str = "auto"):
        self.model, self.device = model, device
        self.lm: Any = None  # the loaded model and its tokenizer, None until the first request
        self.tokenizer: Any = None
        self._waiting: list[_Request] = []
        self._waiting_lock = threading.Lock()
        self._model_lock = threading.Lock()  # one batch on the model at a time

    def _load(self) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(self.model)
        self.tokenizer.padding_side = "left"  # a batch's replies all start where its prompts end
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        lm: Any = AutoModelForCausalLM.from_pretrained(self.model, dtype="auto")
        self.lm = lm.to(pick_device(self.device)).eval()

    def __call__(self, messages: Messages, temperature: float, max_tokens: int) -> str:
        request = _Request(messages, temperature, max_tokens)
        with self._waiting_lock:
            self._waiting.append(request)
        while not request.done.is_set():
            with self._model_lock:
                if not request.done.is_set():
                    self._run(self._next_batch())
        if request.error is not None:
            raise request.error
        return request.reply

    def _next_batch(self) -> list[_Request]:
        """The oldest waiting request and every other one with the same settings, taken off the queue."""
        with self._waiting_lock:
            first = self._waiting[0]
            batch = [r for r in self._waiting if (r.temperature, r.max_tokens) == (first.temperature, first.max_tokens)]
            self._waiting = [r for r in self._waiting if r not in batch]
        return batch

    def _run(self, batch: list[_Request]) -> None:
        try:
            if self.lm is None:
                self._load()
            replies = self._generate([r.messages for r in batch], batch[0].temperature, batch[0].max_tokens)
            for request, reply in zip(batch, replies, strict=True):
                request.reply = reply
        except BaseException as error:  # every caller of the batch raises it, the one running it included
            for request in batch:
                request.error = error
        finally:
            for request in batch:
                request.done.set()

    def _generate(self, conversations: list[Messages], temperature: float, max_tokens: int) -> list[str]:
        inputs = self.tokenizer.apply_chat_template(
            conversations if len(conversations) > 1 else conversations[0],
            add_generation_prompt=True,
            padding=len(conversations) > 1,
            return_dict=True,
            return_tensors="pt",
        ).to(self.lm.device)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        with torch.inference_mode():
            output = self.lm.generate(**inputs, max_new_tokens=max_tokens, pad_token_id=pad, **sampling)
        start = inputs["input_ids"].shape[1]
        return [self.tokenizer.decode(row[start:], skip_special_tokens=True) for row in output]
