"""`evaluate_run`: loss / perplexity and ROUGE-L / exact match of a run's tuned model and of its base model
(the same weights with the adapter disabled), overall, per source and per task."""
from __future__ import annotations

import contextlib

import math
from pathlib import Path

import torch

from llmft import io
from llmft.config import EvalConfig, check
from llmft.errors import InputFormatError, LlmftError
from llmft.evaluation.generate import GenerationOptions, generate, to_inference_device
from llmft.evaluation.metrics import aggregate, aggregate_by, score_prediction
from llmft.data.records import validate_record
from llmft.training.tokenize import IGNORE_INDEX

LOSS_TOKENS_PER_BATCH = 8192   # padded tokens per loss forward (the chunked loss never holds full logits)


# ---------------------------------------------------------------- data

def eval_data_path(run_dir: Path, cfg: EvalConfig) -> Path:
    """`cfg.data` or the data the run was trained on: a prepared folder (its `<split>.jsonl`) or a JSONL file."""
    data = cfg.data or _run_config_data(run_dir)
    path = Path(data)
    if path.is_dir():
        path = path / f"{cfg.split}.jsonl"
    if not path.exists():
        raise LlmftError(f"{path}: evaluation data not found (give --data DIR or a prepared folder with "
                         f"{cfg.split}.jsonl)")
    return path


def _run_config_data(run_dir: Path) -> str:
    import yaml

    config = run_dir / "config.yaml"
    if not config.exists():
        raise LlmftError(f"{run_dir}: no config.yaml to find the training data; give --data")
    data = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("data")
    if not data:
        raise LlmftError(f"{config}: has no 'data' entry; give --data")
    return str(data)


def load_eval_records(path: Path, limit: int = 0) -> list[dict]:
    """Records (or `{prompt, completion}` rows) of the split; the first bad one stops with its place named."""
    records = []
    for number, row in enumerate(io.read_jsonl(path), 1):
        if not ("prompt" in row and "completion" in row):
            problems = validate_record(row)
            if problems:
                raise InputFormatError(path, f"record {number}: " + "; ".join(problems))
        records.append(row)
        if limit and len(records) >= limit:
            break
    if not records:
        raise LlmftError(f"{path}: no records to evaluate")
    return records


def references_of(record: dict) -> list[str]:
    return list(record.get("references") or [record.get("output", record.get("completion", ""))])


# ---------------------------------------------------------------- loss

def _encode(prompt: str, response: str, tokenizer, max_length: int):
    """(input_ids, labels) exactly as training built them, or None when no response token survives truncation."""
    from llmft.training.tokenize import encode

    example = encode(prompt, response, tokenizer, max_length)
    return None if example is None else (example.input_ids.tolist(), example.labels.tolist())


def _loss_batches(lengths: list[int]) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, current = [], []
    for index in order:
        if current and (len(current) + 1) * lengths[current[0]] > LOSS_TOKENS_PER_BATCH:
            batches.append(current)
            current = []
        current.append(index)
    return batches + ([current] if current else [])


@torch.no_grad()
def response_loss(model, examples: list[tuple[list[int], list[int]]], pad_id: int, desc: str = "loss") -> dict:
    """Token-weighted mean cross-entropy over response tokens (right-padded batches, pads masked), and its
    perplexity; the chunked loss of training (losses.py) when it matches the model's own logits."""
    from llmft.training.losses import chunked_loss_matches, model_loss_sum

    device = next(model.parameters()).device
    chunked = chunked_loss_matches(model)
    total, tokens = 0.0, 0
    for batch in io.progress(_loss_batches([len(ids) for ids, _ in examples]), desc=desc, unit="batch"):
        width = max(len(examples[i][0]) for i in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, index in enumerate(batch):
            seq, lab = examples[index]
            ids[row, :len(seq)], labels[row, :len(lab)], mask[row, :len(seq)] = (
                torch.tensor(seq), torch.tensor(lab), 1)
        inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device), "use_cache": False}
        loss_sum, n = model_loss_sum(model, inputs, labels.to(device), chunked=chunked)
        total += float(loss_sum)
        tokens += int(n)
    loss = total / tokens if tokens else float("nan")
    return {"loss": round(loss, 6), "perplexity": round(math.exp(loss), 4) if tokens else float("nan"),
            "loss_tokens": tokens}


