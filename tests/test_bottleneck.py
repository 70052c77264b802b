"""Bottleneck adapters (training/bottleneck.py) on tiny random-weight models with the real SmolLM2 tokenizer: the
identity start, what trains, lean blocks, saving and loading, resume, merge refusal, unsupported architectures and
the configuration keys."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from llmft.config import TrainConfig, check
from llmft.errors import LlmftError
from llmft.training import bottleneck
from llmft.training.bottleneck import (BottleneckSpec, adapters, attach_bottleneck, bottleneck_disabled,
                                       load_bottleneck, save_bottleneck)
from llmft.training.model import load_run_model
from llmft.training.trainer import train
from test_train import data_dir, llama_base, make_cfg, metrics, tiny_cache  # noqa: F401 (fixtures)
from tiny_models import tiny_model

SUPPORTED_ARCHS = ("llama", "qwen2", "mistral", "gemma", "phi3")


def ids(n: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 1000, (2, n), generator=torch.Generator().manual_seed(seed))


def logits(model, input_ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids, use_cache=False).logits


def randomize_up(model, seed: int = 1) -> None:
    """Move every up-projection off zero, so the adapters change the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in adapters(model):
            adapter.up.weight.copy_(torch.randn(adapter.up.weight.shape, generator=generator) * 0.5)
            adapter.up.bias.copy_(torch.randn(adapter.up.bias.shape, generator=generator) * 0.5)


def adapter_cfg(data, out, model, **kw) -> TrainConfig:
    return make_cfg(data, out, model, **{"method": "adapter", "adapter_size": 8, **kw})


# ---------------------------------------------------------------- the module

@pytest.mark.parametrize("arch", SUPPORTED_ARCHS)
@pytest.mark.parametrize("placement", ["houlsby", "pfeiffer"])
def test_a_fresh_adapter_leaves_the_base_logits_unchanged(arch, placement):
    model = tiny_model(arch)
    reference = logits(model, ids())
    attach_bottleneck(model, BottleneckSpec(size=8, placement=placement, activation="gelu"))
    per_layer = len(bottleneck.PLACEMENTS[placement])
    assert len(adapters(model)) == per_layer * model.config.num_hidden_layers
    assert torch.equal(logits(model, ids()), reference)
    randomize_up(model)
    changed = logits(model, ids())
    assert not torch.allclose(changed, reference)
    with bottleneck_disabled(model):
        assert torch.equal(logits(model, ids()), reference)
    assert torch.equal(logits(model, ids()), changed)


def test_houlsby_adapts_attention_and_mlp_outputs_before_the_residual():
    """Reproduce one block by hand: h + f(attn) then + f(mlp), each f = x + up(relu(down(x)))."""
    model = tiny_model("llama")
    attach_bottleneck(model, BottleneckSpec(size=4, placement="houlsby"))
    randomize_up(model)
    layer = model.model.layers[0]
    x = torch.randn(1, 5, 64, generator=torch.Generator().manual_seed(3))
    position_ids = torch.arange(5)[None]
    embeddings = model.model.rotary_emb(x, position_ids)

    def f(adapter, h):
        return h + adapter.up(torch.relu(adapter.down(h)))

    with torch.no_grad():
        attn, _ = type(layer.self_attn).forward(layer.self_attn, layer.input_layernorm(x),
                                                position_embeddings=embeddings, attention_mask=None)
        h = x + f(layer.bottleneck_self_attn, attn)
        expected = h + f(layer.bottleneck_mlp, type(layer.mlp).forward(layer.mlp, layer.post_attention_layernorm(h)))
        got = layer(x, position_embeddings=embeddings, position_ids=position_ids)
    torch.testing.assert_close(got, expected)


def test_gradients_reach_only_the_adapters():
    model = tiny_model("llama").train()
    names = attach_bottleneck(model, BottleneckSpec(size=8, placement="houlsby"))
    assert names and all(".bottleneck_" in n for n in names)
    randomize_up(model)      # with up at zero, down's gradient is zero too
    model(input_ids=ids(), labels=ids(), use_cache=False).loss.backward()
    for name, param in model.named_parameters():
        if ".bottleneck_" in name:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None and not param.requires_grad, name


def test_train_norms_makes_the_norms_trainable_too():
    model = tiny_model("llama")
    names = attach_bottleneck(model, BottleneckSpec(size=8, placement="pfeiffer", train_norms=True))
    assert "model.norm.weight" in names and "model.layers.1.input_layernorm.weight" in names
    assert not any("proj" in n and ".bottleneck_" not in n for n in names)


def test_reduction_factor_sets_the_width():
    from llmft.training.bottleneck import spec_from_config

    cfg = TrainConfig(method="adapter", adapter_reduction=16, data="d", out="o")
    assert spec_from_config(cfg, 576).size == 36
    assert spec_from_config(TrainConfig(method="adapter", adapter_size=12, data="d", out="o"), 576).size == 12


