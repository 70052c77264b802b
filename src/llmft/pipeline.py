"""`llmft run`: the whole mission in one command. Demo data (unless real datasets are given) -> prepare (task split)
-> LoRA training -> base-vs-tuned evaluation on the test split -> `report.md` + `summary.json` in the run folder.

A recipe is one YAML file: run-level keys (`RunConfig`) plus `data:`, `train:` and `eval:` sections holding
DataConfig / TrainConfig / EvalConfig keys. Every stage calls the public function of its module (injectable through
`Stages`, so the orchestration is tested on fakes) and is skipped when its output is already complete, so a rerun
after an interruption continues where it stopped.

Folder layout under `--out DIR`: `recipe.yaml` (the resolved recipe), `raw/` (demo data), `data/` (prepared),
`train/` (the training run folder, which also receives eval.json / predictions.jsonl / eval.png), `stages.json`
(wall time of each stage), `report.md`, `summary.json`.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

import yaml

from llmft import io
from llmft.config import DataConfig, EvalConfig, RunConfig, TrainConfig, check, from_dict, parse_dotlist, to_dict
from llmft.errors import LlmftError

SECTIONS = {"data": DataConfig, "train": TrainConfig, "eval": EvalConfig}
SOURCE_KEYS = ("alpaca", "self_instruct", "natural_instructions", "unnatural_instructions")
STAGE_NAMES = ("demo", "prepare", "budget", "train", "eval")
# What `llmft data download --out DIR` leaves, per DataConfig source key (first existing path wins).
DOWNLOADED_LAYOUT = {
    "alpaca": ("alpaca/alpaca_data.json",),
    "self_instruct": ("self_instruct/all_instances_82K.jsonl",),
    "natural_instructions": ("natural_instructions",),
    "unnatural_instructions": ("unnatural_instructions/core_data.jsonl",),
}


# ---------------------------------------------------------------- recipes

@dataclass
class Recipe:
    name: str
    run: RunConfig
    data: DataConfig
    train: TrainConfig
    eval: EvalConfig

    def to_dict(self) -> dict:
        return {"recipe": self.name, **to_dict(self.run),
                **{section: to_dict(getattr(self, section)) for section in SECTIONS}}


def builtin_recipes() -> list[str]:
    folder = resources.files("llmft").joinpath("recipes")
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def recipe_text(name_or_path: str) -> tuple[str, str]:
    """(label, YAML text) of a built-in recipe name or a YAML file path."""
    path = Path(name_or_path)
    if path.is_file():
        return str(path), path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        raise LlmftError(f"{path}: no such recipe file")
    if name_or_path not in builtin_recipes():
        raise LlmftError(f"unknown recipe {name_or_path!r}: give a YAML file or one of {', '.join(builtin_recipes())}")
    text = resources.files("llmft").joinpath("recipes", f"{name_or_path}.yaml").read_text(encoding="utf-8")
    return name_or_path, text


def split_overrides(items: list[str]) -> dict[str, dict]:
    """`--set train.lr=3e-4 demo_instances=20` -> {"train": {"lr": 3e-4}, "run": {"demo_instances": 20}}."""
    out: dict[str, dict] = {"run": {}, **{section: {} for section in SECTIONS}}
    for key, value in parse_dotlist(items).items():
        section, _, name = key.rpartition(".")
        section = section or "run"
        if section not in out:
            raise LlmftError(f"--set {key}: unknown section {section!r}; use data., train., eval. or a run-level key")
        out[section][name] = value
    return out


def load_recipe(name_or_path: str = "demo", overrides: list[str] | None = None) -> Recipe:
    """The recipe's sections as configs, `--set` overrides applied; unknown keys and bad values name their place.
    Paths (data sources, train.data/out) are filled in by `resolve_recipe`, so the configs are not validated here."""
    label, text = recipe_text(name_or_path)
    try:
        loaded = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise LlmftError(f"{label}: not valid YAML: {e}") from None
    if not isinstance(loaded, dict):
        raise LlmftError(f"{label}: expected a mapping with data:, train:, eval: and run-level keys")
    extra = split_overrides(overrides or [])
    parts = {}
    for section, cls in SECTIONS.items():
        body = loaded.pop(section, None) or {}
        if not isinstance(body, dict):
            raise LlmftError(f"{label}: '{section}:' must be a mapping of {cls.__name__} keys")
        parts[section] = from_dict(cls, {**_underscored(body), **extra[section]}, f"{label} [{section}]")
    run = from_dict(RunConfig, {**_underscored(loaded), **extra["run"]}, f"{label} (run-level keys)")
    check(run)
    return Recipe(label, run, **parts)


def _underscored(mapping: dict) -> dict:
    return {str(k).replace("-", "_"): v for k, v in mapping.items()}


def downloaded_sources(folder: str | Path) -> dict[str, list[str]]:
    """The dataset paths inside a `llmft data download` folder (whatever part of it was downloaded)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LlmftError(f"{folder}: no such folder (expected the --out of `llmft data download`)")
    found = {}
    for key, candidates in DOWNLOADED_LAYOUT.items():
        path = next((folder / c for c in candidates if (folder / c).exists()), None)
        if path is not None:
            found[key] = [str(path)]
    if not found:
        wanted = ", ".join(c for cs in DOWNLOADED_LAYOUT.values() for c in cs)
        raise LlmftError(f"{folder}: none of the downloaded datasets found (looked for {wanted})")
    return found