# ---------------------------------------------------------------- one model

def score_model(model, tokenizer, records, prompts, examples, info: dict, cfg: EvalConfig, name: str):
    """Loss, greedy generations and their scores for one model (tuned, or base with the adapter disabled)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    loss = response_loss(model, [e for e in examples if e is not None], pad_id, desc=f"{name} loss")
    options = GenerationOptions(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
    predictions = generate(model, tokenizer, prompts, options, template=info.get("template"),
                           desc=f"{name} generation")
    scores = [score_prediction(p, r) for p, r in zip(predictions, records)]
    summary = {**loss, **aggregate(scores),
               "per_source": aggregate_by(scores, [r.get("source", "unknown") for r in records]),
               "per_task": aggregate_by(scores, [r.get("task", "unknown") for r in records]),
               "n_loss_skipped": sum(e is None for e in examples)}
    summary["n"] = len(records)
    return summary, predictions, scores


@contextlib.contextmanager
def _base_model(run_dir: Path, tuned):
    """The base model without the run's training: for a LoRA run the tuned model with its adapter switched off (loaded
    once); for a full fine-tuning run the base weights are loaded beside it and freed afterwards."""
    if hasattr(tuned, "disable_adapter"):
        with tuned.disable_adapter():
            yield tuned
        return
    from llmft.training.model import load_run_model

    base, _ = load_run_model(run_dir, adapter=False)
    try:
        yield to_inference_device(base)
    finally:
        del base


# ---------------------------------------------------------------- the run

def evaluate_run(run_dir: str | Path, cfg: EvalConfig | None = None) -> dict:
    """Score the run on `cfg.split`; writes eval.json, predictions.jsonl and eval.png into the run folder."""
    from llmft.training.model import load_run_model
    from llmft.data.prompts import render
    from llmft.evaluation.report import comparison_table, plot_base_vs_tuned

    cfg = cfg or EvalConfig()
    check(cfg)
    run_dir = Path(run_dir)
    model, tokenizer = load_run_model(run_dir, adapter=True)
    info = model.llmft_template
    model = to_inference_device(model)
    records = load_eval_records(eval_data_path(run_dir, cfg), cfg.limit)
    rendered = [render(r, info["template"], tokenizer=tokenizer, k_positive=info.get("k_positive", 0))
                for r in records]
    prompts = [prompt for prompt, _ in rendered]
    examples = [_encode(p, resp, tokenizer, info.get("max_length", 512)) for p, resp in rendered]

    results, predictions, scores = {}, {}, {}
    if cfg.base:
        with _base_model(run_dir, model) as base:
            results["base"], predictions["base"], scores["base"] = score_model(
                base, tokenizer, records, prompts, examples, info, cfg, "base")
    results["tuned"], predictions["tuned"], scores["tuned"] = score_model(
        model, tokenizer, records, prompts, examples, info, cfg, "tuned")

    io.write_json(run_dir / "eval.json", results)
    io.write_jsonl(run_dir / "predictions.jsonl", _prediction_rows(records, predictions, scores))
    plot_base_vs_tuned(results, run_dir / "eval.png")
    print(comparison_table(results))
    return results


def _prediction_rows(records, predictions: dict, scores: dict):
    for i, record in enumerate(records):
        row = {"id": record.get("id", str(i)), "source": record.get("source", "unknown"),
               "task": record.get("task", "unknown")}
        for name in predictions:
            row[f"prediction_{name}"] = predictions[name][i]
        row["references"] = references_of(record)
        row["scores"] = {name: {k: round(100.0 * v, 4) for k, v in scores[name][i].items()} for name in scores}
        yield row
