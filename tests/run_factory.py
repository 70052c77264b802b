"""Hand-built run folders for the eval / generate / merge tests: a tiny random Llama base model saved with the real
tokenizer, a PEFT LoRA adapter with non-zero B weights (so the adapter changes the logits), template.json,
config.yaml and a small prepared data folder."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from tiny_models import save_tiny_model

RECORDS = [
    {"id": "alpaca/0", "source": "alpaca", "task": "alpaca", "instruction": "Give three tips for staying healthy.",
     "input": "", "output": "Eat well, sleep, exercise.", "references": ["Eat well, sleep, exercise."], "meta": {}},
    {"id": "alpaca/1", "source": "alpaca", "task": "alpaca", "instruction": "What is the capital of France?",
     "input": "", "output": "Paris", "references": ["Paris"], "meta": {}},
    {"id": "natural-instructions/task1344/0", "source": "natural-instructions",
     "task": "task1344_glue_entailment_classification",
     "instruction": "Decide whether the second sentence is entailed by the first. Answer 1 or 0.",
     "input": "Sentence 1: A man is playing a guitar. Sentence 2: A person plays music.", "output": "1",
     "references": ["1"], "meta": {"languages": {"output": ["English"]}}},
    {"id": "natural-instructions/task1239/0", "source": "natural-instructions",
     "task": "task1239_ted_translation_gl_ja",
     "instruction": "Translate the Galician sentence into Japanese.", "input": "Grazas.", "output": "ありがとう。",
     "references": ["ありがとう。", "ありがとうございます。"], "meta": {"languages": {"output": ["Japanese"]}}},
    {"id": "self-instruct/seed_task_0", "source": "self-instruct", "task": "self-instruct",
     "instruction": "Is there anything I can eat for a breakfast that doesn't include eggs?", "input": "",
     "output": "Yes: oatmeal, yogurt or toast.", "references": ["Yes: oatmeal, yogurt or toast."], "meta": {}},
]


def make_base(folder: Path, tokenizer, seed: int = 0) -> Path:
    return save_tiny_model(folder, tokenizer, "llama", seed)


def make_run(root: Path, tokenizer, *, template: str = "alpaca", records=RECORDS, seed: int = 0,
             base: Path | None = None) -> Path:
    """root/base (the base model; `base`: an existing model folder instead), root/data (train/dev/test.jsonl) and
    root/run (the run folder)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = base or make_base(root / "base", tokenizer, seed)
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev", "test"):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                                             encoding="utf-8")
    run = root / "run"
    run.mkdir(parents=True, exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(base)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                  target_modules=["q_proj", "v_proj", "up_proj", "down_proj"]))
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    peft_model.save_pretrained(run / "adapter")
    tokenizer.save_pretrained(run / "tokenizer")
    (run / "template.json").write_text(json.dumps({"template": template, "k_positive": 0, "max_length": 128,
                                                   "model": str(base)}), encoding="utf-8")
    (run / "config.yaml").write_text(yaml.safe_dump({"data": str(data), "out": str(run), "model": str(base),
                                                     "method": "lora", "template": template, "max_length": 128}),
                                     encoding="utf-8")
    return run
