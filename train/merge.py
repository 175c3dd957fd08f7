"""Fold a LoRA adapter into its base model, giving an ordinary model folder that later stages start from.

The organism stage needs this: every arm is then tuned on top of the organism as if it were the base model.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from whytune.runs import file_hash, mark_done, stage_done


def merge_adapter(base_location: str, adapter: Path, out: Path, tokenizer) -> Path:
    """Write base + adapter, merged, to `out` (skipped when already merged from this same adapter)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    key = file_hash(adapter / "adapter_model.safetensors")
    if stage_done(out, key):
        return out
    base = AutoModelForCausalLM.from_pretrained(base_location, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    mark_done(out, key)
    return out
