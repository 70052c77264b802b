"""`merge_run`: fold a run's LoRA adapter into its base weights and save a plain Hugging Face folder
(safetensors, tokenizer, generation config) that loads with `AutoModelForCausalLM.from_pretrained`, no PEFT. The
tokenizer's chat template is the training prompt format (evaluation/chat_template.py), the generation config stops
at the trained end token(s), and README.md is the model card (evaluation/model_card.py)."""
from __future__ import annotations

from pathlib import Path

import torch

from llmft.errors import LlmftError
from llmft.evaluation.chat_template import end_token_ids, training_chat_template
from llmft.evaluation.model_card import model_card
from llmft.folders import new_folder

MERGE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def merged_model(run_dir: str | Path, trust_remote_code: bool = False):
    """(merged model, tokenizer, template info): the adapter folded into fp32 base weights, then unloaded."""
    from llmft.training.model import load_run_model

    refuse_bottleneck_run(run_dir)
    model, tokenizer = load_run_model(run_dir, adapter=True, dtype=torch.float32, trust_remote_code=trust_remote_code)
    info = model.llmft_template
    if not hasattr(model, "merge_and_unload"):
        raise LlmftError(f"{run_dir}: the run has no adapter to merge (full fine-tuning already saved model/)")
    merged = model.merge_and_unload(progressbar=False, safe_merge=True)
    leftover = [name for name in merged.state_dict() if "lora_" in name]
    if leftover:
        raise LlmftError(f"{run_dir}: merging left adapter weights behind ({leftover[0]}, ...)")
    return merged, tokenizer, info


def refuse_bottleneck_run(run_dir: str | Path) -> None:
    """Bottleneck adapters add layers (a nonlinearity between two projections), so no weight of the base model can
    absorb them."""
    from llmft.training.bottleneck import is_bottleneck_folder

    if is_bottleneck_folder(Path(run_dir) / "adapter"):
        raise LlmftError(f"{run_dir}: bottleneck adapters cannot be merged: each is a new layer with a nonlinearity, "
                         f"not a change to existing weights, so it cannot be folded into the base model. Use the run "
                         f"folder itself (llmft generate / chat / eval {run_dir}), or train with --method lora for a "
                         f"mergeable model")


def merge_run(run_dir: str | Path, out: str | Path, dtype: str = "float32", *,
              trust_remote_code: bool = False) -> Path:
    """Merge in fp32 (so rounding happens once), cast to `dtype`, and write `out` atomically (a new folder only:
    an existing non-empty one is refused, even an earlier merge)."""
    if dtype not in MERGE_DTYPES:
        raise LlmftError(f"dtype must be one of {', '.join(MERGE_DTYPES)}, got {dtype!r}")
    refuse_bottleneck_run(run_dir)
    out = Path(out)
    with new_folder(out, "merge", replace=False) as tmp:
        merged, tokenizer, info = merged_model(run_dir, trust_remote_code)
        merged = merged.to(MERGE_DTYPES[dtype])
        merged.config.dtype = dtype
        tokenizer.chat_template = training_chat_template(info["template"], tokenizer)
        _fill_generation_config(merged, tokenizer, info["template"])
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(model_card(run_dir, info, out.name), encoding="utf-8")
    return out


def _fill_generation_config(model, tokenizer, template: str) -> None:
    """The saved model stops at the end token(s) it was trained to emit and pads like llmft's generation does."""
    config = model.generation_config
    end_ids = end_token_ids(template, tokenizer)
    config.eos_token_id = end_ids[0] if len(end_ids) == 1 else end_ids
    if config.pad_token_id is None and tokenizer.pad_token_id is not None:
        config.pad_token_id = tokenizer.pad_token_id
