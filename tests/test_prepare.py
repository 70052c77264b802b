"""`llmft data prepare` end to end: hand-made raw files with known answers, and the real samples."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from llmft.data import prepare as prepare_module
from llmft.cli import main
from llmft.config import DataConfig
from llmft.errors import LlmftError
from llmft.folders import MARKER
from llmft.data.prepare import OUTPUT_FILES, prepare

STRICT_SUFFIX = "(--strict turns every reject into an error)"


def rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def ids(path: Path) -> list[str]:
    return [r["id"] for r in rows(path)]


def write_alpaca(path: Path, items: list[tuple[str, str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([{"instruction": i, "input": x, "output": o} for i, x, o in items], indent=4))
    return path


def write_ni(root: Path, tasks: dict[str, tuple[str, list[tuple[str, str]]]], train: list[str], test: list[str]) -> Path:
    """A miniature Super-NaturalInstructions checkout: tasks/<name>.json and splits/default/*.txt."""
    (root / "tasks").mkdir(parents=True)
    (root / "splits" / "default").mkdir(parents=True)
    for name, (definition, instances) in tasks.items():
        task = {"Definition": [definition], "Input_language": ["English"], "Output_language": ["English"],
                "Instruction_language": ["English"], "Positive Examples": [],
                "Instances": [{"id": f"{name}-{i}", "input": x, "output": [o]} for i, (x, o) in enumerate(instances)]}
        (root / "tasks" / f"{name}.json").write_text(json.dumps(task, indent=4))
    (root / "splits" / "default" / "train_tasks.txt").write_text("".join(f"{t}\n" for t in train))
    (root / "splits" / "default" / "test_tasks.txt").write_text("".join(f"{t}\n" for t in test))
    return root


def test_exact_dedup_keeps_first_and_counts(tmp_path):
    alpaca = write_alpaca(tmp_path / "a.json", [
        ("Name a color.", "", "Red"),
        ("Name a fruit.", "", "Apple"),
        ("  name a COLOR ", "", "red."),        # duplicate of 0 after normalisation
        ("Name a color.", "", "Blue"),
        ("Name a color!", "", "RED"),           # duplicate of 0 again
    ])
    manifest = prepare(DataConfig(alpaca=[str(alpaca)], dev_ratio=0, test_ratio=0, workers=1), tmp_path / "out")
    out = tmp_path / "out"
    assert ids(out / "train.jsonl") == ["alpaca/0", "alpaca/1", "alpaca/3"]
    assert ids(out / "all.jsonl") == [f"alpaca/{i}" for i in range(5)]
    dups = rows(out / "rejects.jsonl")
    assert [(r["stage"], r["reason"], r["where"], r["item"]["id"]) for r in dups] == [
        ("dedup", "exact duplicate", "record alpaca/2", "alpaca/2"),
        ("dedup", "exact duplicate", "record alpaca/4", "alpaca/4")]
    assert dups[0]["path"] == str(alpaca) and dups[0]["source"] == "alpaca"
    assert manifest["identity"] == "converted 5 = kept 3 + rejected 0 + deduplicated 2"
    assert manifest["rejects"]["by_stage"]["dedup"] == {"exact duplicate": 2}


def test_tasks_split_decontamination_and_policy_rejects(tmp_path):
    definition = "Copy the input."
    root = write_ni(tmp_path / "ni", {
        "task001_copy": (definition, [("x1", "x1"), ("x2", "x2"), ("x3", "x3")]),
        "task002_other": ("Reverse the input.", [("ab", "ba"), ("cd", "dc")]),
        "task003_copy_test": (definition, [("x1", "not x1"), ("X2!", "not x2"), ("y1", "y1"), ("y2", "y2")]),
        "task004_excluded": ("Anything.", [("e1", "e1"), ("e2", "e2")]),
    }, train=["task001_copy", "task002_other"], test=["task003_copy_test"])
    cfg = DataConfig(natural_instructions=[str(root)], split="tasks", dev_ratio=0, test_instances_per_task=3, workers=1)
    manifest = prepare(cfg, tmp_path / "out")
    out = tmp_path / "out"
    ni = "natural-instructions"
    assert ids(out / "train.jsonl") == [f"{ni}/task001_copy-{i}" for i in range(3)] + [
        f"{ni}/task002_other-{i}" for i in range(2)]
    assert ids(out / "test.jsonl") == [f"{ni}/task003_copy_test-2"]
    assert ids(out / "dev.jsonl") == []
    rejected = [(r["stage"], r["reason"], r["item"]["id"]) for r in rows(out / "rejects.jsonl")]
    assert rejected == [
        ("decontaminate", "contaminates train", f"{ni}/task003_copy_test-0"),
        ("decontaminate", "contaminates train", f"{ni}/task003_copy_test-1"),
        ("split", "test task beyond official eval set", f"{ni}/task003_copy_test-3"),
        ("split", "excluded task", f"{ni}/task004_excluded-0"),
        ("split", "excluded task", f"{ni}/task004_excluded-1"),
    ]
    assert manifest["identity"] == "converted 11 = kept 6 + rejected 5 + deduplicated 0"
    assert manifest["counts"]["by_task"][ni]["task003_copy_test"] == {"train": 0, "dev": 0, "test": 1}


def test_random_split_ratios_stratified_by_source(tmp_path):
    alpaca = write_alpaca(tmp_path / "a.json", [(f"Task {i}.", "", f"answer {i}") for i in range(100)])
    si = tmp_path / "si.jsonl"
    si.write_text("".join(json.dumps({"instruction": f"Other {i}.", "input": "", "output": f"o {i}"}) + "\n"
                          for i in range(40)))
    manifest = prepare(DataConfig(alpaca=[str(alpaca)], self_instruct=[str(si)], dev_ratio=0.1, test_ratio=0.2,
                                  seed=11, workers=1), tmp_path / "out")
    by_source = manifest["counts"]["by_source"]
    assert by_source["alpaca"] == {"converted": 100, "train": 70, "dev": 10, "test": 20}
    assert by_source["self-instruct"] == {"converted": 40, "train": 28, "dev": 4, "test": 8}
    for split, n in (("train", 98), ("dev", 14), ("test", 28)):
        assert len(rows(tmp_path / "out" / f"{split}.jsonl")) == n
    test_sources = Counter(r["source"] for r in rows(tmp_path / "out" / "test.jsonl"))
    assert test_sources == {"alpaca": 20, "self-instruct": 8}


def test_near_duplicates_reported_then_removed(tmp_path):
    words = [f"w{i}" for i in range(300)]
    items = [("List the words.", "", " ".join(words)),
             ("Something else.", "", "Nothing alike at all here."),
             ("List the words.", "", " ".join(words[:100] + ["x"] + words[101:]))]
    alpaca = write_alpaca(tmp_path / "a.json", items)
    base = dict(alpaca=[str(alpaca)], dev_ratio=0, test_ratio=0, workers=1)
    reported = prepare(DataConfig(**base), tmp_path / "kept")
    assert reported["near_duplicates"]["found"] == 1 and reported["near_duplicates"]["removed"] is False
    example = reported["near_duplicates"]["examples"][0]
    assert (example["kept"]["id"], example["duplicate"]["id"]) == ("alpaca/0", "alpaca/2")
    assert ids(tmp_path / "kept" / "train.jsonl") == ["alpaca/0", "alpaca/1", "alpaca/2"]
    removed = prepare(DataConfig(**base, near_dedup=True), tmp_path / "removed")
    assert ids(tmp_path / "removed" / "train.jsonl") == ["alpaca/0", "alpaca/1"]
    assert removed["rejects"]["by_stage"]["dedup"] == {"near duplicate": 1}
    assert removed["identity"] == "converted 3 = kept 2 + rejected 0 + deduplicated 1"


def test_strict_mode_names_file_place_and_reason(tmp_path):
    alpaca = write_alpaca(tmp_path / "a.json", [("Say hi.", "", "hi"), ("Say bye.", "", ""), ("Say yo.", "", "yo")])
    with pytest.raises(LlmftError) as e:
        prepare(DataConfig(alpaca=[str(alpaca)], strict=True, workers=1), tmp_path / "out")
    assert str(e.value) == f"{alpaca}: index 1: empty output {STRICT_SUFFIX}"
    long = write_alpaca(tmp_path / "long.json", [("Say hi.", "", "hi"), ("Say a lot.", "", "x" * 50)])
    with pytest.raises(LlmftError) as e:
        prepare(DataConfig(alpaca=[str(long)], strict=True, max_chars=40, workers=1), tmp_path / "out")
    assert str(e.value) == f"{long}: record alpaca/1: overlong record {STRICT_SUFFIX}"
    assert not (tmp_path / "out").exists()
    # without --strict the same input is prepared, the reject counted
    manifest = prepare(DataConfig(alpaca=[str(long)], max_chars=40, workers=1), tmp_path / "out")
    assert manifest["rejects"]["by_stage"]["clean"] == {"overlong record": 1}


def test_strict_mode_skips_reasons_a_source_declares_as_policy(tmp_path, monkeypatch):
    from llmft.data.sources import alpaca as alpaca_source

    alpaca = write_alpaca(tmp_path / "a.json", [("Say hi.", "", "hi"), ("Say bye.", "", "")])
    monkeypatch.setattr(alpaca_source, "POLICY_REASONS", {"empty output"}, raising=False)
    manifest = prepare(DataConfig(alpaca=[str(alpaca)], strict=True, workers=1), tmp_path / "out")
    assert manifest["rejects"]["by_stage"]["convert"] == {"empty output": 1}


@pytest.mark.parametrize("workers", [1, 2])
def test_corrupt_input_file_is_named_and_nothing_written(tmp_path, workers):
    good = write_alpaca(tmp_path / "good.json", [("Say hi.", "", "hi")])
    bad = tmp_path / "bad.json"
    bad.write_text('[\n    {"instruction": "Say hi.", "input": "", "output": "hi"},\n    {"instruction": "Oops')
    with pytest.raises(LlmftError, match=f"^{bad}, line 3: "):
        prepare(DataConfig(alpaca=[str(good), str(bad)], workers=workers), tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json", "good.json"]   # no output, no temp folder


def test_interrupted_run_leaves_no_final_file(tmp_path, monkeypatch):
    alpaca = write_alpaca(tmp_path / "a.json", [("Say hi.", "", "hi"), ("Say yo.", "", "yo")])
    cfg = DataConfig(alpaca=[str(alpaca)], workers=1)

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash while writing")

    monkeypatch.setattr(prepare_module, "build_manifest", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        prepare(cfg, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    # a complete earlier folder survives a failed rerun untouched
    monkeypatch.undo()
    prepare(cfg, tmp_path / "out")
    before = {name: (tmp_path / "out" / name).read_bytes() for name in OUTPUT_FILES + ("manifest.json", MARKER)}
    monkeypatch.setattr(prepare_module, "build_manifest", crash)
    with pytest.raises(RuntimeError):
        prepare(cfg, tmp_path / "out")
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "out"]


def test_refuses_to_replace_a_folder_that_is_not_prepared_data(tmp_path):
    alpaca = write_alpaca(tmp_path / "a.json", [("Say hi.", "", "hi")])
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(LlmftError, match="llmft did not create it"):
        prepare(DataConfig(alpaca=[str(alpaca)], workers=1), tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_no_inputs_and_missing_path_are_errors(tmp_path):
    with pytest.raises(LlmftError, match="no input files"):
        prepare(DataConfig(), tmp_path / "out")
    with pytest.raises(LlmftError, match=f"{tmp_path / 'nope.json'}: no such file or folder"):
        prepare(DataConfig(alpaca=[str(tmp_path / "nope.json")]), tmp_path / "out")


def test_cli_config_file_with_command_line_overrides(tmp_path, capsys):
    alpaca = write_alpaca(tmp_path / "a.json", [(f"Task {i}.", "", f"answer {i}") for i in range(20)])
    (tmp_path / "data.yaml").write_text(f"alpaca: [{alpaca}]\nseed: 5\ndev_ratio: 0.0\ntest_ratio: 0.1\n")
    out = tmp_path / "out"
    assert main(["data", "prepare", "--out", str(out), "--config", str(tmp_path / "data.yaml"),
                 "--seed", "7", "--test-ratio", "0.5", "--workers", "1"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["seed"], manifest["config"]["test_ratio"], manifest["config"]["dev_ratio"]) == (7, 0.5, 0.0)
    assert manifest["config"]["alpaca"] == [str(alpaca)] and "workers" not in manifest["config"]
    assert manifest["counts"]["splits"] == {"train": 10, "dev": 0, "test": 10}
    assert "converted 20 = kept 20 + rejected 0 + deduplicated 0" in capsys.readouterr().out
    assert main(["data", "prepare", "--out", str(out), "--alpaca", str(tmp_path / "missing.json")]) == 2
    assert "missing.json: no such file or folder" in capsys.readouterr().err


# ---------------------------------------------------------------- the real samples


NI_FILES = ("task1319_country_by_barcode_prefix", "task1509_evalution_antonyms", "task121_zest_text_modification",
            "task1562_zest_text_modification", "task959_e2e_nlg_text_generation_identify")


def sample_config(raw_dir: Path, workers: int, **kw) -> DataConfig:
    return DataConfig(alpaca=[str(raw_dir / "alpaca" / "alpaca_data.json")],
                      self_instruct=[str(raw_dir / "self_instruct" / "seed_tasks.jsonl")],
                      natural_instructions=[str(raw_dir / "natural_instructions" / "tasks" / f"{t}.json")
                                            for t in NI_FILES], workers=workers, **kw)


@pytest.fixture(scope="module")
def sample_runs(raw_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("samples")
    runs = {}
    for name, workers in (("w1", 1), ("w1-again", 1), ("w2", 2)):
        runs[name] = (base / name, prepare(sample_config(raw_dir, workers, split="tasks"), base / name))
    return runs


def test_byte_identical_reruns_any_worker_count(sample_runs):
    first = sample_runs["w1"][0]
    names = OUTPUT_FILES + ("manifest.json", MARKER)
    assert sorted(p.name for p in first.iterdir()) == sorted(names)
    for other in ("w1-again", "w2"):
        for name in names:
            assert (first / name).read_bytes() == (sample_runs[other][0] / name).read_bytes(), (other, name)


def test_manifest_counts_add_up(sample_runs, raw_dir):
    out, manifest = sample_runs["w1"]
    counts, rejects = manifest["counts"], manifest["rejects"]
    converted, kept, rejected, dedup = (counts[k] for k in ("converted", "kept", "rejected", "deduplicated"))
    assert converted == kept + rejected + dedup == len(rows(out / "all.jsonl"))
    assert manifest["identity"] == f"converted {converted} = kept {kept} + rejected {rejected} + deduplicated {dedup}"
    assert kept == sum(counts["splits"].values())
    for split in ("train", "dev", "test"):
        assert counts["splits"][split] == len(rows(out / f"{split}.jsonl")) == manifest["outputs"][f"{split}.jsonl"]["records"]
        assert counts["splits"][split] == sum(t[split] for s in counts["by_task"].values() for t in s.values())
    reject_rows = rows(out / "rejects.jsonl")
    assert rejects["total"] == len(reject_rows)
    by_stage = Counter((r["stage"], r["reason"]) for r in reject_rows)
    assert by_stage == Counter({(s, reason): n for s, reasons in rejects["by_stage"].items() for reason, n in reasons.items()})
    assert sum(rejects["by_stage"]["convert"].values()) == counts["raw_items_rejected"]
    assert all(set(r) == {"stage", "source", "path", "where", "reason", "item"} for r in reject_rows)
    # the sample's known content: 2000 Alpaca items (16 empty + 15 <nooutput> outputs rejected), 125 seed tasks
    assert counts["by_source"]["alpaca"]["converted"] == 1969
    assert rejects["by_stage"]["convert"] == {"<nooutput> output": 15, "empty output": 16}
    assert counts["by_source"]["self-instruct"]["converted"] == 125
    # 5 task files: 2 train, 2 test (127 and 142 instances, 100 official each), 1 excluded (102 instances)
    assert rejects["by_stage"]["split"] == {"excluded task": 102, "test task beyond official eval set": 27 + 42}
    inputs = {Path(i["path"]).name: i for i in manifest["inputs"]}
    alpaca_file = raw_dir / "alpaca" / "alpaca_data.json"
    assert inputs["alpaca_data.json"]["bytes"] == alpaca_file.stat().st_size == 870457
    assert inputs["alpaca_data.json"]["sha256"].startswith("19c1b85efe481925")
    assert [Path(e["path"]).name for e in manifest["extra_inputs"]] == ["test_tasks.txt", "train_tasks.txt"]


def test_tasks_split_on_real_samples(sample_runs, raw_dir):
    out, manifest = sample_runs["w1"]
    ni = manifest["counts"]["by_task"]["natural-instructions"]
    test_tasks = set((raw_dir / "natural_instructions" / "splits" / "default" / "test_tasks.txt").read_text().split())
    tasks_by_split = {split: {r["task"] for r in rows(out / f"{split}.jsonl") if r["source"] == "natural-instructions"}
                      for split in ("train", "dev", "test")}
    assert tasks_by_split["test"] == {"task121_zest_text_modification", "task1562_zest_text_modification"} <= test_tasks
    assert ni["task121_zest_text_modification"] == {"train": 0, "dev": 0, "test": 100}
    assert ni["task1562_zest_text_modification"] == {"train": 0, "dev": 0, "test": 100}
    assert not tasks_by_split["train"] & tasks_by_split["dev"]
    assert not (tasks_by_split["train"] | tasks_by_split["dev"]) & tasks_by_split["test"]
    assert len(tasks_by_split["dev"]) == 1 and len(tasks_by_split["train"]) == 1   # round(2 * 0.05) -> at least 1
    assert "task959_e2e_nlg_text_generation_identify" not in ni                   # excluded
    assert all(r["meta"]["official_eval"] for r in rows(out / "test.jsonl") if r["source"] == "natural-instructions")
