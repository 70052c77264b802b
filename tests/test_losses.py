"""Chunked loss: value and gradients (hidden, weight, bias) equal cross-entropy on full logits (fp32, bf16 autocast,
bf16 inputs), head transforms, no gradient work without grad, the incoming gradient scales them, empty batches, and
the model-level helper on tiny models."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmft.training import losses
from llmft.training.losses import causal_lm_loss_sum, chunked_loss_matches, head_options, model_loss_sum
from llmft.training.tokenize import IGNORE_INDEX
from tiny_models import tiny_model

B, T, H, V = 2, 17, 32, 101


def inputs(seed: int = 0, bias: bool = False):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=gen, requires_grad=True)
    weight = (torch.randn(V, H, generator=gen) * 0.2).requires_grad_()
    b = (torch.randn(V, generator=gen) * 0.1).requires_grad_() if bias else None
    labels = torch.randint(0, V, (B, T), generator=gen)
    labels[0, :6] = IGNORE_INDEX    # a prompt
    labels[1, :3] = IGNORE_INDEX
    labels[1, -4:] = IGNORE_INDEX   # padding
    return hidden, weight, b, labels


def reference(hidden, weight, bias, labels, scale=None, softcap=None):
    logits = F.linear(hidden, weight, bias)
    if scale is not None:
        logits = logits * scale
    logits = logits.float()
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), reduction="sum",
                           ignore_index=IGNORE_INDEX)


def grads(loss, *tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t is not None])


@pytest.mark.parametrize("chunk_size", [1, 5, 1024])
def test_value_and_gradients_match_full_logits_fp32(chunk_size):
    hidden, weight, bias, labels = inputs(bias=True)
    loss, n = causal_lm_loss_sum(hidden, weight, labels, chunk_size, bias=bias)
    want = reference(hidden, weight, bias, labels)
    assert n == (16 - 5) + (16 - 2 - 4) == 21
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    for got, ref in zip(grads(loss, hidden, weight, bias), grads(want, hidden, weight, bias)):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_gradients_match_under_bf16_autocast():
    hidden, weight, _, labels = inputs(seed=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, n = causal_lm_loss_sum(hidden, weight, labels, chunk_size=4)
        want = reference(hidden, weight, None, labels)
    assert loss.dtype == torch.float32 and n == 21
    assert loss.item() == pytest.approx(want.item(), rel=1e-3)
    got_hidden, got_weight = grads(loss, hidden, weight)
    ref_hidden, ref_weight = grads(want, hidden, weight)
    assert got_hidden.dtype == got_weight.dtype == torch.float32   # the inputs' dtype, not the bf16 of the matmul
    # d/d hidden: both multiply the same bf16-rounded softmax - onehot by the bf16 weight in one bf16 matmul, so they
    # agree to one bf16 ulp (2**-8) at most (measured: bitwise equal on seeds 0-3).
    torch.testing.assert_close(got_hidden, ref_hidden, rtol=2**-8, atol=1e-6)
    # d/d weight: the reference rounds one [V, N] x [N, H] product to bf16; here each chunk's product is rounded to
    # bf16 (relative error 2**-9 of that partial) and the partials are summed in fp32, so an entry whose partials
    # cancel can be off by a bf16 rounding of its largest partial: bound it by 2 bf16 ulps (2**-7) of the largest
    # gradient entry (measured: at most 4.2e-3 of it on seeds 0-3, the old checkpointed path 9.4e-3).
    torch.testing.assert_close(got_weight, ref_weight, rtol=0, atol=2**-7 * ref_weight.abs().max().item())


def test_scale_and_softcap_applied_like_the_model_heads():
    hidden, weight, _, labels = inputs(seed=2)
    loss, _ = causal_lm_loss_sum(hidden, weight, labels, 3, scale=0.5, softcap=2.0)
    want = reference(hidden, weight, None, labels, scale=0.5, softcap=2.0)
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    assert loss.item() != pytest.approx(reference(hidden, weight, None, labels).item(), rel=1e-3)
    for got, ref in zip(grads(loss, hidden, weight), grads(want, hidden, weight)):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk_size", [4, 1024])
def test_hidden_weight_and_bias_gradients_with_scale_and_softcap(chunk_size):
    hidden, weight, bias, labels = inputs(seed=3, bias=True)
    loss, n = causal_lm_loss_sum(hidden, weight, labels, chunk_size, bias=bias, scale=0.5, softcap=2.0)
    want = reference(hidden, weight, bias, labels, scale=0.5, softcap=2.0)
    assert n == 21 and loss.item() == pytest.approx(want.item(), rel=1e-6)
    got_all, ref_all = grads(loss, hidden, weight, bias), grads(want, hidden, weight, bias)
    assert [g.shape for g in got_all] == [(B, T, H), (V, H), (V,)]
    for got, ref in zip(got_all, ref_all):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def count_gradient_work(monkeypatch) -> list:
    """Record, per chunk that computes gradients, which of (hidden, weight, bias) get a gradient buffer."""
    calls = []
    accumulate = losses._accumulate_chunk_grads

    def spy(*args, **kwargs):
        calls.append(tuple(g is not None for g in args[0]))
        return accumulate(*args, **kwargs)

    monkeypatch.setattr(losses, "_accumulate_chunk_grads", spy)
    return calls


def test_no_gradient_work_without_grad(monkeypatch):
    calls = count_gradient_work(monkeypatch)
    hidden, weight, bias, labels = inputs(seed=4, bias=True)
    want = reference(hidden, weight, bias, labels, softcap=2.0)
    with torch.no_grad():
        loss, n = causal_lm_loss_sum(hidden, weight, labels, 5, bias=bias, softcap=2.0)
    assert n == 21 and loss.item() == pytest.approx(want.item(), rel=1e-6)
    assert calls == [] and not loss.requires_grad and loss.grad_fn is None
    frozen = [t.detach() for t in (hidden, weight, bias)]
    loss, _ = causal_lm_loss_sum(frozen[0], frozen[1], labels, 5, bias=frozen[2], softcap=2.0)
    assert calls == [] and loss.grad_fn is None and loss.item() == pytest.approx(want.item(), rel=1e-6)
    # LoRA-like: only the hidden states train, so no weight or bias gradient is built; 21 rows / 5 = 5 chunks
    loss, _ = causal_lm_loss_sum(hidden, frozen[1], labels, 5, bias=frozen[2], softcap=2.0)
    assert calls == [(True, False, False)] * 5
    (got,) = grads(loss, hidden)
    torch.testing.assert_close(got, grads(want, hidden)[0], rtol=1e-5, atol=1e-6)


def test_incoming_gradient_scales_every_gradient():
    hidden, weight, bias, labels = inputs(seed=5, bias=True)
    loss, _ = causal_lm_loss_sum(hidden, weight, labels, 4, bias=bias, scale=0.5)
    unit = torch.autograd.grad(loss, [hidden, weight, bias], retain_graph=True)
    scaled = torch.autograd.grad(loss * 0.37, [hidden, weight, bias])
    for got, one in zip(scaled, unit):
        assert one.abs().sum().item() > 0
        torch.testing.assert_close(got, one * 0.37)


def test_gradients_keep_bf16_inputs_bf16_outside_autocast():
    hidden, weight, bias, labels = (t.detach().bfloat16().requires_grad_() if t.is_floating_point() else t
                                    for t in inputs(seed=6, bias=True))
    loss, _ = causal_lm_loss_sum(hidden, weight, labels, 4, bias=bias)
    want = reference(hidden, weight, bias, labels)
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(want.item(), rel=1e-6)
    got_all = grads(loss, hidden, weight, bias)
    assert [g.dtype for g in got_all] == [torch.bfloat16] * 3
    for got, ref in zip(got_all, grads(want, hidden, weight, bias)):   # bf16 products as in the bf16 test above
        torch.testing.assert_close(got.float(), ref.float(), rtol=2**-8, atol=2**-7 * ref.abs().max().item())


def test_head_options_from_configs():
    import transformers as tf

    assert head_options(tf.LlamaConfig()) == {"scale": None, "softcap": None}
    assert head_options(tf.Gemma2Config(final_logit_softcapping=30.0)) == {"scale": None, "softcap": 30.0}
    assert head_options(tf.CohereConfig(logit_scale=0.0625))["scale"] == 0.0625
    assert head_options(tf.GraniteConfig(logits_scaling=8.0))["scale"] == 0.125


def test_no_trainable_position_gives_zero_and_still_backpropagates():
    hidden, weight, _, labels = inputs()
    labels[:] = IGNORE_INDEX
    loss, n = causal_lm_loss_sum(hidden, weight, labels)
    assert n == 0 and loss.item() == 0.0
    loss.backward()
    assert hidden.grad.abs().sum().item() == 0.0


def test_model_loss_sum_equals_the_models_own_loss():
    model = tiny_model("llama")
    ids = torch.randint(0, 1000, (1, 20), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :7] = IGNORE_INDEX
    inputs_ = {"input_ids": ids, "use_cache": False}
    loss, n = model_loss_sum(model, inputs_, labels, chunk_size=4)
    own = model(input_ids=ids, labels=labels).loss
    assert n == 13 and loss.item() == pytest.approx(own.item() * 13, rel=1e-5)
    plain, n_plain = model_loss_sum(model, inputs_, labels, chunked=False)
    assert n_plain == 13 and plain.item() == pytest.approx(loss.item(), rel=1e-5)
    loss.backward()
    assert model.model.embed_tokens.weight.grad is not None


def test_model_loss_sum_through_peft_and_a_softcapped_head():
    import transformers as tf
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model("qwen2"), LoraConfig(r=4, target_modules="all-linear"))
    assert chunked_loss_matches(model)
    ids = torch.randint(0, 1000, (1, 10), generator=torch.Generator().manual_seed(1))
    loss, _ = model_loss_sum(model, {"input_ids": ids, "use_cache": False}, ids, chunk_size=3)
    loss.backward()
    lora_grads = [p.grad for name, p in model.named_parameters() if "lora_" in name]
    assert lora_grads and all(g is not None for g in lora_grads)
    torch.manual_seed(0)
    gemma2 = tf.AutoModelForCausalLM.from_config(tf.Gemma2Config(
        vocab_size=500, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, final_logit_softcapping=3.0))
    assert chunked_loss_matches(gemma2)
