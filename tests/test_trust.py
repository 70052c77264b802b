"""A run folder someone hands you must not run its code (issue 14, item 2) nor load pickles (item 9): remote code
only with --trust-remote-code on the command itself, whatever template.json says; adapters from safetensors only."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llmft.cli import main
from llmft.errors import LlmftError
from llmft.training.model import load_run_model
from run_factory import make_run

EVIL_CODE = """import pathlib
pathlib.Path({sentinel!r}).write_text("the run folder's code ran")
from transformers import LlamaConfig, LlamaForCausalLM


class EvilConfig(LlamaConfig):
    model_type = "evil_llama"


class EvilForCausalLM(LlamaForCausalLM):
    config_class = EvilConfig
"""


@pytest.fixture
def handed_run(tmp_path, smol_tokenizer, monkeypatch) -> tuple[Path, Path]:
    """A run whose template.json says trust_remote_code: true and whose base model folder carries its own code
    (auto_map) that leaves a sentinel file when imported."""
    import transformers.dynamic_module_utils as dynamic

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "hf_modules"))   # not the user's cache
    run = make_run(tmp_path / "handed", smol_tokenizer)
    info = json.loads((run / "template.json").read_text())
    base = Path(info["model"])
    sentinel = tmp_path / "code-ran.txt"
    (base / "evil.py").write_text(EVIL_CODE.format(sentinel=str(sentinel)))
    config = json.loads((base / "config.json").read_text())
    config.update(model_type="evil_llama", architectures=["EvilForCausalLM"],
                  auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilForCausalLM"})
    (base / "config.json").write_text(json.dumps(config))
    (run / "template.json").write_text(json.dumps({**info, "trust_remote_code": True}))
    return run, sentinel


@pytest.mark.parametrize("argv", [
    ["generate", "{run}", "--instruction", "Say hi.", "--max-new-tokens", "2"],
    ["eval", "{run}", "--limit", "1", "--max-new-tokens", "2", "--no-base"],
    ["merge", "{run}", "--out", "{tmp}/merged"],
])
def test_a_handed_run_folder_does_not_run_its_code_without_the_flag(handed_run, tmp_path, capsys, argv):
    run, sentinel = handed_run
    argv = [a.format(run=run, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--trust-remote-code" in err and "Traceback" not in err
    assert not sentinel.exists()
    assert not (tmp_path / "merged").exists() and not (run / "eval.json").exists()


def test_chat_and_the_library_refuse_too(handed_run, monkeypatch, capsys):
    run, sentinel = handed_run
    monkeypatch.setattr("sys.stdin", open("/dev/null"))
    assert main(["chat", str(run)]) == 2
    with pytest.raises(LlmftError, match="--trust-remote-code"):
        load_run_model(run)
    assert not sentinel.exists()


def test_the_flag_does_run_it(handed_run):
    """The fixture's code really is remote code: with the user's --trust-remote-code it is imported."""
    run, sentinel = handed_run
    from transformers import AutoConfig

    AutoConfig.from_pretrained(json.loads((run / "template.json").read_text())["model"], trust_remote_code=True)
    assert sentinel.exists()


def test_a_pickled_adapter_is_refused(tmp_path, smol_tokenizer):
    from safetensors.torch import load_file

    run = make_run(tmp_path / "pickled", smol_tokenizer)
    adapter = run / "adapter"
    torch.save(load_file(str(adapter / "adapter_model.safetensors")), adapter / "adapter_model.bin")
    (adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(LlmftError, match="adapter_model.bin.*safetensors only"):
        load_run_model(run)
    assert main(["generate", str(run), "--instruction", "Say hi.", "--max-new-tokens", "2"]) == 2