def test_an_architecture_without_self_attn_and_mlp_is_refused_by_name():
    with pytest.raises(LlmftError, match=r"cannot be placed in gpt2 \(GPT2LMHeadModel\).*self_attn.*Llama.*--method"):
        attach_bottleneck(tiny_model("gpt2"), BottleneckSpec(size=8))


def test_lean_blocks_keep_the_adapted_outputs(tmp_path, llama_base):
    """build_model switches to lean RMSNorms (and lean MLPs for LoRA); the adapters' hooks still see the sublayer
    outputs, so the lean model computes what a plain model with the same adapters does."""
    from llmft.training.lean_blocks import lean_decoder_blocks
    from llmft.training.optim import build_model

    cfg = adapter_cfg("unused", tmp_path / "run", llama_base)
    model = build_model(cfg, torch.device("cpu"), bf16=False).eval()
    plain = tiny_model("llama")
    plain_names = attach_bottleneck(plain, BottleneckSpec(size=8))
    randomize_up(model)
    plain.load_state_dict(model.state_dict())
    assert lean_decoder_blocks(tiny_model("llama"))["rmsnorm"] > 0       # the switch applies to this architecture
    assert type(model.model.norm).forward is not model.model.norm.forward.__func__   # and build_model made it
    torch.testing.assert_close(logits(model, ids()), logits(plain, ids()))
    model.train()
    model(input_ids=ids(), labels=ids(), use_cache=False).loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads == set(plain_names)


# ---------------------------------------------------------------- saving, loading, training

def test_save_and_load_give_the_same_logits(tmp_path):
    model = tiny_model("qwen2")
    spec = BottleneckSpec(size=8, placement="houlsby", activation="silu", train_norms=True)
    names = attach_bottleneck(model, spec)
    randomize_up(model)
    with torch.no_grad():
        model.model.norm.weight.mul_(1.5)
    save_bottleneck(tmp_path, {n: p for n, p in model.named_parameters() if n in names}, spec)
    assert json.loads((tmp_path / bottleneck.CONFIG_FILE).read_text())["placement"] == "houlsby"
    loaded = load_bottleneck(tiny_model("qwen2"), tmp_path)
    assert torch.equal(logits(loaded, ids()), logits(model, ids()))


def test_a_damaged_adapter_folder_is_refused_with_its_file(tmp_path):
    model = tiny_model("llama")
    spec = BottleneckSpec(size=8)
    names = attach_bottleneck(model, spec)
    save_bottleneck(tmp_path, {n: p for n, p in model.named_parameters() if n in names[:-1]}, spec)
    with pytest.raises(LlmftError, match=r"bottleneck.safetensors: does not match"):
        load_bottleneck(tiny_model("llama"), tmp_path)
    (tmp_path / bottleneck.CONFIG_FILE).write_text(json.dumps({"format": "other"}))
    with pytest.raises(LlmftError, match=r"bottleneck_config.json: not a bottleneck adapter config"):
        load_bottleneck(tiny_model("llama"), tmp_path)
    save_bottleneck(tmp_path, {}, BottleneckSpec(size=8, hidden_size=32))
    with pytest.raises(LlmftError, match="hidden size 32 do not fit"):
        load_bottleneck(tiny_model("llama"), tmp_path)


def test_training_lowers_the_loss_saves_the_adapters_and_eval_loads_them(tmp_path, data_dir, llama_base):
    from llmft.config import EvalConfig
    from llmft.evaluation.evaluate import evaluate_run

    run = tmp_path / "run"
    summary = train(adapter_cfg(data_dir, run, llama_base, max_steps=6, lr=1e-2, adapter_placement="pfeiffer"))
    losses = [m["loss"] for m in metrics(run) if "loss" in m]
    assert summary["steps"] == 6 and losses[-1] < losses[0]
    saved = load_file(run / "adapter" / bottleneck.WEIGHTS_FILE)
    assert set(saved) == {f"model.layers.{i}.bottleneck_mlp.{p}.{w}" for i in range(2) for p in ("down", "up")
                          for w in ("weight", "bias")}
    assert all(saved[f"model.layers.{i}.bottleneck_mlp.up.weight"].abs().sum() > 0 for i in range(2))
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["trainable_parameters"] == sum(t.numel() for t in saved.values())

    model, _ = load_run_model(run)
    base, _ = load_run_model(run, adapter=False)
    assert not torch.allclose(logits(model, ids()), logits(base, ids()))
    result = evaluate_run(run, EvalConfig(split="dev", limit=2, max_new_tokens=3, batch_size=2))
    assert set(result) == {"base", "tuned"}
    assert result["base"]["loss"] != result["tuned"]["loss"]


def test_bf16_autocast_trains_fp32_adapters_on_a_bf16_base(tmp_path, data_dir, llama_base):
    from llmft.training.optim import build_model

    model = build_model(adapter_cfg(data_dir, tmp_path / "x", llama_base), torch.device("cpu"), bf16=True)
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    summary = train(adapter_cfg(data_dir, tmp_path / "run", llama_base, bf16="true", max_steps=2))
    assert summary["bf16"] and summary["final_loss"] == summary["final_loss"]    # finite, not NaN