# ---------------------------------------------------------------- the run folder

@dataclass(frozen=True)
class Layout:
    out: Path

    @property
    def raw(self) -> Path:
        return self.out / "raw"

    @property
    def data(self) -> Path:
        return self.out / "data"

    @property
    def train(self) -> Path:
        return self.out / "train"

    @property
    def demo_marker(self) -> Path:
        return self.raw / "demo.json"

    @property
    def recipe(self) -> Path:
        return self.out / "recipe.yaml"

    @property
    def stages(self) -> Path:
        return self.out / "stages.json"

    @property
    def report(self) -> Path:
        return self.out / "report.md"

    @property
    def summary(self) -> Path:
        return self.out / "summary.json"


def demo_sources(raw: Path) -> dict[str, list[str]]:
    """Where `sources.demo.write_demo(raw)` puts each dataset."""
    return {"alpaca": [str(raw / "alpaca" / "alpaca_data.json")],
            "natural_instructions": [str(raw / "natural_instructions")],
            "unnatural_instructions": [str(raw / "unnatural_instructions" / "core_data.jsonl")]}


def resolve_recipe(recipe: Recipe, out: str | Path, sources: dict[str, list[str]] | None = None) -> Recipe:
    """Fill in the paths: the given datasets (else the demo data under out/raw), out/data and out/train."""
    layout = Layout(Path(out))
    if sources:
        unknown = sorted(set(sources) - set(SOURCE_KEYS))
        if unknown:
            raise LlmftError(f"unknown dataset key(s) {', '.join(unknown)}; known: {', '.join(SOURCE_KEYS)}")
    paths = {key: [] for key in SOURCE_KEYS} | (sources or demo_sources(layout.raw))
    data = dataclasses.replace(recipe.data, **paths)
    train = dataclasses.replace(recipe.train, data=str(layout.data), out=str(layout.train), resume=False)
    for cfg in (data, train, recipe.eval):
        check(cfg)
    return dataclasses.replace(recipe, data=data, train=train)


def save_or_check_recipe(recipe: Recipe, layout: Layout) -> None:
    """A rerun must use the recipe its completed stages were made with; a changed key is an error naming it."""
    wanted = recipe.to_dict()
    if layout.recipe.exists():
        saved = yaml.safe_load(layout.recipe.read_text(encoding="utf-8")) or {}
        changed = _changed_keys(saved, wanted)
        if changed:
            raise LlmftError(f"{layout.out}: this run folder was started with another recipe; changed: "
                             f"{'; '.join(changed)}. Use a new --out (or remove {layout.out}).")
        return
    with io.atomic_write(layout.recipe) as f:
        yaml.safe_dump(wanted, f, sort_keys=False, allow_unicode=True)


