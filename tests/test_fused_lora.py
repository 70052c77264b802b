"""fused_lora.py: one autograd node per LoRA linear, the same values and gradients as PEFT's forward."""
from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora.layer import Linear as PeftLoraLinear

from llmft.training import model as llmft_model
from llmft.config import TrainConfig
from llmft.training.fused_lora import FusedLoraLinear, _LoraLinearFn, fuse_lora_layers
from tiny_models import save_tiny_model


class TwoLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up = torch.nn.Linear(24, 40)                # with bias
        self.down = torch.nn.Linear(40, 24, bias=False)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


def peft_pair(dropout: float = 0.0, **lora):
    """(PEFT's model, the same weights with fused layers); adapters initialised non-zero so the branch counts."""
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=12, lora_dropout=dropout, target_modules=["up", "down"],
                        init_lora_weights=False, **lora)
    reference = get_peft_model(TwoLayers(), config)
    fused = copy.deepcopy(reference)
    return reference, fused, fuse_lora_layers(fused)


@pytest.fixture
def fused_calls(monkeypatch):
    calls = []
    forward = _LoraLinearFn.forward

    def counting(ctx, *args):
        calls.append(args[0].shape)
        return forward(ctx, *args)

    monkeypatch.setattr(_LoraLinearFn, "forward", staticmethod(counting))
    return calls


def run(model, x, autocast: bool = False):
    model.zero_grad()
    x = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = model(x)
    (y.float() ** 2).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return y.detach(), x.grad, grads


def test_fp32_values_and_every_gradient_match_peft(fused_calls):
    reference, fused, count = peft_pair()
    assert count == 2 and all(type(m) is FusedLoraLinear for m in (fused.base_model.model.up,
                                                                      fused.base_model.model.down))
    x = torch.randn(3, 5, 24)
    want, got = run(reference, x), run(fused, x)
    assert len(fused_calls) == 2 and fused_calls[0] == (3, 5, 24)
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-5)   # fp32 sums in another order
    assert sorted(got[2]) == sorted(want[2]) and len(want[2]) == 4       # lora_A, lora_B of both layers
    for name, grad in want[2].items():
        assert got[2][name].dtype == torch.float32
        torch.testing.assert_close(got[2][name], grad, rtol=1e-4, atol=1e-5 * float(grad.abs().max()))


def test_bf16_autocast_matches_peft_within_bf16_rounding_and_masters_stay_fp32(fused_calls):
    reference, fused, _ = peft_pair()
    x = torch.randn(2, 7, 24)
    want, got = run(reference, x, autocast=True), run(fused, x, autocast=True)
    assert len(fused_calls) == 2 and got[0].dtype == want[0].dtype == torch.bfloat16
    # bf16 keeps 8 bits: the output and input gradient agree to a few ulps; the scaling is applied to the rank-4
    # activations instead of the output, so the rounding points differ slightly
    for fused_value, peft_value in ((got[0], want[0]), (got[1], want[1])):
        error = (fused_value.float() - peft_value.float()).abs().max() / peft_value.float().abs().max()
        assert error < 2 ** -6, float(error)
    for name, grad in want[2].items():
        assert got[2][name].dtype == torch.float32
        cosine = torch.nn.functional.cosine_similarity(grad.flatten(), got[2][name].flatten(), dim=0)
        assert cosine > 0.999, name


def test_gradients_only_where_asked_and_frozen_base_stays_without_grad():
    reference, fused, _ = peft_pair()
    x = torch.randn(4, 24)                                    # 2-D input, no requires_grad
    fused(x).sum().backward()
    up = fused.base_model.model.up
    assert up.base_layer.weight.grad is None and up.base_layer.bias.grad is None
    assert up.lora_A["default"].weight.grad.abs().sum() > 0 and up.lora_B["default"].weight.grad.abs().sum() > 0


def test_paths_peft_keeps_disabled_merged_dropout_and_no_grad(fused_calls):
    reference, fused, _ = peft_pair()
    x = torch.randn(2, 24)
    with fused.disable_adapter():
        base = fused(x)
    assert not fused_calls
    with reference.disable_adapter():
        torch.testing.assert_close(base, reference(x))
    with torch.no_grad():
        torch.testing.assert_close(fused(x), reference(x), rtol=1e-6, atol=1e-6)
    assert len(fused_calls) == 2
    merged = copy.deepcopy(fused)
    merged.merge_adapter()
    torch.testing.assert_close(merged(x), reference(x), rtol=1e-5, atol=1e-5)
    assert len(fused_calls) == 2                              # a merged layer is just its base layer

    _, with_dropout, _ = peft_pair(dropout=0.5)
    with_dropout.train()(x)
    assert len(fused_calls) == 2                              # dropout in training: PEFT's forward
    with_dropout.eval()(x)
    assert len(fused_calls) == 4                              # no dropout in eval: fused


def test_attach_adapter_fuses_every_plain_lora_layer_and_saves_like_peft(tmp_path, smol_tokenizer):
    folder = save_tiny_model(tmp_path / "llama", smol_tokenizer, "llama")
    cfg = TrainConfig(data="d", out="o", lora_r=4, lora_alpha=8)
    model = llmft_model.attach_adapter(llmft_model.load_model(str(folder)), cfg)
    kinds = [type(m) for m in model.modules() if isinstance(m, PeftLoraLinear)]
    assert kinds == [FusedLoraLinear] * (2 * 7)              # 2 layers x q, k, v, o, gate, up, down
    model.save_pretrained(tmp_path / "adapter")
    from peft import PeftModel

    reloaded = PeftModel.from_pretrained(llmft_model.load_model(str(folder)), tmp_path / "adapter")
    assert all(type(m) is PeftLoraLinear for m in reloaded.modules() if isinstance(m, PeftLoraLinear))
    ids = torch.randint(0, 1000, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, reloaded(input_ids=ids).logits)

    dora = llmft_model.attach_adapter(llmft_model.load_model(str(folder)), TrainConfig(
        data="d", out="o", lora_r=4, lora_alpha=8, use_dora=True))
    assert not any(type(m) is FusedLoraLinear for m in dora.modules())
