"""`merge_run`: fold a run's LoRA adapter into its base weights and save a plain Hugging Face folder
(safetensors, tokenizer, generation config) that loads with `AutoModelForCausalLM.from_pretrained`, no PEFT."""
from __future__ import annotations

from pathlib import Path

import torch

from llmft.errors import LlmftError
from llmft.io import atomic_dir

MERGE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def merged_model(run_dir: str | Path):
    """(merged model, tokenizer, template info): the adapter folded into fp32 base weights, then unloaded."""
    from llmft.training.model import load_run_model

    model, tokenizer = load_run_model(run_dir, adapter=True, dtype=torch.float32)
    info = model.llmft_template
    if not hasattr(model, "merge_and_unload"):
        raise LlmftError(f"{run_dir}: the run has no adapter to merge (full fine-tuning already saved model/)")
    merged = model.merge_and_unload(progressbar=False, safe_merge=True)
    leftover = [name for name in merged.state_dict() if "lora_" in name]
    if leftover:
        raise LlmftError(f"{run_dir}: merging left adapter weights behind ({leftover[0]}, ...)")
    return merged, tokenizer, info


def merge_run(run_dir: str | Path, out: str | Path, dtype: str = "float32") -> Path:
    """Merge in fp32 (so rounding happens once), cast to `dtype`, and write `out` atomically."""
    if dtype not in MERGE_DTYPES:
        raise LlmftError(f"dtype must be one of {', '.join(MERGE_DTYPES)}, got {dtype!r}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise LlmftError(f"{out}: already exists and is not empty; choose another --out or remove it")
    merged, tokenizer, info = merged_model(run_dir)
    merged = merged.to(MERGE_DTYPES[dtype])
    merged.config.dtype = dtype
    _fill_generation_config(merged, tokenizer)
    with atomic_dir(out) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out


def _fill_generation_config(model, tokenizer) -> None:
    """The saved model stops and pads like llmft's generation does."""
    config = model.generation_config
    if tokenizer.eos_token_id is not None:
        config.eos_token_id = tokenizer.eos_token_id
    if config.pad_token_id is None and tokenizer.pad_token_id is not None:
        config.pad_token_id = tokenizer.pad_token_id
