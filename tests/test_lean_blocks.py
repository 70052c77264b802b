"""lean_blocks.py: the same values and gradients as transformers' MLP and RMSNorm, fewer tensors kept."""
from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from llmft.training.fused_lora import fuse_lora_layers
from llmft.training.lean_blocks import lean_decoder_blocks, rms_norm
from tiny_models import tiny_model


def lora_llama(arch: str = "llama"):
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(tiny_model(arch).train(), config)
    fuse_lora_layers(model)
    return model


def saved_bytes(fn) -> int:
    """Bytes of the distinct non-parameter tensors autograd keeps for the backward of `fn()`."""
    storages = {}

    def pack(tensor):
        if not isinstance(tensor, torch.nn.Parameter):
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(storages.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_equals_transformers_bitwise_and_gradients_match(dtype):
    torch.manual_seed(0)
    norm = LlamaRMSNorm(48, eps=1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.2)
    x = torch.randn(2, 7, 48, dtype=dtype)
    grad = torch.randn(2, 7, 48, dtype=dtype)
    theirs_x, ours_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    theirs = norm(theirs_x)
    their_grads = torch.autograd.grad(theirs, (theirs_x, norm.weight), grad)
    ours = rms_norm(ours_x, norm.weight, norm.variance_epsilon)
    our_grads = torch.autograd.grad(ours, (ours_x, norm.weight), grad)
    assert torch.equal(ours, theirs)
    tolerance = 1e-5 if dtype == torch.float32 else 2 ** -7     # bf16: about one ulp of O(1) values
    for mine, reference in zip(our_grads, their_grads):
        assert mine.dtype == reference.dtype == dtype
        torch.testing.assert_close(mine.float(), reference.float(), rtol=tolerance,
                                   atol=tolerance * float(reference.abs().max()))


def test_switches_swiglu_mlps_and_llama_style_norms_only():
    assert lean_decoder_blocks(lora_llama("llama")) == {"mlp": 2, "rmsnorm": 2 * 2 + 1}
    assert lean_decoder_blocks(lora_llama("phi3")) == {"mlp": 0, "rmsnorm": 2 * 2 + 1}   # fused gate_up_proj
    assert lean_decoder_blocks(lora_llama("gemma")) == {"mlp": 0, "rmsnorm": 0}          # gelu; 1 + weight norm


@pytest.mark.parametrize("autocast", [False, True])
def test_model_loss_and_every_gradient_match_and_the_mlp_keeps_two_fewer_tensors(autocast):
    reference = lora_llama()
    lean = copy.deepcopy(reference)
    assert lean_decoder_blocks(lean)["mlp"] == 2
    ids = torch.randint(0, 1000, (1, 19))

    def loss_and_grads(model):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    (want_loss, want), (got_loss, got) = loss_and_grads(reference), loss_and_grads(lean)
    assert sorted(got) == sorted(want) and len(want) == 2 * 7 * 2
    if not autocast:
        torch.testing.assert_close(got_loss, want_loss, rtol=1e-6, atol=1e-6)
        for name, grad in want.items():
            torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-5 * float(grad.abs().max()))
    else:   # bf16 rounding points differ (the product is formed in another order)
        torch.testing.assert_close(got_loss, want_loss, rtol=1e-2, atol=1e-2)
        for name, grad in want.items():
            cosine = torch.nn.functional.cosine_similarity(grad.flatten(), got[name].flatten(), dim=0)
            assert cosine > 0.99, name

    mlp, lean_mlp = reference.base_model.model.model.layers[0].mlp, lean.base_model.model.model.layers[0].mlp
    x = torch.randn(1, 19, 64)
    intermediate = mlp.gate_proj.base_layer.out_features
    # transformers keeps gate, silu(gate), up and their product; the lean MLP keeps gate and up
    assert saved_bytes(lambda: mlp(x)) - saved_bytes(lambda: lean_mlp(x)) == 2 * 19 * intermediate * 4


def test_norm_keeps_its_input_and_inverse_norms_not_an_fp32_copy():
    norm = LlamaRMSNorm(64).to(torch.bfloat16)
    x = torch.randn(1, 10, 64, dtype=torch.bfloat16, requires_grad=True)
    assert saved_bytes(lambda: norm(x)) == 10 * 64 * 4 + 10 * 4 + 10 * 64 * 2   # fp32 copy, rsqrt, bf16 product
    assert saved_bytes(lambda: rms_norm(x, norm.weight, 1e-6)) == 10 * 64 * 2 + 10 * 4   # x, inverse norms


def test_eval_and_disabled_adapters_take_the_modules_own_forward():
    model = lora_llama()
    lean_decoder_blocks(model)
    ids = torch.randint(0, 1000, (1, 9))
    with torch.no_grad(), model.disable_adapter():
        base = model(input_ids=ids).logits
    plain = tiny_model("llama")
    with torch.no_grad():
        torch.testing.assert_close(base, plain(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
