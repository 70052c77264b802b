"""`llmft run`: the whole pipeline (demo data or real datasets -> prepare -> train -> eval -> report)."""
from __future__ import annotations

SOURCE_FLAGS = (
    ("--alpaca", "alpaca", "Stanford Alpaca alpaca_data.json"),
    ("--self-instruct", "self_instruct", "Self-Instruct JSONL"),
    ("--natural-instructions", "natural_instructions", "Super-NaturalInstructions root (tasks/ and splits/default/)"),
    ("--unnatural-instructions", "unnatural_instructions", "Unnatural Instructions core/full JSONL"),
    ("--chat", "chat", "conversations, messages or ShareGPT (a file, folder or hub dataset id)"),
)


def register(sub) -> None:
    parser = sub.add_parser(
        "run", help="the whole pipeline: data -> prepare -> LoRA training -> base vs tuned eval -> report",
        description="Without dataset paths it generates the synthetic demo datasets. Writes DIR/recipe.yaml, raw/, "
        "data/, train/ (with eval.json, predictions.jsonl, eval.png), report.md and summary.json; a stage whose "
        "output is complete is skipped, so rerunning continues an interrupted run.")
    parser.add_argument("--out", required=True, help="run folder")
    parser.add_argument("--recipe", default="demo", help="built-in recipe name or YAML file (default: demo)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key: train.lr=3e-4, eval.max_new_tokens=32, demo_instances=20; "
                        "repeatable")
    for flag, dest, text in SOURCE_FLAGS:
        parser.add_argument(flag, dest=dest, action="append", metavar="PATH", help=f"{text}; repeatable")
    parser.add_argument("--downloaded", metavar="DIR", help="the --out folder of `llmft data download`")
    parser.add_argument("--budget-minutes", type=float, metavar="M",
                        help="wall-clock budget for prepare + train + eval: the training steps are fitted to it from "
                        "measured throughput (same as --set budget_minutes=M)")
    parser.set_defaults(func=run)


def sources_from(args) -> dict[str, list[str]]:
    from llmft.errors import LlmftError
    from llmft.pipeline.recipe import downloaded_sources

    given = {dest: getattr(args, dest) for _, dest, _ in SOURCE_FLAGS if getattr(args, dest)}
    if args.downloaded and given:
        raise LlmftError("give either --downloaded DIR or dataset paths (--alpaca, ...), not both")
    return downloaded_sources(args.downloaded) if args.downloaded else given


def run(args) -> int:
    from llmft.api import tune_cpu
    from llmft.pipeline.recipe import load_recipe
    from llmft.pipeline.runner import run_pipeline

    budget = [] if args.budget_minutes is None else [f"budget_minutes={args.budget_minutes}"]
    recipe = load_recipe(args.recipe, args.overrides + budget)
    tune_cpu()
    run_pipeline(recipe, args.out, sources=sources_from(args))
    return 0
