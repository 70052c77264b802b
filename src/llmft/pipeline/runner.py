"""`llmft run`: the whole mission in one command. Demo data (unless real datasets are given) -> prepare (task split)
-> LoRA training -> base-vs-tuned evaluation on the test split -> `report.md` + `summary.json` in the run folder.

Every stage calls the public function of its module (injectable through `Stages`, so the orchestration is tested on
fakes) and is skipped when its output is already complete, so a rerun after an interruption continues where it
stopped. The folder layout is `pipeline.layout.Layout`; the recipe format is `pipeline.recipe`.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from llmft import io
from llmft.config import DataConfig, EvalConfig, TrainConfig
from llmft.errors import LlmftError
from llmft.evaluation.report import build_summary, closing_summary, render_report, seen_vs_unseen, trained_tasks
from llmft.pipeline.layout import Layout
from llmft.pipeline.recipe import Recipe, named_sources, resolve_recipe, save_or_check_recipe


# ---------------------------------------------------------------- the stages (injectable)

def _demo(out: Path, seed: int, instances: int) -> dict:
    from llmft.data.demo import write_demo

    return write_demo(out, seed=seed, instances=instances)


def _prepare(cfg: DataConfig, out: Path) -> dict:
    from llmft.data.prepare import prepare

    return prepare(cfg, out)


def _train(cfg: TrainConfig) -> dict:
    from llmft.training.trainer import train

    return train(cfg)


def _evaluate(run_dir: Path, cfg: EvalConfig, trust_remote_code: bool = False) -> dict:
    from llmft.evaluation.evaluate import evaluate_run

    return evaluate_run(run_dir, cfg, trust_remote_code=trust_remote_code)


@dataclass
class Stages:
    demo: Callable[[Path, int, int], dict]
    prepare: Callable[[DataConfig, Path], dict]
    train: Callable[[TrainConfig], dict]
    evaluate: Callable[[Path, EvalConfig], dict]


def default_stages() -> Stages:
    """The real stages, looked up at call time."""
    return Stages(demo=_demo, prepare=_prepare, train=_train, evaluate=_evaluate)


def demo_complete(layout: Layout) -> bool:
    return layout.demo_marker.exists()


def prepare_complete(layout: Layout) -> bool:
    return (layout.data / "manifest.json").exists()


def train_complete(layout: Layout) -> bool:
    return (layout.train / "summary.json").exists()


def eval_complete(layout: Layout) -> bool:
    return all((layout.train / name).exists() for name in ("eval.json", "predictions.jsonl", "eval.png"))


@dataclass
class StageLog:
    """Wall time and status of each stage, kept in stages.json so a rerun still reports the original times."""
    path: Path
    echo: Callable[[str], None]
    entries: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.path.exists():
            self.entries = io.load_json(self.path)

    def skip(self, name: str, why: str) -> None:
        previous = self.entries.get(name, {})
        self.entries[name] = {"status": "skipped", "why": why, "seconds": previous.get("seconds")}
        self.echo(f"[{name}] skipped: {why}")
        io.write_json(self.path, self.entries)

    def run(self, name: str, what: str, fn: Callable[[], object]):
        self.echo(f"[{name}] {what}")
        started = time.perf_counter()
        result = fn()
        seconds = round(time.perf_counter() - started, 2)
        self.entries[name] = {"status": "ran", "seconds": seconds}
        self.echo(f"[{name}] done in {seconds / 60:.1f} min")
        io.write_json(self.path, self.entries)
        return result


def run_pipeline(recipe: Recipe, out: str | Path, *, sources: dict[str, list[str]] | None = None,
                 stages: Stages | None = None, echo: Callable[[str], None] = print) -> dict:
    """Run (or continue) every stage into `out`; returns the summary (also out/summary.json). `out` is locked
    meanwhile and must be a folder `llmft run` created (or a new or empty one)."""
    from llmft.folders import own_folder

    stages = stages or default_stages()
    layout = Layout(Path(out))
    sources = sources or named_sources(recipe)     # none given: those the recipe names, else the demo data
    recipe = resolve_recipe(recipe, layout.out, sources)
    with own_folder(layout.out, "run"):
        return _run_stages(recipe, layout, sources, stages, echo)


def _run_stages(recipe: Recipe, layout: Layout, sources, stages: Stages, echo) -> dict:
    save_or_check_recipe(recipe, layout)
    log = StageLog(layout.stages, echo)

    demo = not sources
    if not demo:
        log.skip("demo", "real datasets given")
    elif demo_complete(layout):
        log.skip("demo", f"{layout.raw} is complete")
    else:
        log.run("demo", f"writing the demo datasets ({recipe.run.demo_instances} instances per task type) to "
                        f"{layout.raw}", lambda: _write_demo(stages, recipe, layout))

    if prepare_complete(layout):
        log.skip("prepare", f"{layout.data} is complete")
    else:
        log.run("prepare", f"preparing ({recipe.data.split} split) into {layout.data}",
                lambda: stages.prepare(recipe.data, layout.data))

    if recipe.run.budget_minutes and not train_complete(layout):
        from llmft.pipeline.budget import fit_recipe

        recipe = fit_recipe(recipe, layout, log)    # train.max_steps from measured throughput (budget.json)

    if train_complete(layout):
        log.skip("train", f"{layout.train} is complete")
    else:
        log.run("train", f"training {recipe.train.method} on {recipe.train.model} into {layout.train}",
                lambda: stages.train(_train_config(recipe.train, layout)))

    if eval_complete(layout):
        log.skip("eval", f"{layout.train}/eval.json is complete")
    else:
        log.run("eval", f"scoring base and tuned on the {recipe.eval.split} split",
                lambda: stages.evaluate(layout.train, recipe.eval, **_trust(recipe)))

    summary = write_report(recipe, layout, log.entries, demo=demo)
    echo(closing_summary(summary))
    return summary


def _trust(recipe: Recipe) -> dict:
    """The recipe the user gave this command asks for remote code: eval loads the trained model the same way."""
    return {"trust_remote_code": True} if recipe.train.trust_remote_code else {}


def _write_demo(stages: Stages, recipe: Recipe, layout: Layout) -> dict:
    result = stages.demo(layout.raw, recipe.run.demo_seed, recipe.run.demo_instances)
    io.write_json(layout.demo_marker, result)       # last: marks the demo data complete
    return result


def _train_config(cfg: TrainConfig, layout: Layout) -> TrainConfig:
    """Continue an interrupted training run from its checkpoints (the same settings are checked by train)."""
    folder = layout.train
    if not folder.exists() or not any(folder.iterdir()):
        return cfg
    if (folder / "config.yaml").exists():
        return dataclasses.replace(cfg, resume=True)
    raise LlmftError(f"{folder}: an unfinished training folder without config.yaml; remove it to train again")


def write_report(recipe: Recipe, layout: Layout, stage_times: dict, *, demo: bool) -> dict:
    """report.md and summary.json from the stage outputs (always rewritten: cheap, and reflects every rerun)."""
    from llmft.evaluation.report import comparison_table

    manifest = io.load_json(layout.data / "manifest.json")
    train_summary = io.load_json(layout.train / "summary.json")
    evaluation = io.load_json(layout.train / "eval.json")
    split = seen_vs_unseen(layout.train / "predictions.jsonl", trained_tasks(layout.data / "train.jsonl"))
    summary = build_summary(recipe, layout, manifest, train_summary, evaluation, split, stage_times, demo)
    text = render_report(recipe, summary, manifest, train_summary, comparison_table(evaluation), evaluation, split)
    with io.atomic_write(layout.report) as f:
        f.write(text)
    io.write_json(layout.summary, summary)
    return summary

