"""Reports: tables and plots of an eval result (`{"base": {...}, "tuned": {...}}`), shared by `llmft eval` and the
run report, and the run report itself (`report.md`, `summary.json`, the closing summary of `llmft run`)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from llmft import io
from llmft.io import atomic_write

if TYPE_CHECKING:       # the run report reads a recipe and a run folder layout; no import at run time
    from llmft.pipeline.layout import Layout
    from llmft.pipeline.recipe import Recipe

STAGE_NAMES = ("demo", "prepare", "budget", "train", "eval")

OVERALL_METRICS = (("loss", "loss"), ("perplexity", "perplexity"), ("rougeL", "ROUGE-L"),
                   ("exact_match", "exact match"), ("n", "records"), ("dtype", "dtype"))


def _models(eval_dict: dict) -> list[str]:
    return [name for name in ("base", "tuned") if name in eval_dict]


def _fmt(value) -> str:
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.2f}" if value == value else "n/a"
    return "" if value is None else str(value)


def _delta(base, tuned) -> str:
    if isinstance(base, (int, float)) and isinstance(tuned, (int, float)) and base == base and tuned == tuned:
        return f"{tuned - base:+.2f}"
    return ""


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _with_delta(names: list[str]) -> list[str]:
    return names + (["delta"] if names == ["base", "tuned"] else [])


def overall_table(eval_dict: dict) -> str:
    names = _models(eval_dict)
    rows = []
    for key, label in OVERALL_METRICS:
        values = [eval_dict[n].get(key) for n in names]
        if all(v is None for v in values):      # e.g. loss and perplexity of an eval without the loss pass
            continue
        row = [label] + [_fmt(v) for v in values]
        if len(names) == 2 and key not in ("n", "dtype"):
            row.append(_delta(*values))
        elif len(names) == 2:
            row.append("")
        rows.append(row)
    return _table(["metric"] + _with_delta(names), rows)


def group_table(eval_dict: dict, by: str = "per_source") -> str:
    """ROUGE-L and exact match of each source (or task), base next to tuned."""
    names = _models(eval_dict)
    groups = sorted({g for n in names for g in eval_dict[n].get(by, {})})
    header = [by.removeprefix("per_"), "n"]
    for metric in ("rougeL", "exact_match"):
        header += [f"{metric} {n}" for n in names]
    rows = []
    for group in groups:
        cells = [eval_dict[n].get(by, {}).get(group, {}) for n in names]
        row = [group, _fmt(cells[-1].get("n"))]
        for metric in ("rougeL", "exact_match"):
            row += [_fmt(c.get(metric)) for c in cells]
        rows.append(row)
    return _table(header, rows)


def comparison_table(eval_dict: dict) -> str:
    """Markdown: the overall comparison, then per source (and per task when there are several tasks)."""
    parts = ["### Overall", overall_table(eval_dict), "", "### Per source", group_table(eval_dict, "per_source")]
    any_model = eval_dict[_models(eval_dict)[-1]]
    if len(any_model.get("per_task", {})) > 1:
        parts += ["", "### Per task", group_table(eval_dict, "per_task")]
    return "\n".join(parts) + "\n"


def plot_group(eval_dict: dict) -> str:
    """Plot per source when there are several sources, else per task."""
    any_model = eval_dict[_models(eval_dict)[-1]]
    return "per_source" if len(any_model.get("per_source", {})) > 1 else "per_task"


def plot_base_vs_tuned(eval_dict: dict, path: str | Path, by: str | None = None) -> Path:
    """Grouped bars, base next to tuned, of ROUGE-L and exact match per source (or task); written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    by = by or plot_group(eval_dict)
    names = _models(eval_dict)
    groups = sorted({g for n in names for g in eval_dict[n].get(by, {})})
    x = np.arange(len(groups))
    width = 0.8 / max(len(names), 1)
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.2 * len(groups) + 4), 4.5), squeeze=False)
    for ax, (metric, label) in zip(axes[0], (("rougeL", "ROUGE-L"), ("exact_match", "exact match"))):
        for i, name in enumerate(names):
            values = [eval_dict[name].get(by, {}).get(g, {}).get(metric, 0.0) for g in groups]
            bars = ax.bar(x + (i - (len(names) - 1) / 2) * width, values, width, label=name)
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_title(f"{label} {by.replace('_', ' ')}")
        ax.set_xticks(x, [g if len(g) <= 24 else g[:22] + "…" for g in groups], rotation=30, ha="right",
                      fontsize=8)
        ax.set_ylim(0, 105)
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- seen vs held-out tasks

def trained_tasks(train_jsonl: Path) -> set[tuple[str, str]]:
    """(source, task) of every training record: test records of these tasks are new instances of seen tasks."""
    return {(row.get("source", "unknown"), row.get("task", "unknown")) for row in io.read_jsonl(train_jsonl)}


def seen_vs_unseen(predictions: Path, seen: set[tuple[str, str]]) -> dict:
    """Base/tuned ROUGE-L and exact match over test records of tasks seen in training and of held-out tasks."""
    from llmft.evaluation.metrics import aggregate

    groups: dict[str, dict] = {"seen": {"tasks": set(), "scores": {}}, "unseen": {"tasks": set(), "scores": {}}}
    for row in io.read_jsonl(predictions):
        key = (row.get("source", "unknown"), row.get("task", "unknown"))
        group = groups["seen" if key in seen else "unseen"]
        group["tasks"].add(key[1])
        for model, score in row.get("scores", {}).items():
            group["scores"].setdefault(model, []).append({k: v / 100.0 for k, v in score.items()})
    return {name: {"tasks": sorted(g["tasks"]), **{model: aggregate(s) for model, s in g["scores"].items()}}
            for name, g in groups.items()}



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


def _group_delta(group: dict, metric: str) -> str:
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
                    f"{_group_delta(group, 'rougeL')} | {_pct(group.get('base', {}).get('exact_match'))} | "
                    f"{_pct(group.get('tuned', {}).get('exact_match'))} | {_group_delta(group, 'exact_match')} |")
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
        f"- model: `{t.model}`, {t.method}" + _method_details(t)
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


def _method_details(t) -> str:
    if t.method == "lora":
        return f" r={t.lora_r} alpha={t.lora_alpha}"
    if t.method == "adapter":
        width = f"width hidden/{t.adapter_reduction:g}" if t.adapter_reduction > 0 else f"size {t.adapter_size}"
        return f" ({t.adapter_placement} bottleneck adapters, {width}, {t.adapter_activation})"
    return ""


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
