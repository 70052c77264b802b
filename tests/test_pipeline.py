"""`llmft run` orchestration on fake train/eval stages (the real demo generator and prepare run: they are fast):
stage order, skip-if-complete, resuming an interrupted training, recipes and overrides, held-out vs seen tasks and
the report's contents."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from llmft import io
from llmft.evaluation import report
from llmft.pipeline import recipe as recipes
from llmft.pipeline import runner as pipeline
from llmft.cli import main
from llmft.errors import LlmftError
from llmft.evaluation.metrics import aggregate, aggregate_by, score_prediction

NI_HELD_OUT = [
    "task9017_demo_uppercase_sentence", "task9018_demo_add_three_numbers", "task9019_demo_last_letter",
    "task9020_demo_previous_number", "task9021_demo_sort_numbers_descending", "task9022_demo_min_of_list",
    "task9023_demo_year_of_date", "task9024_demo_reverse_word_order", "task9025_demo_acronym",
]
# budget_minutes=0: the fake stages have no throughput to measure (tests/test_budget.py tests the fit)
SMALL = ["demo_instances=10", "data.workers=1", "data.test_instances_per_task=2", "budget_minutes=0"]


# ---------------------------------------------------------------- fakes

class FakeStages:
    """Real demo + prepare; train writes what a finished run folder holds; eval answers seen tasks right and
    held-out tasks wrong (the base model answers everything wrong), scored by the real metrics."""

    def __init__(self, interrupt_train: bool = False):
        self.calls: list[str] = []
        self.train_cfgs = []
        self.interrupt_train = interrupt_train
        real = pipeline.default_stages()
        self.stages = pipeline.Stages(demo=self.demo(real.demo), prepare=self.prepare(real.prepare),
                                      train=self.train, evaluate=self.evaluate)

    def demo(self, real):
        def run(out, seed, instances):
            self.calls.append("demo")
            return real(out, seed, instances)
        return run

    def prepare(self, real):
        def run(cfg, out):
            self.calls.append("prepare")
            return real(cfg, out)
        return run

    def train(self, cfg):
        self.calls.append("train")
        self.train_cfgs.append(cfg)
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump({"data": cfg.data}), encoding="utf-8")
        if self.interrupt_train:
            self.interrupt_train = False
            raise KeyboardInterrupt
        (out / "loss.png").write_bytes(b"png")
        summary = {"steps": cfg.max_steps, "epochs": 0.5, "train_seconds": 90.0, "tokens_per_s": 123.4,
                   "initial_dev_loss": 3.0, "final_dev_loss": 0.5, "final_loss": 0.4}
        io.write_json(out / "summary.json", summary)
        return summary

    def evaluate(self, run_dir, cfg):
        self.calls.append("evaluate")
        records = list(io.read_jsonl(Path(yaml.safe_load((run_dir / "config.yaml").read_text())["data"])
                                     / "test.jsonl"))
        predictions = {"base": ["no idea" for _ in records],
                       "tuned": ["wrong" if r["task"] in NI_HELD_OUT else r["output"] for r in records]}
        results, rows = {}, [{"id": r["id"], "source": r["source"], "task": r["task"], "scores": {}}
                             for r in records]
        for model, preds in predictions.items():
            scores = [score_prediction(p, r) for p, r in zip(preds, records)]
            results[model] = {"loss": 1.0, **aggregate(scores),
                              "per_source": aggregate_by(scores, [r["source"] for r in records]),
                              "per_task": aggregate_by(scores, [r["task"] for r in records])}
            for row, s in zip(rows, scores):
                row["scores"][model] = {k: 100.0 * v for k, v in s.items()}
        io.write_json(run_dir / "eval.json", results)
        io.write_jsonl(run_dir / "predictions.jsonl", rows)
        (run_dir / "eval.png").write_bytes(b"png")
        return results


def run_small(out: Path, fakes: FakeStages, extra: list[str] = (), echo=None) -> dict:
    recipe = recipes.load_recipe("demo", SMALL + list(extra))
    return pipeline.run_pipeline(recipe, out, stages=fakes.stages, echo=echo or (lambda line: None))


# ---------------------------------------------------------------- recipes

def test_demo_recipe_values():
    recipe = recipes.load_recipe("demo")
    assert recipe.name == "demo"
    assert recipe.run.demo_instances == 40
    assert (recipe.data.split, recipe.data.test_ratio, recipe.data.test_instances_per_task) == ("tasks", 0.1, 5)
    assert (recipe.train.model, recipe.train.method, recipe.train.max_steps) == ("smollm2-135m", "lora", 120)
    assert (recipe.eval.split, recipe.eval.max_new_tokens) == ("test", 24)
    assert recipe.run.budget_minutes == 8 and recipe.eval.loss is False     # steps fitted to 8 min, at most 120
    assert "demo" in recipes.builtin_recipes()


def test_overrides_are_typed_and_land_in_their_section():
    recipe = recipes.load_recipe("demo", ["train.lr=3e-4", "demo_instances=7", "eval.limit=12",
                                           "data.languages=English,German", "train.packing=false"])
    assert recipe.train.lr == 3e-4
    assert recipe.run.demo_instances == 7
    assert recipe.eval.limit == 12
    assert recipe.data.languages == ["English", "German"]
    assert recipe.train.packing is False


@pytest.mark.parametrize("override, message", [
    ("model.lr=1", "unknown section 'model'"),
    ("train.learning_rate=1", "unknown key(s) learning_rate"),
    ("train.max_steps=many", "max_steps: expected an integer, got 'many'"),
    ("demo_instances=0", "demo_instances must be at least 1, got 0"),
    ("lr", "override 'lr' must look like key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(LlmftError, match=message.replace("(", r"\(").replace(")", r"\)")):
        recipes.load_recipe("demo", [override])


def test_recipe_file_and_its_errors(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("demo_instances: 3\ntrain:\n  max_steps: 5\n  lr: 0.01\n", encoding="utf-8")
    recipe = recipes.load_recipe(str(path))
    assert (recipe.name, recipe.run.demo_instances, recipe.train.max_steps, recipe.train.lr) == (str(path), 3, 5,
                                                                                                 0.01)
    assert recipe.data.split == "random" and recipe.eval.max_new_tokens == 64   # unset keys: config defaults
    path.write_text("train: [1, 2]\n", encoding="utf-8")
    with pytest.raises(LlmftError, match=r"mine.yaml: 'train:' must be a mapping of TrainConfig keys"):
        recipes.load_recipe(str(path))
    path.write_text("train: {epochs: 2}\nbatch: 3\n", encoding="utf-8")
    with pytest.raises(LlmftError, match=r"mine.yaml \(run-level keys\): unknown key\(s\) batch"):
        recipes.load_recipe(str(path))
    with pytest.raises(LlmftError, match="unknown recipe 'nosuch': give a YAML file or one of .*demo"):
        recipes.load_recipe("nosuch")
    with pytest.raises(LlmftError, match="missing.yaml: no such recipe file"):
        recipes.load_recipe(str(tmp_path / "missing.yaml"))


def test_downloaded_folder_maps_to_the_sources(tmp_path):
    (tmp_path / "alpaca").mkdir()
    (tmp_path / "alpaca" / "alpaca_data.json").write_text("[]")
    (tmp_path / "natural_instructions" / "tasks").mkdir(parents=True)
    assert recipes.downloaded_sources(tmp_path) == {
        "alpaca": [str(tmp_path / "alpaca" / "alpaca_data.json")],
        "natural_instructions": [str(tmp_path / "natural_instructions")]}
    with pytest.raises(LlmftError, match="none of the downloaded datasets found"):
        recipes.downloaded_sources(tmp_path / "alpaca")


# ---------------------------------------------------------------- orchestration

def test_stages_run_in_order_with_the_resolved_paths(tmp_path):
    fakes, lines = FakeStages(), []
    summary = run_small(tmp_path / "run", fakes, echo=lines.append)
    out = tmp_path / "run"
    assert fakes.calls == ["demo", "prepare", "train", "evaluate"]
    cfg = fakes.train_cfgs[0]
    assert (cfg.data, cfg.out, cfg.resume, cfg.max_steps) == (str(out / "data"), str(out / "train"), False, 120)
    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert saved["recipe"] == "demo" and saved["demo_instances"] == 10
    assert saved["data"]["alpaca"] == [str(out / "raw" / "alpaca" / "alpaca_data.json")]
    assert saved["data"]["natural_instructions"] == [str(out / "raw" / "natural_instructions")]
    assert saved["train"]["data"] == str(out / "data")
    assert [line for line in lines if line.startswith("[")][::2] == [
        f"[demo] writing the demo datasets (10 instances per task type) to {out / 'raw'}",
        f"[prepare] preparing (tasks split) into {out / 'data'}",
        f"[train] training lora on smollm2-135m into {out / 'train'}",
        "[eval] scoring base and tuned on the test split"]
    stages = io.load_json(out / "stages.json")
    assert list(stages) == ["demo", "prepare", "train", "eval"]
    assert all(s["status"] == "ran" and s["seconds"] >= 0 for s in stages.values())
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))


def test_held_out_and_seen_tasks_on_the_prepared_demo_data(tmp_path):
    summary = run_small(tmp_path / "run", FakeStages())
    # demo data, 10 instances per type: alpaca 8 types x 10 = 80, unnatural 7 x 10 = 70 and chat 7 x 10 = 70
    # records, test 10% of each (seen task types; the chat conversations of the 4 categories drawn for test);
    # natural-instructions test = the 9 held-out tasks x 2 official instances.
    assert summary["data"]["splits"]["test"] == 8 + 7 + 7 + 18
    assert summary["seen_tasks"]["tasks"] == ["alpaca", "date_parts", "list_questions", "name_recall",
                                              "shouted_words", "unnatural-instructions"]
    assert summary["held_out_tasks"]["tasks"] == NI_HELD_OUT
    assert summary["seen_tasks"]["tuned"] == {"rougeL": 100.0, "exact_match": 100.0, "n": 22}
    assert summary["seen_tasks"]["base"] == {"rougeL": 0.0, "exact_match": 0.0, "n": 22}
    assert summary["held_out_tasks"]["tuned"] == {"rougeL": 0.0, "exact_match": 0.0, "n": 18}
    assert summary["overall"]["tuned"]["exact_match"] == round(100 * 22 / 40, 4)
    assert summary["per_source"]["tuned"]["natural-instructions"]["exact_match"] == 0.0
    assert summary["tasks_at_zero"] == NI_HELD_OUT


def test_seen_vs_unseen_counts_by_source_and_task(tmp_path):
    io.write_jsonl(tmp_path / "train.jsonl", [{"source": "alpaca", "task": "alpaca"},
                                              {"source": "natural-instructions", "task": "t1"}])
    rows = [("alpaca", "alpaca", 100, 50), ("natural-instructions", "t1", 0, 100),
            ("natural-instructions", "t2", 0, 0), ("natural-instructions", "t3", 50, 100),
            ("unnatural-instructions", "alpaca", 0, 0)]      # same task name, other source: not seen
    io.write_jsonl(tmp_path / "predictions.jsonl", [
        {"source": s, "task": t, "scores": {"base": {"rougeL": 0.0, "exact_match": b},
                                            "tuned": {"rougeL": 50.0, "exact_match": e}}} for s, t, b, e in rows])
    split = report.seen_vs_unseen(tmp_path / "predictions.jsonl", report.trained_tasks(tmp_path / "train.jsonl"))
    assert split["seen"] == {"tasks": ["alpaca", "t1"], "base": {"rougeL": 0.0, "exact_match": 50.0, "n": 2},
                             "tuned": {"rougeL": 50.0, "exact_match": 75.0, "n": 2}}
    assert split["unseen"] == {"tasks": ["alpaca", "t2", "t3"],
                               "base": {"rougeL": 0.0, "exact_match": round(50 / 3, 4), "n": 3},
                               "tuned": {"rougeL": 50.0, "exact_match": round(100 / 3, 4), "n": 3}}


def test_report_contents(tmp_path):
    run_small(tmp_path / "run", FakeStages())
    report = (tmp_path / "run" / "report.md").read_text(encoding="utf-8")
    assert "| alpaca | 80 | 68 | 4 | 8 |" in report               # data table from the prepare manifest
    assert "| unnatural-instructions | 70 | 59 | 4 | 7 |" in report
    assert "| chat | 70 | 59 | 4 | 7 |" in report                  # the multi-turn demo conversations
    assert "| natural-instructions | 250 | 150 | 10 | 18 |" in report  # 16 train tasks x 10, one of them dev
    assert "Rejected: 72 (test task beyond official eval set: 72); deduplicated: 0." in report
    assert "![loss curve](train/loss.png)" in report and "![base vs tuned](train/eval.png)" in report
    assert "120 steps in 1.5 min (123.4 tokens/s); dev loss 3.000 -> 0.500." in report
    assert ("| tasks seen in training (new instances) | 6 | 22 | 0.0 | 100.0 | +100.0 | 0.0 | 100.0 | +100.0 |"
            in report)
    assert "| chat | 7 | 0.00 | 100.00 | 0.00 | 100.00 |" in report                        # scored per source
    assert "| held-out tasks (never trained on) | 9 | 18 | 0.0 | 0.0 | +0.0 | 0.0 | 0.0 | +0.0 |" in report
    for heading in ("### Overall", "### Per source", "### Per task", "## Notes", "## Stage times"):
        assert heading in report
    assert "| natural-instructions | 18 | 0.00 | 0.00 | 0.00 | 0.00 |" in report      # per source, from report.py
    assert f"Tasks where the tuned model got no record exactly right: {', '.join(NI_HELD_OUT)}." in report
    assert "| train | ran |" in report


def test_rerun_skips_every_complete_stage(tmp_path):
    run_small(tmp_path / "run", FakeStages())
    first = io.load_json(tmp_path / "run" / "stages.json")
    fakes, lines = FakeStages(), []
    summary = run_small(tmp_path / "run", fakes, echo=lines.append)
    assert fakes.calls == []
    out = tmp_path / "run"
    assert [line for line in lines if line.startswith("[")] == [
        f"[demo] skipped: {out / 'raw'} is complete", f"[prepare] skipped: {out / 'data'} is complete",
        f"[train] skipped: {out / 'train'} is complete", f"[eval] skipped: {out / 'train'}/eval.json is complete"]
    assert summary["stages"]["train"] == {"status": "skipped", "why": f"{out / 'train'} is complete",
                                          "seconds": first["train"]["seconds"]}


def test_interrupted_training_resumes_and_later_stages_follow(tmp_path):
    fakes = FakeStages(interrupt_train=True)
    with pytest.raises(KeyboardInterrupt):
        run_small(tmp_path / "run", fakes)
    assert fakes.calls == ["demo", "prepare", "train"]
    assert not (tmp_path / "run" / "report.md").exists()
    run_small(tmp_path / "run", fakes)
    assert fakes.calls == ["demo", "prepare", "train", "train", "evaluate"]
    assert [c.resume for c in fakes.train_cfgs] == [False, True]


def test_partial_eval_is_redone(tmp_path):
    run_small(tmp_path / "run", FakeStages())
    (tmp_path / "run" / "train" / "eval.png").unlink()
    fakes = FakeStages()
    run_small(tmp_path / "run", fakes)
    assert fakes.calls == ["evaluate"]


def test_changed_recipe_is_refused_naming_the_keys(tmp_path):
    run_small(tmp_path / "run", FakeStages())
    with pytest.raises(LlmftError, match=r"started with another recipe; changed: train.lr: 0.001 -> 0.0003"):
        run_small(tmp_path / "run", FakeStages(), ["train.lr=3e-4"])


def test_real_datasets_skip_the_demo(tmp_path, raw_dir):
    fakes = FakeStages()
    recipe = recipes.load_recipe("demo", ["data.workers=1", "data.split=random", "budget_minutes=0"])
    alpaca = raw_dir / "alpaca" / "alpaca_data.json"
    if not alpaca.exists():
        alpaca = next(raw_dir.glob("alpaca/*.json"))
    pipeline.run_pipeline(recipe, tmp_path / "run", sources={"alpaca": [str(alpaca)]}, stages=fakes.stages,
                          echo=lambda line: None)
    assert fakes.calls == ["prepare", "train", "evaluate"]
    assert not (tmp_path / "run" / "raw").exists()
    assert io.load_json(tmp_path / "run" / "stages.json")["demo"] == {"status": "skipped",
                                                                      "why": "real datasets given", "seconds": None}
    saved = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    assert saved["data"]["alpaca"] == [str(alpaca)] and saved["data"]["natural_instructions"] == []


def test_a_run_folders_recipe_reproduces_the_run(tmp_path, raw_dir):
    """`llmft run --recipe OLD/recipe.yaml --out NEW`: the same recipe name, keys and datasets, no demo data."""
    alpaca = next(raw_dir.glob("alpaca/*.json"))
    recipe = recipes.load_recipe("demo", ["data.workers=1", "data.split=random", "budget_minutes=0", "train.lr=5e-4"])
    pipeline.run_pipeline(recipe, tmp_path / "old", sources={"alpaca": [str(alpaca)]}, stages=FakeStages().stages,
                          echo=lambda line: None)
    again = recipes.load_recipe(str(tmp_path / "old" / "recipe.yaml"))
    assert (again.name, again.train.lr, again.data.alpaca) == ("demo", 5e-4, [str(alpaca)])
    fakes = FakeStages()
    pipeline.run_pipeline(again, tmp_path / "new", stages=fakes.stages, echo=lambda line: None)
    assert fakes.calls == ["prepare", "train", "evaluate"] and not (tmp_path / "new" / "raw").exists()
    old, new = (yaml.safe_load((tmp_path / run / "recipe.yaml").read_text()) for run in ("old", "new"))
    assert new["data"] == old["data"] and new["train"]["lr"] == 5e-4 and new["recipe"] == "demo"


def test_a_demo_runs_recipe_makes_its_own_demo_data(tmp_path):
    run_small(tmp_path / "old", FakeStages())
    again = recipes.load_recipe(str(tmp_path / "old" / "recipe.yaml"))
    assert again.data.alpaca == [str(tmp_path / "old" / "raw" / "alpaca" / "alpaca_data.json")]
    fakes = FakeStages()
    summary = pipeline.run_pipeline(again, tmp_path / "new", stages=fakes.stages, echo=lambda line: None)
    assert fakes.calls[0] == "demo" and (tmp_path / "new" / "raw").is_dir() and summary["demo_data"]
    saved = yaml.safe_load((tmp_path / "new" / "recipe.yaml").read_text())
    assert saved["data"]["alpaca"] == [str(tmp_path / "new" / "raw" / "alpaca" / "alpaca_data.json")]


def test_cli_runs_the_pipeline_and_prints_the_closing_summary(tmp_path, monkeypatch, capsys):
    fakes = FakeStages()
    monkeypatch.setattr(pipeline, "default_stages", lambda: fakes.stages)
    out = tmp_path / "run"
    argv = ["run", "--out", str(out)] + [a for s in SMALL for a in ("--set", s)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"== llmft run finished: {out}" in printed
    assert "  overall: exact match 0.0 -> 55.0, ROUGE-L 0.0 -> 55.0 (n=40)" in printed
    assert "  natural-instructions: exact match 0.0 -> 0.0, ROUGE-L 0.0 -> 0.0 (n=18)" in printed
    assert "  seen tasks (new instances), 6 task(s): exact match 0.0 -> 100.0, ROUGE-L 0.0 -> 100.0 (n=22)" in printed
    assert "  held-out tasks, 9 task(s): exact match 0.0 -> 0.0, ROUGE-L 0.0 -> 0.0 (n=18)" in printed
    assert f"report: {out / 'report.md'}" in printed


def test_cli_refuses_paths_and_downloaded_together(tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path / "r"), "--downloaded", str(tmp_path), "--alpaca", "x.json"]) == 2
    assert "give either --downloaded DIR or dataset paths" in capsys.readouterr().err
