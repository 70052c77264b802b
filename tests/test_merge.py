"""`merge_run` / `llmft merge`: the merged folder is a plain HF model equal to base + adapter."""
import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from llmft.cli import main
from llmft.errors import LlmftError
from llmft.evaluation.generate import GenerationOptions, generate_tokens
from llmft.evaluation.merge import merge_run
from llmft.training.model import load_run_model
from run_factory import make_run

IDS = [[1, 504, 3458, 282, 4649, 314, 2, 9, 77, 4000]]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, smol_tokenizer):
    return make_run(tmp_path_factory.mktemp("merge"), smol_tokenizer)


@pytest.fixture(scope="module")
def merged_dir(run_dir, tmp_path_factory):
    return merge_run(run_dir, tmp_path_factory.mktemp("out") / "merged")


def _state_keys(folder):
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return list(f.keys()), {k: f.get_slice(k).get_dtype() for k in f.keys()}


def test_merged_logits_equal_base_plus_adapter(run_dir, merged_dir):
    from transformers import AutoModelForCausalLM

    tuned, _ = load_run_model(run_dir, dtype=torch.float32)
    base, _ = load_run_model(run_dir, adapter=False, dtype=torch.float32)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    ids = torch.tensor(IDS)
    with torch.no_grad():
        expected, merged_logits, base_logits = tuned(ids).logits, merged(ids).logits, base(ids).logits
    assert torch.allclose(merged_logits, expected, atol=1e-5, rtol=1e-5)
    assert (merged_logits - base_logits).abs().max() > 1e-2      # the adapter really changed the model


def test_merged_folder_is_plain_safetensors_with_tokenizer(merged_dir):
    names = sorted(p.name for p in merged_dir.iterdir())
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json"} <= set(names)
    assert not any(n.startswith("adapter") or n.endswith((".bin", ".pt")) for n in names)
    keys, dtypes = _state_keys(merged_dir)
    assert not [k for k in keys if "lora_" in k or "base_layer" in k]
    assert "model.layers.0.self_attn.q_proj.weight" in keys
    assert set(dtypes.values()) == {"F32"}
    generation = json.loads((merged_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2 and generation["pad_token_id"] == 2
    assert [p.name for p in merged_dir.parent.iterdir()] == ["merged"]   # atomic: no temporary folder left


def test_merged_loads_without_peft(merged_dir, run_dir):
    script = (
        "import sys; sys.modules['peft'] = None\n"
        "import torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(merged_dir)!r}).eval()\n"
        f"t = AutoTokenizer.from_pretrained({str(merged_dir)!r})\n"
        "assert t.eos_token == '<|im_end|>'\n"
        "with torch.no_grad():\n"
        f"    print(m(torch.tensor({IDS!r})).logits[0].argmax(-1).tolist())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    tuned, _ = load_run_model(run_dir, dtype=torch.float32)
    with torch.no_grad():
        expected = tuned(torch.tensor(IDS)).logits[0].argmax(-1).tolist()
    assert json.loads(out.stdout.strip().splitlines()[-1]) == expected


def test_greedy_generation_of_merged_equals_adapter_model(run_dir, merged_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tuned, tokenizer = load_run_model(run_dir, dtype=torch.float32)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    merged_tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    prompts = ["Give three tips for staying healthy.", "What is the capital of France?"]
    options = GenerationOptions(max_new_tokens=8, batch_size=2)
    assert generate_tokens(merged, merged_tokenizer, prompts, options) == generate_tokens(tuned, tokenizer, prompts,
                                                                                          options)


def test_cli_merge_bfloat16_and_errors(run_dir, tmp_path, capsys):
    out = tmp_path / "bf16"
    assert main(["merge", str(run_dir), "--out", str(out), "--dtype", "bfloat16"]) == 0
    assert set(_state_keys(out)[1].values()) == {"BF16"}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert main(["merge", str(run_dir), "--out", str(out)]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    with pytest.raises(LlmftError, match="dtype must be one of float32, bfloat16, float16"):
        merge_run(run_dir, tmp_path / "x", "int8")
    assert main(["merge", str(tmp_path / "missing"), "--out", str(tmp_path / "y")]) == 2
    assert "no such run folder" in capsys.readouterr().err
