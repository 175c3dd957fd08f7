"""Many replies to one prompt, reading the prompt's keys and values once per step for the whole batch.

Every sample of a condition shares the prompt. HF `generate`, even with the prefilled cache expanded along the
batch, reads each sample's own copy of the prompt's keys and values at every step, and on a long prompt that
dominates decode. Here the model's attention layers call `attend` (registered with transformers'
`AttentionInterface`), which scores the queries of the whole batch against the prompt's keys held once (batch 1),
then against each sample's own few keys since (`SuffixCache`), and softmaxes over both. LoRA changes only linear
layers, so adapters (active or disabled) need nothing special. Finished samples leave the batch.

On CUDA each step is replayed from a CUDA graph: a small model's step is mostly Python and kernel-launch overhead
(about 35 ms a step for SmolLM2 under HF `generate` on an H100, design notes section 9), which a graph removes.
A graph needs fixed shapes, so there the suffix buffer is attended whole and positions not yet written are masked.

Sliding-window layers (Gemma 3's, five in six) see only the last `sliding_window` positions, the query's own included
(transformers' sliding_window_overlay: key position > query position - window). Every sample is at the same position
at each step, so the keys a sliding layer sees are the same slice of the prompt's and of each suffix for the whole
batch: cut to it, or, in a graph, masked by a bias computed from the step's slot.

On a CPU the linear layers run through oneDNN with their weights packed once per call (`packed_linears`): at the few
rows of a decode step MKL's fp32 GEMM, which `nn.Linear` uses, ran SmolLM2's shapes up to 2.6x slower (its lm head at
8 rows; 1.1-1.9x for the MLP and the query and output projections), only its small key and value projections about
1.2x faster; 32 greedy steps ran 1.1-1.4x slower (BENCHMARKS.md).
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import AttentionInterface

ATTENTION = "whytune_shared_prefix"
# Architectures whose attention layers pass (query, cache-updated keys, values) to the AttentionInterface, with the
# layer's window as `sliding_window` where it slides (Gemma 3: gemma3_text, and gemma3, its multimodal checkpoint).
SUPPORTED = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma3", "gemma3_text"})

log = logging.getLogger(__name__)


@dataclass
class Generation:
    """Continuations of one prompt: each sample's token ids, up to and including its eos."""

    tokens: list[list[int]]
    finished: list[bool]  # ended with eos; otherwise it reached max_new_tokens
    steps: int  # forward passes run
    rows_computed: int  # batch rows summed over those passes: the work done


def supports(model) -> bool:
    """Whether the shared-prefix step is exact for this model (else use HF generate), at any length of prompt and
    reply: sliding windows (Gemma 3's, Mistral's, Qwen's where set) are followed past their edge.

    The architecture is the checkpoint's own (Gemma 3's multimodal checkpoint included); whether its language model
    attends causally is read from the language model's config, where a multimodal config nests it: a Gemma 3 that
    attends both ways (EmbeddingGemma) would change the prompt's keys with every token sampled."""
    text = model.config.get_text_config(decoder=True)
    return model.config.model_type in SUPPORTED and not getattr(text, "use_bidirectional_attention", False)


