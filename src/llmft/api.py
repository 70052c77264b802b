"""The Python API (re-exported by `llmft`): one function per stage, a config object or keyword arguments in, the
stage's result out. Heavy modules are imported on call, so `import llmft` stays light."""
from __future__ import annotations

from pathlib import Path


def _config(cls, config, kwargs: dict):
    """`config` (a `cls` instance) with `kwargs` applied on top, validated; or `cls(**kwargs)`."""
    from llmft.config import check, from_dict, to_dict

    base = to_dict(config) if config is not None else {}
    cfg = from_dict(cls, {**base, **kwargs}, f"{cls.__name__} arguments")
    check(cfg)
    return cfg


def prepare(config=None, *, out: str | Path, **kwargs) -> dict:
    """Convert, clean, deduplicate, split and decontaminate raw datasets into `out`; returns the manifest.
    Keys: `DataConfig` (alpaca=[...], natural_instructions=[...], split="tasks", ...)."""
    from llmft.config import DataConfig
    from llmft.data.prepare import prepare as prepare_data

    return prepare_data(_config(DataConfig, config, kwargs), out)


def train(config=None, **kwargs) -> dict:
    """Fine-tune into a run folder; returns the summary (also RUN/summary.json). Keys: `TrainConfig` (data, out,
    model, method, lora_r, max_steps, ...)."""
    from llmft.config import TrainConfig
    from llmft.training.trainer import train as train_run

    return train_run(_config(TrainConfig, config, kwargs))


def evaluate(run_dir: str | Path, config=None, **kwargs) -> dict:
    """Score a run (and its base model) on a split; returns eval.json's content. Keys: `EvalConfig` (split, data,
    limit, max_new_tokens, ...)."""
    from llmft.config import EvalConfig
    from llmft.evaluation.evaluate import evaluate_run

    return evaluate_run(Path(run_dir), _config(EvalConfig, config, kwargs))


def generate(run_dir: str | Path, instructions: list[str] | list[dict], *, adapter: bool = True,
             trust_remote_code: bool = False, **options) -> list[str]:
    """Answers of a run's model, prompted with the template it was trained with. `instructions`: strings, or
    records ({"instruction", "input"} or {"prompt"}). Options: `GenerationOptions` (max_new_tokens, do_sample,
    temperature, top_p, top_k, seed, batch_size); greedy by default."""
    from llmft.errors import LlmftError
    from llmft.evaluation.generate import GenerationOptions, generate_for_rows, load_for_generation

    opts = GenerationOptions(**options)
    problems = opts.validate()
    if problems:
        raise LlmftError("; ".join(problems))
    model, tokenizer, info = load_for_generation(Path(run_dir), adapter=adapter,
                                                 trust_remote_code=trust_remote_code)
    rows = [{"instruction": x} if isinstance(x, str) else x for x in instructions]
    return generate_for_rows(model, tokenizer, info, rows, opts)[1]


def merge(run_dir: str | Path, *, out: str | Path, dtype: str = "float32") -> Path:
    """Fold a run's LoRA adapter into its base model: a plain Hugging Face folder at `out`."""
    from llmft.evaluation.merge import merge_run

    return merge_run(Path(run_dir), out, dtype)


def run(recipe: str = "demo", *, out: str | Path, sources: dict[str, list[str]] | None = None,
        overrides: list[str] | None = None, echo=print) -> dict:
    """The whole pipeline (demo data or `sources`, prepare, train, base-vs-tuned eval, report) into `out`; returns
    the summary. `recipe`: a built-in name or a YAML file; `overrides`: ["train.lr=3e-4", ...]."""
    from llmft.pipeline.recipe import load_recipe
    from llmft.pipeline.runner import run_pipeline

    return run_pipeline(load_recipe(recipe, overrides), out, sources=sources, echo=echo)


def tune_cpu() -> dict:
    """What the CLI does before training or generating: one thread per free physical core and glibc's heap kept
    for reuse (process-wide; see `llmft.training.cpu`). Returns what was set."""
    from llmft.training.cpu import tune_process

    return tune_process()
