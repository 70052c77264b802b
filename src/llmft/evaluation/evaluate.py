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
from llmft.evaluation.generate import (GenerationOptions, generate, inference_dtype, inference_ready,
                                       to_inference_device)
from llmft.evaluation.metrics import aggregate, aggregate_by, score_prediction
from llmft.data.conversation import single_turn_view
from llmft.training.run_folder import HELDOUT_FILE
from llmft.training.tokenize import IGNORE_INDEX

LOSS_TOKENS_PER_BATCH = 8192   # padded tokens per loss forward (the chunked loss never holds full logits)


# ---------------------------------------------------------------- data

def eval_records(run_dir: Path, cfg: EvalConfig) -> list[dict]:
    """`cfg.data` (all its rows), or the data the run was trained on: a prepared folder's `<split>.jsonl`, or for a
    run trained on one JSONL file the rows training held out of it (never its training rows)."""
    if not cfg.data:
        data = Path(_run_config_data(run_dir))
        if data.is_file() or ((run_dir / HELDOUT_FILE).exists() and not (data / f"{cfg.split}.jsonl").exists()):
            return _held_out_records(run_dir, data, cfg.limit)
    return load_eval_records(eval_data_path(run_dir, cfg), cfg.limit)


def _held_out_records(run_dir: Path, data: Path, limit: int) -> list[dict]:
    """The dev rows `llmft train` split off the run's JSONL file: as listed in heldout.json (the file must be
    unchanged), or recomputed from the run's seed for runs that predate it."""
    import yaml
    from llmft.training.data import held_out_rows

    listing = run_dir / HELDOUT_FILE
    if listing.exists():
        held = io.load_json(listing)
        data = Path(held["file"])
        if not data.is_file() or io.sha256_file(data) != held["sha256"]:
            raise LlmftError(f"{data}: the run's training file is missing or changed since training, so its held-out "
                             f"rows ({listing}) are unknown; give --data")
        rows = set(held["rows"])
    else:
        seed = (yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}).get("seed", 0)
        rows = held_out_rows(sum(1 for _ in io.read_jsonl(data)), seed)
    if not rows:
        raise LlmftError(f"{data}: training held out no row of it (too few rows); give --data")
    print(f"evaluating the {len(rows)} rows of {data} that training held out (not trained on)")
    return load_eval_records(data, limit, rows)


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


def load_eval_records(path: Path, limit: int = 0, rows: set[int] | None = None) -> list[dict]:
    """The rows `llmft train --data` takes (records, plain {instruction, input, output}, {prompt, completion} or
    {messages} rows), each with its references filled in; `rows`: only these 0-based rows of the file. The first bad
    row stops with its place named."""
    from llmft.training.data import row_problem

    records = []
    for index, row in enumerate(io.read_jsonl(path)):
        if rows is not None and index not in rows:
            continue
        problem = row_problem(row)
        if problem:
            raise InputFormatError(path, f"record {index + 1}: {problem}")
        records.append(eval_record(row, f"{path.name}:{index + 1}"))
        if limit and len(records) >= limit:
            break
    if not records:
        raise LlmftError(f"{path}: no records to evaluate")
    return records


def eval_record(row: dict, default_id: str) -> dict:
    """A row with an id and the references its prediction is scored against: the record's references, else its
    output, the completion of a {prompt, completion} row, or the last assistant turn of a conversation."""
    record = dict(row)
    record.setdefault("id", default_id)
    record["references"] = references_of(row)
    return record


def references_of(record: dict) -> list[str]:
    if record.get("references"):
        return list(record["references"])
    if "prompt" in record and "completion" in record:
        return [record["completion"]]
    if record.get("messages") and "output" not in record:
        return [single_turn_view(record["messages"])["output"]]
    return [record.get("output", "")]


# ---------------------------------------------------------------- loss