def test_stop_and_resume_equals_one_uninterrupted_run(tmp_path, data_dir, llama_base):
    kw = dict(max_steps=5, save_every=2, eval_every=2, batch_tokens=128, grad_accum=2, adapter_train_norms=True)
    whole, parted = tmp_path / "whole", tmp_path / "parted"
    train(adapter_cfg(data_dir, whole, llama_base, **kw))
    assert train(adapter_cfg(data_dir, parted, llama_base, **kw), stop_after=3) is None
    shutil.rmtree(parted / "checkpoints" / "step-3")       # resume from step 2, redoing step 3
    summary = train(adapter_cfg(data_dir, parted, llama_base, resume=True, **kw))
    assert summary["resumed_from_step"] == 2 and summary["steps"] == 5
    for a, b in zip(metrics(whole), metrics(parted), strict=True):
        assert {k: v for k, v in a.items() if k != "elapsed_s"} == {k: v for k, v in b.items() if k != "elapsed_s"}
    a = load_file(whole / "adapter" / bottleneck.WEIGHTS_FILE)
    b = load_file(parted / "adapter" / bottleneck.WEIGHTS_FILE)
    assert a.keys() == b.keys() and "model.norm.weight" in a
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_merge_refuses_and_says_what_to_use_instead(tmp_path, data_dir, llama_base):
    from llmft.evaluation.merge import merge_run

    run = tmp_path / "run"
    train(adapter_cfg(data_dir, run, llama_base, max_steps=1))
    with pytest.raises(LlmftError, match=r"cannot be merged.*llmft generate.*--method lora"):
        merge_run(run, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


# ---------------------------------------------------------------- configuration

def test_adapter_keys_are_validated():
    cfg = TrainConfig(method="adapter", adapter_size=0, adapter_reduction=-1, adapter_placement="middle",
                      adapter_activation="softmax", qlora=True, data="d", out="o")
    with pytest.raises(LlmftError) as error:
        check(cfg)
    for key in ("adapter_size", "adapter_reduction", "adapter_placement", "adapter_activation", "qlora"):
        assert key in str(error.value)
    assert set(bottleneck.ACTIVATIONS) == set(__import__("llmft.config").config.ADAPTER_ACTIVATIONS)
    assert set(bottleneck.PLACEMENTS) == set(__import__("llmft.config").config.ADAPTER_PLACEMENTS)


def test_adapter_flags_reach_the_config():
    import argparse

    from llmft.cli.flags import add_config_flags, flag_values

    parser = argparse.ArgumentParser()
    add_config_flags(parser, TrainConfig)
    args = parser.parse_args(["--method", "adapter", "--adapter-size", "16", "--adapter-placement", "pfeiffer",
                              "--adapter-activation", "gelu", "--adapter-train-norms"])
    assert flag_values(args, TrainConfig) == {"method": "adapter", "adapter_size": 16, "adapter_placement": "pfeiffer",
                                              "adapter_activation": "gelu", "adapter_train_norms": True}
    with pytest.raises(SystemExit):
        parser.parse_args(["--adapter-size", "16", "--adapter-reduction", "8"])


@pytest.mark.slow
def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path, data_dir, llama_base):
    """DDP (torchrun, gloo): the adapters' gradients are averaged like LoRA's, so 2 x grad_accum 2 = 1 x 4."""
    from test_ddp import run_two_processes

    kw = dict(max_steps=3, batch_tokens=128, lr=1e-2, eval_every=2)
    one, two = tmp_path / "one", tmp_path / "two"
    train(adapter_cfg(data_dir, one, llama_base, grad_accum=4, **kw))
    run_two_processes(adapter_cfg(data_dir, two, llama_base, grad_accum=2, **kw), tmp_path / "cache")
    for a, b in zip(metrics(one), metrics(two), strict=True):
        for key in ("loss", "dev_loss", "grad_norm"):
            if key in a:
                assert abs(a[key] - b[key]) < 2e-5, (key, a, b)
        assert a.get("trainable_tokens") == b.get("trainable_tokens")
    a = load_file(one / "adapter" / bottleneck.WEIGHTS_FILE)
    b = load_file(two / "adapter" / bottleneck.WEIGHTS_FILE)
    assert a.keys() == b.keys() and len(a) == 2 * 2 * 4      # down/up weight and bias, 2 adapters, 2 layers
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)
    assert json.loads((two / "manifest.json").read_text())["engine"] == "DistributedDataParallel"


def test_gradient_checkpointing_gives_the_same_adapter_gradients(tmp_path, llama_base):
    """The recomputed forward runs the sublayer hooks again, so the adapters' gradients are unchanged."""
    from llmft.training.optim import build_model

    grads = []
    for checkpointing in (False, True):
        model = build_model(adapter_cfg("unused", tmp_path / "run", llama_base, grad_checkpointing=checkpointing),
                            torch.device("cpu"), bf16=False)
        assert model.is_activation_checkpointing == checkpointing
        randomize_up(model)
        model.train()
        model(input_ids=ids(), labels=ids(), use_cache=False).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)