def _changed_keys(saved: dict, wanted: dict, prefix: str = "") -> list[str]:
    changed = []
    for key in sorted(set(saved) | set(wanted), key=str):
        old, new = saved.get(key), wanted.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changed += _changed_keys(old, new, f"{prefix}{key}.")
        elif old != new:
            changed.append(f"{prefix}{key}: {old!r} -> {new!r}")
    return changed


# ---------------------------------------------------------------- the stages (injectable)

def _demo(out: Path, seed: int, instances: int) -> dict:
    from llmft.sources.demo import write_demo

    return write_demo(out, seed=seed, instances=instances)


def _prepare(cfg: DataConfig, out: Path) -> dict:
    from llmft.prepare import prepare

    return prepare(cfg, out)


def _train(cfg: TrainConfig) -> dict:
    from llmft.train import train

    return train(cfg)


def _evaluate(run_dir: Path, cfg: EvalConfig) -> dict:
    from llmft.evaluate import evaluate_run

    return evaluate_run(run_dir, cfg)


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
    """Run (or continue) every stage into `out`; returns the summary (also out/summary.json)."""
    stages = stages or default_stages()
    layout = Layout(Path(out))
    recipe = resolve_recipe(recipe, layout.out, sources)
    layout.out.mkdir(parents=True, exist_ok=True)
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
        from llmft.budget import fit_recipe

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
                lambda: stages.evaluate(layout.train, recipe.eval))

    summary = write_report(recipe, layout, log.entries, demo=demo)
    echo(closing_summary(summary))
    return summary


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


# ---------------------------------------------------------------- seen vs held-out tasks

def trained_tasks(train_jsonl: Path) -> set[tuple[str, str]]:
    """(source, task) of every training record: test records of these tasks are new instances of seen tasks."""
    return {(row.get("source", "unknown"), row.get("task", "unknown")) for row in io.read_jsonl(train_jsonl)}


def seen_vs_unseen(predictions: Path, seen: set[tuple[str, str]]) -> dict:
    """Base/tuned ROUGE-L and exact match over test records of tasks seen in training and of held-out tasks."""
    from llmft.metrics import aggregate

    groups: dict[str, dict] = {"seen": {"tasks": set(), "scores": {}}, "unseen": {"tasks": set(), "scores": {}}}
    for row in io.read_jsonl(predictions):
        key = (row.get("source", "unknown"), row.get("task", "unknown"))
        group = groups["seen" if key in seen else "unseen"]
        group["tasks"].add(key[1])
        for model, score in row.get("scores", {}).items():
            group["scores"].setdefault(model, []).append({k: v / 100.0 for k, v in score.items()})
    return {name: {"tasks": sorted(g["tasks"]), **{model: aggregate(s) for model, s in g["scores"].items()}}
            for name, g in groups.items()}


# ---------------------------------------------------------------- report

def write_report(recipe: Recipe, layout: Layout, stage_times: dict, *, demo: bool) -> dict:
    """report.md and summary.json from the stage outputs (always rewritten: cheap, and reflects every rerun)."""
    from llmft.report import comparison_table

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


def build_summary(recipe: Recipe, layout: Layout, manifest: dict, train_summary: dict, evaluation: dict,
                  split: dict, stage_times: dict, demo: bool) -> dict:
    models = [m for m in ("base", "tuned") if m in evaluation]

    def scores(entry: dict) -> dict:
        return {k: entry.get(k) for k in ("rougeL", "exact_match", "n")}

    return {
        "out": str(layout.out),
        "recipe": recipe.name,
        "model": recipe.train.model,
        "demo_data": demo,
        "data": {"splits": manifest["counts"]["splits"], "by_source": manifest["counts"]["by_source"]},
        "train": {k: train_summary.get(k) for k in ("steps", "epochs", "train_seconds", "tokens_per_s",
                                                      "initial_dev_loss", "final_dev_loss", "final_loss")},
        "eval_split": recipe.eval.split,
        "overall": {m: {**scores(evaluation[m]), "loss": evaluation[m].get("loss")} for m in models},
        "per_source": {m: {s: scores(v) for s, v in evaluation[m].get("per_source", {}).items()} for m in models},
        "seen_tasks": split["seen"],
        "held_out_tasks": split["unseen"],
        "tasks_at_zero": tasks_at_zero(evaluation),
        "stages": stage_times,
        "files": {"report": str(layout.report), "recipe": str(layout.recipe), "data": str(layout.data),
                  "run": str(layout.train), "loss_plot": str(layout.train / "loss.png"),
                  "eval_plot": str(layout.train / "eval.png"),
                  "predictions": str(layout.train / "predictions.jsonl")},
    }