class SuffixCache:
    """The keys and values each sample adds after the shared prompt; the prompt's own are held once (batch 1).

    The model's attention layers call `update` (the transformers cache protocol), which writes the step's keys and
    values in place into buffers sized for the whole reply and returns what the step attends to. `static` keeps
    shapes fixed for a CUDA graph: steps attend whole blocks of `block` slots, and `bias` masks the slots not yet
    written, so a graph is captured once per block rather than once per token.
    """

    def __init__(self, prefix, rows: int, capacity: int, static: bool = False, block: int = 128):
        self.prefix = [(layer.keys[0], layer.values[0]) for layer in prefix.layers]  # [kv heads, tokens, dim]
        self.prefix_length = prefix.get_seq_length()  # the prompt's tokens, though a sliding layer holds fewer
        kv_heads, _, dim = self.prefix[0][0].shape
        like = self.prefix[0][0]
        self.keys = [like.new_zeros(rows, kv_heads, capacity, dim) for _ in self.prefix]
        self.values = [like.new_zeros(rows, kv_heads, capacity, dim) for _ in self.prefix]
        self.length = 0  # slots written per sample
        self.capacity, self.block = capacity, block
        self.write_at = torch.zeros(1, dtype=torch.long, device=like.device)
        self.bias = like.new_full((capacity,), float("-inf")) if static else None

    def open_slot(self) -> None:
        """Make room for one more token per sample; call before each forward pass."""
        self.write_at.fill_(self.length)
        if self.bias is not None:
            self.bias[self.length] = 0
        self.length += 1

    @property
    def attended(self) -> int:
        """Suffix slots a step attends to: those written, or (static) the whole blocks holding them."""
        if self.bias is None:
            return self.length
        return min(self.capacity, -(-self.length // self.block) * self.block)

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        """Store this step's keys and values in the open slot; return the suffix the step attends to."""
        self.keys[layer_idx].index_copy_(2, self.write_at, key_states)
        self.values[layer_idx].index_copy_(2, self.write_at, value_states)
        return self.keys[layer_idx][:, :, : self.attended], self.values[layer_idx][:, :, : self.attended]

    def visible_prefix(
        self, layer_idx: int, window: int | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The prompt's keys and values this step's query sees on a layer, cut to them, or (static: a graph replays
        one slice at every step) with a bias masking the others, computed on the device from the step's slot.

        A layer holds the prompt's last `held` positions (a sliding one no more than the window's worth of them:
        DynamicSlidingWindowLayer keeps `window - 1` in transformers 5.25). The query, at position prefix_length +
        length - 1, sees those above its own less `window`: all but the first `length + held - window` held."""
        keys, values = self.prefix[layer_idx]
        if window is None:
            return keys, values, None
        held = keys.shape[1]
        if self.bias is None:
            first = max(self.length + held - window, 0)
            return keys[:, first:], values[:, first:], None
        return keys, values, bias(torch.arange(held, device=keys.device) > self.write_at + held - window, keys)

    def visible_suffix(
        self, key: torch.Tensor, value: torch.Tensor, window: int | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The suffix this step's query sees, from the slots `update` returned: on a sliding layer the last `window`
        written (the query's own included), cut to them, or (static) masked as the slots not yet written are."""
        if self.bias is None:
            first = 0 if window is None else max(self.length - window, 0)
            return key[:, :, first:], value[:, :, first:], None
        slots = key.shape[2]
        if window is None:
            return key, value, self.bias[:slots]
        outside = bias(torch.arange(slots, device=key.device) > self.write_at - window, self.bias)
        return key, value, self.bias[:slots] + outside

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.prefix_length + self.length

    def keep(self, rows: list[int]) -> None:
        """Drop finished samples: move the survivors' suffixes to the front of the buffers, in place."""
        index = torch.tensor(rows, device=self.write_at.device)
        for buffers in (self.keys, self.values):
            for layer, buffer in enumerate(buffers):
                buffer[: len(rows), :, : self.length] = buffer[index, :, : self.length]
                buffers[layer] = buffer[: len(rows)]


def bias(seen: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """An additive score bias in `like`'s dtype: 0 where `seen`, -inf elsewhere."""
    return like.new_zeros(seen.shape).masked_fill_(~seen, float("-inf"))


def attend(
    module,
    query,
    key,
    value,
    attention_mask,
    scaling: float,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    **kwargs,
):
    """Attention of one new token per sample over the shared prefix (read once for the batch) and its own suffix.

    Query heads are grouped by the key/value head they share (GQA), so the prefix scores are one batched matmul
    [kv heads, samples x group, dim] x [kv heads, dim, prefix]; `key` and `value` are the samples' suffixes. A layer
    that slides says so with `sliding_window` (None where it attends fully), and sees only that window of both.
    """
    cache: SuffixCache = kwargs["shared_prefix"]
    rows, heads, steps, dim = query.shape
    if steps != 1:
        raise ValueError(f"{ATTENTION} decodes one token per sample at a time, got {steps}")
    prefix_keys, prefix_values, prefix_bias = cache.visible_prefix(module.layer_idx, sliding_window)
    key, value, own_bias = cache.visible_suffix(key, value, sliding_window)
    kv_heads, prefix_length = prefix_keys.shape[:2]
    query = (query * scaling).view(rows, kv_heads, heads // kv_heads, dim)
    by_head = query.transpose(0, 1).reshape(kv_heads, -1, dim)  # [kv heads, samples x group, dim]
    own = query @ key.transpose(2, 3)  # [samples, kv heads, group, suffix]
    if own_bias is not None:
        own = own + own_bias
    own_by_head = own.transpose(0, 1).reshape(kv_heads, by_head.shape[1], -1)
    prefix_scores = by_head @ prefix_keys.transpose(1, 2)
    if prefix_bias is not None:
        prefix_scores = prefix_scores + prefix_bias
    scores = torch.cat([prefix_scores, own_by_head], dim=-1)
    probs = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(query.dtype)
    shared = (probs[..., :prefix_length] @ prefix_values).view(kv_heads, rows, -1, dim).transpose(0, 1)
    own_probs = probs[..., prefix_length:].view(kv_heads, rows, -1, own.shape[-1]).transpose(0, 1)
    output = shared + own_probs @ value  # [samples, kv heads, group, dim]
    return output.reshape(rows, 1, heads, dim), None


AttentionInterface.register(ATTENTION, attend)


@contextmanager
def shared_prefix_attention(model):
    """Route the model's attention through `attend`, restoring its own implementation afterwards."""
    config = model.config
    original = config._attn_implementation
    config._attn_implementation = ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = original


@contextmanager
def packed_linears(model, rows: int) -> Iterator[int]:
    """On a CPU, run every fp32 `nn.Linear` of `model` (a LoRA's own included) through oneDNN with its weight packed
    once for GEMMs of about `rows` rows, as torch.compile's freezing does; restore each layer's own forward after.
    Yields the layers packed: none on a GPU, in another dtype, without oneDNN, or where a packed copy of the weights
    would not fit in half the memory free. Pack after an arm's adapter is merged: the copy does not follow the
    weights. The sums run in another order than MKL's, so results differ in the last bits (about 1e-4 on logits)."""
    layers = [
        m
        for m in model.modules()
        if type(m) is torch.nn.Linear and m.weight.device.type == "cpu" and m.weight.dtype == torch.float32
    ]
    size = sum(m.weight.nbytes for m in layers)
    if not layers or not torch.backends.mkldnn.is_available() or 2 * size > free_memory():
        yield 0
        return
    for layer in layers:
        packed = torch.ops.mkldnn._reorder_linear_weight(layer.weight.detach(), rows)
        layer.forward = functools.partial(packed_linear, packed, layer.bias)
    try:
        yield len(layers)
    finally:
        for layer in layers:
            del layer.forward


def packed_linear(packed: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """A linear layer's forward on its packed weight."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def free_memory() -> int:
    """Bytes of physical memory free now (0 where the system does not say)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 0


def pick(logits: torch.Tensor, uniform: torch.Tensor | None, temperature: float, top_p: float) -> torch.Tensor:
    """The next token per row: argmax when `uniform` is None (greedy), else a draw from the tempered,
    nucleus-truncated distribution by inverting its CDF at the row's uniform number, so each sample's draw
    depends on its own random stream only, never on which other samples are still running."""
    if uniform is None:
        return logits.argmax(-1)
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    if top_p < 1:
        probs = nucleus(probs, top_p)
    cdf = probs.cumsum(-1)
    drawn = torch.searchsorted(cdf, (uniform * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)
    return drawn.clamp_max_(probs.shape[-1] - 1)


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero every token outside the smallest most-likely set whose mass reaches top_p (the top token stays)."""
    ranked, order = probs.sort(-1, descending=True)
    outside = ranked.cumsum(-1) - ranked >= top_p
    return torch.zeros_like(probs).scatter_(-1, order, ranked.masked_fill(outside, 0))


class GraphStep:
    """Replays a decode step from a CUDA graph, captured again when shapes change: the batch shrank, or the step
    reached a new block of the suffix cache.

    Capture needs two warm-up runs of the step; they write the same keys and values into the same slot as the
    replay that follows, so they change nothing.
    """

    def __init__(self, forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], cache: SuffixCache):
        self.forward, self.cache = forward, cache
        self.graph, self.shape = None, None
        self.eager = False  # set when capture failed: the same static step, run without a graph

    def __call__(self, feed: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        if self.eager:
            return self.forward(feed, position)
        if self.shape != (feed.shape[0], self.cache.attended):
            try:
                self.capture(feed, position)
            except RuntimeError as error:
                log.warning("CUDA graph capture failed (%s); decoding without graphs", error)
                self.eager = True
                return self.forward(feed, position)
        self.feed.copy_(feed)
        self.position.copy_(position)
        self.graph.replay()
        return self.logits

    def capture(self, feed: torch.Tensor, position: torch.Tensor) -> None:
        self.feed, self.position = feed.clone(), position.clone()
        self.shape = (feed.shape[0], self.cache.attended)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.forward(self.feed, self.position)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self.forward(self.feed, self.position)


@torch.no_grad()
def sample(
    model,
    prompt_ids: torch.Tensor,
    prefix,
    n: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
    eos_token_id: int | None,
    static: bool | None = None,
) -> Generation:
    """n continuations of `prompt_ids` ([1, length]); `prefix` holds the keys and values of all its tokens but
    the last (`whytune.eval.generate.prefill`). Greedy when temperature is 0. `static` (default: on CUDA) keeps shapes
    fixed, the batch shrinking only by halves, so that on CUDA each step is replayed from a CUDA graph."""
    device = prompt_ids.device
    static = device.type == "cuda" if static is None else static
    cache = SuffixCache(prefix, n, max_new_tokens, static=static)
    forward = step_function(model, cache)
    step = GraphStep(forward, cache) if static and device.type == "cuda" else forward
    generator = torch.Generator(device=device).manual_seed(seed)
    owners: list[int | None] = list(range(n))  # the sample each batch row decodes (None: finished, not yet dropped)
    tokens: list[list[int]] = [[] for _ in range(n)]
    finished = [False] * n
    feed = prompt_ids[:, -1:].expand(n, 1)
    position = torch.full((1, 1), cache.prefix_length, dtype=torch.long, device=device)
    steps = rows_computed = 0
    with shared_prefix_attention(model), packed_linears(model, n):
        while steps < max_new_tokens and any(owner is not None for owner in owners):
            cache.open_slot()
            logits = step(feed, position)
            uniform = (
                None if temperature == 0 else torch.rand(n, generator=generator, dtype=torch.float64, device=device)
            )
            rows = torch.tensor([owner or 0 for owner in owners], device=device)
            chosen = pick(logits, None if uniform is None else uniform[rows], temperature, top_p)
            steps, rows_computed, position = steps + 1, rows_computed + len(owners), position + 1
            record(chosen.tolist(), owners, tokens, finished, eos_token_id)
            live = [row for row, owner in enumerate(owners) if owner is not None]
            if live and len(live) < len(owners) and (not static or 2 * len(live) <= len(owners)):
                cache.keep(live)
                owners = [owners[row] for row in live]
                chosen = chosen[live]
            feed = chosen.unsqueeze(-1)
    return Generation(tokens, finished, steps, rows_computed)


def record(
    chosen: list[int], owners: list[int | None], tokens: list[list[int]], finished: list[bool], eos_token_id: int | None
) -> None:
    """Append each running sample's new token; a sample that drew eos is marked finished and its row released."""
    for row, owner in enumerate(owners):
        if owner is None:
            continue
        tokens[owner].append(chosen[row])
        if chosen[row] == eos_token_id:
            finished[owner] = True
            owners[row] = None


def step_function(model, cache: SuffixCache) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """One forward pass of one token per row at a shared position: the last position's logits."""

    keyword = cache_keyword(model)

    def forward(feed: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        return model(
            input_ids=feed, position_ids=position, use_cache=True, shared_prefix=cache, **{keyword: cache}
        ).logits[:, -1]

    return forward


def cache_keyword(model) -> str:
    """transformers 5.2x renamed the forward's `past_key_values` to `cache` (the old name warns); 5.17 has only
    the old one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
