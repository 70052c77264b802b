"""model.py: name resolution, the embedded GGUF conversion, safetensors loading, adapters."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llmft.training import model as llmft_model
from llmft.config import TrainConfig
from llmft.errors import LlmftError
from tiny_models import CONFIGS, save_tiny_model


def unfuse_lora_layers(model) -> None:
    from peft.tuners.lora.layer import Linear

    from llmft.training.fused_lora import FusedLoraLinear

    for module in model.modules():
        if type(module) is FusedLoraLinear:
            module.__class__ = Linear


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, smol_tokenizer) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "llama", smol_tokenizer, "llama")


def lora_cfg(**kw) -> TrainConfig:
    return TrainConfig(data="d", out="o", lora_r=4, lora_alpha=8, **kw)


# ---------------------------------------------------------------- resolve_model

def test_resolve_local_folder_is_returned_as_is(tiny_folder):
    assert llmft_model.resolve_model(str(tiny_folder)) == str(tiny_folder.resolve())


def test_resolve_hub_id_passes_through():
    assert llmft_model.resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_resolve_missing_local_path_is_a_clear_error(tmp_path):
    with pytest.raises(LlmftError, match="no such folder"):
        llmft_model.resolve_model(str(tmp_path / "nope"))


def test_resolve_folder_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(LlmftError, match="no config.json"):
        llmft_model.resolve_model(str(tmp_path))


def test_embedded_model_is_converted_once_then_reused(tmp_path, monkeypatch):
    """The conversion itself is stubbed here (the real one is the slow test below): only the caching is tested."""
    monkeypatch.setenv("LLMFT_CACHE", str(tmp_path))
    calls = []

    def fake_convert(gguf, out):
        calls.append(gguf.name)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(llmft_model, "convert_gguf", fake_convert)
    first = llmft_model.resolve_model("smollm2-135m")
    second = llmft_model.resolve_model("smollm2-135m")
    assert first == second == str(tmp_path / "models" / "smollm2-135m-instruct")
    assert calls == ["SmolLM2-135M-Instruct.Q4_1.gguf"]
    source = json.loads((Path(first) / "llmft_source.json").read_text())
    assert source["gguf"] == "SmolLM2-135M-Instruct.Q4_1.gguf" and source["bytes"] > 90_000_000
    # A cache built from a different GGUF (another package version) is rebuilt.
    (Path(first) / "llmft_source.json").write_text(json.dumps({**source, "bytes": 1}))
    llmft_model.resolve_model("smollm2-135m")
    assert len(calls) == 2
    assert not list((tmp_path / "models").glob(".smollm2-135m-instruct.*.tmp"))


@pytest.mark.slow
def test_gguf_conversion_matches_the_gguf_model(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from conftest import smollm2_gguf

    monkeypatch.setenv("LLMFT_CACHE", str(tmp_path))
    folder = Path(llmft_model.resolve_model("smollm2-135m"))
    assert sorted(p.name for p in folder.iterdir() if p.suffix in (".json", ".safetensors")) == [
        "config.json", "generation_config.json", "llmft_source.json", "model.safetensors",
        "tokenizer.json", "tokenizer_config.json"]
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    # the same attention kernel as the GGUF model below, so the comparison can be exact
    converted = llmft_model.load_model("smollm2-135m", attn_implementation="sdpa").eval()
    assert getattr(converted, "hf_quantizer", None) is None
    tokenizer = llmft_model.load_tokenizer("smollm2-135m")
    assert tokenizer.eos_token == "<|im_end|>" and converted.generation_config.eos_token_id == 2

    gguf_folder, gguf_name = smollm2_gguf()
    original = AutoModelForCausalLM.from_pretrained(gguf_folder, gguf_file=gguf_name, dtype=torch.float32).eval()
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        a, b = converted(ids).logits, original(ids).logits
    assert torch.equal(a, b)
    assert tokenizer.decode(a[0, -1].argmax()).strip() == tokenizer.decode(b[0, -1].argmax()).strip()


# ---------------------------------------------------------------- loading and adapters

def test_load_model_and_tokenizer_from_a_local_folder(tiny_folder, smol_tokenizer):
    model = llmft_model.load_model(str(tiny_folder), dtype="bf16")
    assert model.dtype == torch.bfloat16 and model.config.model_type == "llama"
    assert model.config._attn_implementation == "llmft_varlen"   # a verified architecture, on CPU
    tokenizer = llmft_model.load_tokenizer(str(tiny_folder))
    assert tokenizer.eos_token == smol_tokenizer.eos_token and tokenizer.pad_token is not None


def test_attention_choice_auto_explicit_and_fallback(tiny_folder, tmp_path, smol_tokenizer):
    assert llmft_model.load_model(str(tiny_folder), attn_implementation="eager").config._attn_implementation == "eager"
    gpt2 = save_tiny_model(tmp_path / "gpt2", smol_tokenizer, "gpt2")
    assert llmft_model.load_model(str(gpt2)).config._attn_implementation == "sdpa"  # not verified with varlen
    # the implementation name is not written into a saved model's config, so other tools can load it
    llmft_model.load_model(str(tiny_folder)).save_pretrained(tmp_path / "saved")
    assert "llmft_varlen" not in (tmp_path / "saved" / "config.json").read_text()


def test_load_model_refuses_pickle_weights(tmp_path, smol_tokenizer):
    folder = save_tiny_model(tmp_path / "m", smol_tokenizer, "llama")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(LlmftError, match="safetensors"):
        llmft_model.load_model(str(folder))


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_all_linear_lora_skips_the_output_head(arch, tmp_path, smol_tokenizer):
    folder = save_tiny_model(tmp_path / arch, smol_tokenizer, arch)
    model = llmft_model.attach_adapter(llmft_model.load_model(str(folder)), lora_cfg())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert not any("lm_head" in n for n in trainable)
    layer0 = {n.split(".layers.0.")[-1].split(".h.0.")[-1].split(".lora_")[0]
              for n in trainable if ".layers.0." in n or ".h.0." in n}
    expected = {"gpt2": {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"},
                "phi3": {"self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"}}
    assert layer0 == expected.get(arch, {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                         "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"})


def test_lora_options_reach_peft(tiny_folder):
    cfg = lora_cfg(lora_targets="q_proj,v_proj", use_rslora=True, use_dora=True, lora_dropout=0.1)
    model = llmft_model.attach_adapter(llmft_model.load_model(str(tiny_folder)), cfg)
    peft_cfg = model.peft_config["default"]
    assert peft_cfg.target_modules == {"q_proj", "v_proj"}
    assert (peft_cfg.r, peft_cfg.lora_alpha, peft_cfg.lora_dropout) == (4, 8, 0.1)
    assert peft_cfg.use_rslora and peft_cfg.use_dora
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(names) == 2 * 2 * 3  # 2 layers x (q, v) x (A, B, DoRA magnitude)


def test_cpu_dropout_keeps_p_and_the_mean_and_is_off_in_eval():
    dropout = llmft_model.CpuDropout(0.05).train()
    assert dropout.threshold + 32768 == 62259 and dropout.scale == 65536 / 62259
    x = torch.ones(1000, 1000)
    torch.manual_seed(0)
    y = dropout(x)
    zero_fraction = (y == 0).float().mean().item()
    assert abs(zero_fraction - 3277 / 65536) < 0.001           # 1e6 draws: standard error 2.2e-4
    assert y.unique().tolist() == [0.0, torch.tensor(65536 / 62259).item()]
    assert abs(y.mean().item() - 1.0) < 0.003
    torch.manual_seed(0)
    assert torch.equal(dropout(x), y)                          # the global generator decides: resumable
    assert dropout(x[:3, :5]).shape == (3, 5)                  # sizes that are not a multiple of 4
    assert torch.equal(dropout.eval()(x), x)


def test_lora_dropout_on_cpu_is_cpu_dropout_with_the_same_p(tiny_folder):
    model = llmft_model.attach_adapter(llmft_model.load_model(str(tiny_folder)), lora_cfg(lora_dropout=0.1))
    dropouts = [d for m in model.modules() if hasattr(m, "lora_dropout") for d in m.lora_dropout.values()]
    assert len(dropouts) == 2 * 7 and all(type(d) is llmft_model.CpuDropout and d.p == 0.1 for d in dropouts)
    assert model.peft_config["default"].lora_dropout == 0.1
    plain = llmft_model.attach_adapter(llmft_model.load_model(str(tiny_folder)), lora_cfg(lora_dropout=0.0))
    assert all(type(d) is torch.nn.Identity for m in plain.modules() if hasattr(m, "lora_dropout")
               for d in m.lora_dropout.values())


def test_lora_branch_runs_in_bf16_under_autocast_with_fp32_masters(tiny_folder):
    """Same loss and gradients as PEFT's fp32 cast within bf16 rounding; outside autocast PEFT's cast is kept."""
    from peft.helpers import disable_input_dtype_casting

    torch.manual_seed(0)
    model = llmft_model.attach_adapter(llmft_model.load_model(str(tiny_folder), dtype="bf16"),
                                       lora_cfg(lora_dropout=0.0))
    unfuse_lora_layers(model)     # PEFT's forward, as layers the fused path does not take (e.g. dropout > 0) run
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)    # a trained adapter: the branch contributes
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if p.requires_grad)
    ids = torch.randint(0, 1000, (1, 24))
    seen = []
    hook = model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].register_forward_pre_hook(
        lambda m, args: seen.append(args[0].dtype))

    def loss_and_grads(autocast: bool):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        return loss.item(), {n: p.grad.float().clone() for n, p in model.named_parameters() if p.requires_grad}

    fast = loss_and_grads(True)
    assert seen[-1] == torch.bfloat16
    outside = loss_and_grads(False)                           # bf16 base, fp32 adapter, no autocast: no dtype error
    assert seen[-1] == torch.float32
    for layer in model.modules():
        if hasattr(layer, "lora_A"):
            layer._forward_pre_hooks.clear()
    with disable_input_dtype_casting(model, active=False):
        peft_default = loss_and_grads(True)
    assert seen[-1] == torch.float32
    hook.remove()
    assert fast[0] == pytest.approx(peft_default[0], rel=2e-3) and outside[0] == pytest.approx(fast[0], rel=2e-2)
    for name, grad in peft_default[1].items():
        assert torch.nn.functional.cosine_similarity(grad.flatten(), fast[1][name].flatten(), dim=0) > 0.99, name


def test_unknown_lora_target_is_a_clear_error(tiny_folder):
    with pytest.raises(LlmftError, match="lora_targets 'nope_proj'"):
        llmft_model.attach_adapter(llmft_model.load_model(str(tiny_folder)), lora_cfg(lora_targets="nope_proj"))


def test_full_fine_tuning_trains_every_weight(tiny_folder):
    model = llmft_model.load_model(str(tiny_folder))
    model.requires_grad_(False)
    model = llmft_model.attach_adapter(model, lora_cfg(method="full"))
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error message")
def test_qlora_without_cuda_is_a_clear_error(tiny_folder):
    with pytest.raises(LlmftError, match="qlora needs a CUDA GPU and bitsandbytes: CUDA is not available"):
        llmft_model.load_model(str(tiny_folder), load_in_4bit=True)