def tasks_at_zero(evaluation: dict) -> list[str]:
    """Tasks where the tuned model got no record exactly right."""
    per_task = evaluation.get("tuned", {}).get("per_task", {})
    return sorted(task for task, v in per_task.items() if not v.get("exact_match"))


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _delta(group: dict, metric: str) -> str:
    base, tuned = group.get("base", {}).get(metric), group.get("tuned", {}).get(metric)
    return f"{tuned - base:+.1f}" if base is not None and tuned is not None else ""


def seen_table(split: dict) -> str:
    rows = ["| test records from | tasks | n | ROUGE-L base | ROUGE-L tuned | delta | exact match base "
            "| exact match tuned | delta |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    labels = {"seen": "tasks seen in training (new instances)", "unseen": "held-out tasks (never trained on)"}
    for name, label in labels.items():
        group = split[name]
        n = group.get("tuned", group.get("base", {})).get("n", 0)
        rows.append(f"| {label} | {len(group['tasks'])} | {n} | "
                    f"{_pct(group.get('base', {}).get('rougeL'))} | {_pct(group.get('tuned', {}).get('rougeL'))} | "
                    f"{_delta(group, 'rougeL')} | {_pct(group.get('base', {}).get('exact_match'))} | "
                    f"{_pct(group.get('tuned', {}).get('exact_match'))} | {_delta(group, 'exact_match')} |")
    return "\n".join(rows)


def data_table(manifest: dict) -> str:
    rows = ["| source | converted | train | dev | test |", "|---|---:|---:|---:|---:|"]
    for source, c in manifest["counts"]["by_source"].items():
        rows.append(f"| {source} | {c['converted']} | {c['train']} | {c['dev']} | {c['test']} |")
    s = manifest["counts"]["splits"]
    rows.append(f"| **all** | {manifest['counts']['converted']} | {s['train']} | {s['dev']} | {s['test']} |")
    return "\n".join(rows)


def stage_table(stage_times: dict) -> str:
    rows = ["| stage | status | minutes |", "|---|---|---:|"]
    for name in STAGE_NAMES:
        entry = stage_times.get(name)
        if entry:
            seconds = entry.get("seconds")
            rows.append(f"| {name} | {entry['status']} | {'' if seconds is None else f'{seconds / 60:.2f}'} |")
    return "\n".join(rows)


def notes(summary: dict, evaluation: dict) -> list[str]:
    out = []
    held = summary["held_out_tasks"]
    if held["tasks"]:
        out.append(f"Held-out tasks ({len(held['tasks'])}: {', '.join(held['tasks'])}) were never trained on; "
                   f"their scores measure transfer, not memorisation: exact match "
                   f"{_pct(held.get('base', {}).get('exact_match'))} -> "
                   f"{_pct(held.get('tuned', {}).get('exact_match'))}, ROUGE-L "
                   f"{_pct(held.get('base', {}).get('rougeL'))} -> {_pct(held.get('tuned', {}).get('rougeL'))}.")
    else:
        out.append("The test split has no held-out task: every test record comes from a task seen in training.")
    if summary["tasks_at_zero"]:
        out.append(f"Tasks where the tuned model got no record exactly right: {', '.join(summary['tasks_at_zero'])}.")
    worse = [t for t, v in evaluation.get("tuned", {}).get("per_task", {}).items()
             if v.get("rougeL", 0) < evaluation.get("base", {}).get("per_task", {}).get(t, {}).get("rougeL", 0)]
    if worse:
        out.append(f"Tasks where the tuned model's ROUGE-L is below the base model's: {', '.join(sorted(worse))}.")
    if summary["demo_data"]:
        out.append("The data is the synthetic demo set (`llmft data demo`), whose answers are short and "
                   "unambiguous, so exact match is meaningful; it says nothing about scores on the real datasets.")
    return out


def render_report(recipe: Recipe, summary: dict, manifest: dict, train_summary: dict, tables: str,
                  evaluation: dict, split: dict) -> str:
    t, tr = recipe.train, summary["train"]
    lines = [
        f"# llmft run: {summary['out']}", "",
        "## What was run", "",
        f"- recipe: `{recipe.name}` (resolved: `recipe.yaml`); data: "
        f"{'synthetic demo datasets' if summary['demo_data'] else 'the given datasets'}, "
        f"`{recipe.data.split}` split",
        f"- model: `{t.model}`, {t.method}" + (f" r={t.lora_r} alpha={t.lora_alpha}" if t.method == "lora" else "")
        + f", template `{t.template}`, lr {t.lr}, {tr['steps']} steps ({tr['epochs']} epochs)",
        f"- evaluation: `{recipe.eval.split}` split, greedy, at most {recipe.eval.max_new_tokens} new tokens",
        "", "### Data (from `data/manifest.json`)", "", data_table(manifest), "",
        f"Rejected: {_rejects(manifest)}; deduplicated: {manifest['counts']['deduplicated']}.", "",
        "### Training", "",
        f"{tr['steps']} steps in {_minutes(tr['train_seconds'])} min ({_pct(tr['tokens_per_s'])} tokens/s); "
        f"dev loss {_num(tr['initial_dev_loss'])} -> {_num(tr['final_dev_loss'])}.", "",
        "![loss curve](train/loss.png)", "",
        f"## Base vs tuned on the {recipe.eval.split} split", "",
        "ROUGE-L and exact match are percentages (SuperNI semantics); delta = tuned - base.", "",
        "### Tasks seen in training vs held-out tasks", "", seen_table(split), "",
        tables.rstrip(), "",
        "![base vs tuned](train/eval.png)", "",
        "## Notes", "", *[f"- {n}" for n in notes(summary, evaluation)], "",
        "## Stage times", "", stage_table(summary["stages"]), "",
    ]
    return "\n".join(lines)


def _rejects(manifest: dict) -> str:
    by_reason = manifest["rejects"].get("by_reason", {})
    reasons = ", ".join(f"{reason}: {n}" for reason, n in by_reason.items())
    return f"{manifest['rejects']['total']}" + (f" ({reasons})" if reasons else "")


def _minutes(seconds) -> str:
    return "n/a" if seconds is None else f"{seconds / 60:.1f}"


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def closing_summary(summary: dict) -> str:
    """The lines printed on the terminal at the end of `llmft run`."""
    lines = ["", f"== llmft run finished: {summary['out']}", "stage times:"]
    for name in STAGE_NAMES:
        entry = summary["stages"].get(name)
        if entry:
            took = "" if entry.get("seconds") is None else f"{entry['seconds'] / 60:.1f} min"
            lines.append(f"  {name:<8} {entry['status']:<8} {took}")
    overall = summary["overall"]
    lines.append(f"{summary['eval_split']} split, base -> tuned:")
    lines.append("  overall: " + _pair(overall))
    for source in summary["per_source"].get("tuned", {}):
        lines.append(f"  {source}: " + _pair({m: summary["per_source"][m].get(source, {})
                                               for m in summary["per_source"]}))
    for key, label in (("seen_tasks", "seen tasks (new instances)"), ("held_out_tasks", "held-out tasks")):
        group = summary[key]
        if group["tasks"]:
            lines.append(f"  {label}, {len(group['tasks'])} task(s): " + _pair(group))
    files = summary["files"]
    lines += [f"report: {files['report']}", f"plots: {files['loss_plot']}, {files['eval_plot']}",
              f"predictions: {files['predictions']}"]
    return "\n".join(lines)


def _pair(by_model: dict) -> str:
    base, tuned = by_model.get("base", {}), by_model.get("tuned", {})
    n = tuned.get("n", base.get("n"))
    return (f"exact match {_pct(base.get('exact_match'))} -> {_pct(tuned.get('exact_match'))}, "
            f"ROUGE-L {_pct(base.get('rougeL'))} -> {_pct(tuned.get('rougeL'))} (n={n})")