def eval_examples(records: list[dict], tokenizer, info: dict) -> tuple[list, list]:
    """Per record, the generation prompt as token ids and (input_ids, labels) for the loss, both from the example
    training builds for it (tokenize.encode_record: the same max_length, superni shrinking and left cut of the
    prompt). A conversation is scored on its last assistant turn: the prompt is everything before it."""
    from llmft.data.prompts import render
    from llmft.evaluation.generate import encode_prompt
    from llmft.training.tokenize import encode_record

    prompts, examples = [], []
    for record in records:
        example, _ = encode_record(record, tokenizer, template=info["template"],
                                   max_length=info.get("max_length", 512), k_positive=info.get("k_positive", 0),
                                   train_on="last_assistant")
        if example is None:   # no response token fits: generate from the whole prompt, no loss
            prompt, _ = render(record, info["template"], tokenizer=tokenizer, k_positive=info.get("k_positive", 0))
            prompts.append(encode_prompt(tokenizer, prompt))
            examples.append(None)
            continue
        first_trained = int((example.labels != IGNORE_INDEX).argmax())
        prompts.append(example.input_ids[:first_trained].tolist())
        examples.append((example.input_ids.tolist(), example.labels.tolist()))
    return prompts, examples


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
    """Greedy generations, their scores and (when `cfg.loss`) the response loss for one model (tuned, or base with
    the adapter disabled)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    loss = (response_loss(model, [e for e in examples if e is not None], pad_id, desc=f"{name} loss")
            if cfg.loss else {})
    options = GenerationOptions(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
    predictions = generate(model, tokenizer, prompts, options, template=info.get("template"),
                           desc=f"{name} generation")
    scores = [score_prediction(p, r) for p, r in zip(predictions, records)]
    summary = {**loss, **aggregate(scores),
               "per_source": aggregate_by(scores, [r.get("source", "unknown") for r in records]),
               "per_task": aggregate_by(scores, [r.get("task", "unknown") for r in records]),
               **({"n_loss_skipped": sum(e is None for e in examples)} if cfg.loss else {})}
    summary["n"] = len(records)
    summary["dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
    return summary, predictions, scores


@contextlib.contextmanager
def _base_model(run_dir: Path, tuned, dtype: torch.dtype, trust_remote_code: bool = False):
    """The base model without the run's training: for a LoRA or bottleneck-adapter run the tuned model with its
    adapters switched off (loaded once); for a full fine-tuning run (or adapters with trained norms) the base
    weights are loaded beside it and freed afterwards."""
    if hasattr(tuned, "disable_adapter"):
        with tuned.disable_adapter():
            yield tuned
        return
    from llmft.training.bottleneck import bottleneck_disabled, has_bottleneck

    if has_bottleneck(tuned) and not tuned.llmft_bottleneck.train_norms:
        with bottleneck_disabled(tuned):
            yield tuned
        return
    from llmft.training.model import load_run_model

    base, _ = load_run_model(run_dir, adapter=False, dtype=dtype, trust_remote_code=trust_remote_code)
    try:
        yield to_inference_device(base)
    finally:
        del base


# ---------------------------------------------------------------- the run

def evaluate_run(run_dir: str | Path, cfg: EvalConfig | None = None, *, trust_remote_code: bool = False) -> dict:
    """Score the run on `cfg.split`; writes eval.json, predictions.jsonl and eval.png into the run folder, which
    stays locked meanwhile (folders.own_folder: a second writer is refused). `trust_remote_code`: the user's
    command-line choice, never the run folder's."""
    from llmft.folders import own_folder
    from llmft.training.model import load_template

    cfg = cfg or EvalConfig()
    check(cfg)
    run_dir = Path(run_dir)
    load_template(run_dir)
    with own_folder(run_dir, "eval", accept=("train",), must_exist=True, legacy="template.json"):
        return _evaluate_locked(run_dir, cfg, trust_remote_code)


def _evaluate_locked(run_dir: Path, cfg: EvalConfig, trust_remote_code: bool) -> dict:
    from llmft.training.model import load_run_model
    from llmft.evaluation.report import comparison_table, plot_base_vs_tuned

    dtype = inference_dtype(cfg.bf16)
    print(f"scoring in {str(dtype).removeprefix('torch.')} (eval.bf16={cfg.bf16})")
    model, tokenizer = load_run_model(run_dir, adapter=True, dtype=dtype, trust_remote_code=trust_remote_code)
    info = model.llmft_template
    model = to_inference_device(model)
    records = eval_records(run_dir, cfg)
    prompts, examples = eval_examples(records, tokenizer, info)

    results, predictions, scores = {}, {}, {}
    if cfg.base:
        with _base_model(run_dir, model, dtype, trust_remote_code) as base:
            results["base"], predictions["base"], scores["base"] = score_model(
                base, tokenizer, records, prompts, examples, info, cfg, "base")
    with inference_ready(model) as tuned:       # LoRA merged (fp32 base) or run in the base's bf16 while scored
        results["tuned"], predictions["tuned"], scores["tuned"] = score_model(
            tuned, tokenizer, records, prompts, examples, info, cfg, "tuned")

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
