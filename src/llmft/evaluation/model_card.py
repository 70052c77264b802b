"""The model card (README.md) of a merged model folder: the Hub's YAML metadata header (base_model, library_name,
datasets, tags, the run's eval results as model-index when eval.json exists) and a short body that says how the
model was trained and how to prompt it."""
from __future__ import annotations

from pathlib import Path

import yaml

from llmft import io

# llmft source name -> the Hub dataset id of its public copy (the card links them; nothing is downloaded).
HUB_DATASETS = {
    "alpaca": "tatsu-lab/alpaca",
    "self-instruct": "yizhongw/self_instruct",
    "natural-instructions": "Muennighoff/natural-instructions",
    "unnatural-instructions": "mrm8488/unnatural-instructions",
}
EMBEDDED_HUB_IDS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}   # training.model.EMBEDDED_MODELS
EVAL_METRICS = {"exact_match": "Exact match", "rouge_l": "ROUGE-L", "loss": "Loss", "perplexity": "Perplexity"}


def _run_config(run_dir: Path) -> dict:
    path = run_dir / "config.yaml"
    if not path.exists():
        return {}
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def trained_sources(run_dir: Path) -> list[str]:
    """The sources of the prepared data folder the run trained on (its manifest's counts), when it is one."""
    data = _run_config(run_dir).get("data")
    manifest = Path(data) / "manifest.json" if data else None
    if manifest is None or not manifest.exists():
        return []
    by_source = (io.load_json(manifest).get("counts") or {}).get("by_source") or {}
    return sorted(by_source)


def _model_index(name: str, results: dict, split: str) -> list[dict]:
    metrics = [{"type": key, "name": label, "value": results[key]} for key, label in EVAL_METRICS.items()
               if isinstance(results.get(key), (int, float))]
    if not metrics:
        return []
    return [{"name": name, "results": [{"task": {"type": "text-generation", "name": "Instruction following"},
                                        "dataset": {"type": "llmft-prepared", "name": f"llmft {split} split",
                                                    "split": split},
                                        "metrics": metrics}]}]


def base_model_id(model: str) -> str | None:
    """The Hub id of the base model: an embedded name's source, a hub id as given; None for a local folder."""
    if model in EMBEDDED_HUB_IDS:
        return EMBEDDED_HUB_IDS[model]
    if Path(model).expanduser().exists() or model.startswith((".", "/", "~")) or model.count("/") != 1:
        return None
    return model


def card_metadata(run_dir: Path, info: dict, name: str) -> dict:
    config = _run_config(run_dir)
    sources = trained_sources(run_dir)
    base = base_model_id(str(config.get("model") or info.get("model") or ""))
    meta = {**({"base_model": base} if base else {}),
            "library_name": "transformers",
            "pipeline_tag": "text-generation",
            "tags": ["llmft", "sft", f"{info['template']}-template", str(info.get("method") or "lora"), "merged"]}
    if sources:
        meta["datasets"] = [HUB_DATASETS.get(s, s) for s in sources]
    eval_path = run_dir / "eval.json"
    if eval_path.exists():
        tuned = io.load_json(eval_path).get("tuned") or {}
        meta["model-index"] = _model_index(name, tuned, str((config.get("eval") or {}).get("split") or "test"))
    return meta


def _results_table(run_dir: Path) -> str:
    eval_path = run_dir / "eval.json"
    if not eval_path.exists():
        return "No evaluation was run (`llmft eval RUN_DIR` writes eval.json, which the next merge puts here).\n"
    results = io.load_json(eval_path)
    lines = ["| model | " + " | ".join(EVAL_METRICS.values()) + " |", "| --- |" + " ---: |" * len(EVAL_METRICS)]
    for which in ("base", "tuned"):
        if which in results:
            values = [results[which].get(key) for key in EVAL_METRICS]
            lines.append(f"| {which} | " + " | ".join("" if v is None else f"{v:g}" for v in values) + " |")
    return "\n".join(lines) + "\n"


def model_card(run_dir: str | Path, info: dict, name: str) -> str:
    """README.md text for the merged model `name` of the run in `run_dir`."""
    run_dir = Path(run_dir)
    meta = card_metadata(run_dir, info, name)
    base = meta.get("base_model") or str(_run_config(run_dir).get("model") or info.get("model") or "?")
    header = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    template = info["template"]
    prompting = (
        "The tokenizer's chat template is the training prompt format, so "
        "`tokenizer.apply_chat_template([{\"role\": \"user\", \"content\": INSTRUCTION, \"input\": INPUT}], "
        "add_generation_prompt=True, tokenize=False)` gives the exact prompt the model was trained on (`input` "
        "optional; a second text part of the content works too)."
        if template in ("alpaca", "superni") else
        "The tokenizer's own chat template was the training format; put the input after the instruction, separated "
        "by a blank line.")
    return (
        f"---\n{header}---\n\n# {name}\n\n"
        f"Fine-tuned from `{base}` with llmft "
        f"(supervised fine-tuning, method `{info.get('method') or 'lora'}`, prompt template `{template}`); the "
        "adapter is merged into the weights, so the folder loads with `AutoModelForCausalLM.from_pretrained` and "
        "no PEFT.\n\n"
        f"## Prompt format\n\n{prompting} `generation_config.json` stops at the end token the model was trained to "
        "emit.\n\n"
        f"## Evaluation\n\n{_results_table(run_dir)}"
    )
