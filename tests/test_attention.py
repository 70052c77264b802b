"""llmft's varlen attention (attention.VARLEN): packed examples are cut at their boundaries, so a packed row gives
each example's own logits and gradients, nothing leaks (even with a KV cache), sliding windows match transformers'
mask path, and every unpacked case (padding masks, generation with a cache) is sdpa's."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as tf

from llmft.training.attention import VARLEN, preferred_attention, register, segment_bounds, supports_varlen, uses_varlen
from llmft.training.batching import collate_packed, model_inputs
from llmft.training.tokenize import IGNORE_INDEX, Example
from tiny_models import CONFIGS

VERIFIED = ["llama", "qwen2", "mistral", "gemma", "phi3"]
LENGTHS = (7, 12, 1, 9)


def tiny(arch: str, attn: str, **overrides):
    torch.manual_seed(0)
    config = CONFIGS[arch]()
    for key, value in overrides.items():
        setattr(config, key, value)
    config._attn_implementation = register() if attn == VARLEN else attn
    return tf.AutoModelForCausalLM.from_config(config).eval()


def examples(lengths=LENGTHS, seed: int = 0) -> list[Example]:
    gen = np.random.default_rng(seed)
    out = []
    for n in lengths:
        ids = gen.integers(3, 1000, size=n).astype(np.int32)
        labels = ids.copy()
        labels[0] = IGNORE_INDEX
        out.append(Example(ids, labels, n - 1, False))
    return out


def packed_and_alone_logits(model, batch_examples, **extra):
    batch = collate_packed(batch_examples)
    packed = model(**{**model_inputs(batch), **extra}).logits[0]
    alone = torch.cat([model(**model_inputs(collate_packed([e]))).logits[0] for e in batch_examples])
    return packed, alone


def test_segment_bounds_exact():
    assert segment_bounds(torch.tensor([0, 1, 2, 0, 1, 0, 0, 1, 2, 3])) == [0, 3, 5, 6, 10]
    assert segment_bounds(torch.tensor([5, 6, 7])) == [0, 3]  # a continued sequence is one segment


@pytest.mark.parametrize("arch", VERIFIED)
def test_packed_logits_and_gradients_equal_each_example_alone(arch):
    model = tiny(arch, VARLEN)
    batch_examples = examples()
    with torch.no_grad():
        packed, alone = packed_and_alone_logits(model, batch_examples)
    assert packed.shape == (sum(LENGTHS), CONFIGS[arch]().vocab_size)
    assert (packed - alone).abs().max().item() < 1e-4

    def grads(batches):
        model.zero_grad()
        for b in batches:
            model(**model_inputs(b), labels=b["labels"]).loss.mul(b["n_trainable"]).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    together = grads([collate_packed(batch_examples)])
    separately = grads([collate_packed([e]) for e in batch_examples if e.n_trainable])
    assert together.keys() == separately.keys() and len(together) > 10
    for name in together:
        torch.testing.assert_close(together[name], separately[name], atol=1e-4, rtol=1e-3, msg=name)


def test_varlen_does_not_leak_even_with_a_cache_where_sdpa_does():
    batch_examples = examples()
    starts = np.cumsum([0, *LENGTHS])
    varlen, sdpa = tiny("llama", VARLEN), tiny("llama", "sdpa")
    with torch.no_grad():
        for use_cache in (False, True):
            packed, alone = packed_and_alone_logits(varlen, batch_examples, use_cache=use_cache)
            assert (packed - alone).abs().max().item() < 1e-4
        leaked, alone = packed_and_alone_logits(sdpa, batch_examples, use_cache=True)
    # the control: the same row through sdpa with a cache lets every later example see the ones before it
    later = slice(starts[1], None)
    assert (leaked[later] - alone[later]).abs().max().item() > 1e-2


def test_boundaries_from_position_ids_when_the_batch_has_no_cu_seq_lens():
    model = tiny("qwen2", VARLEN)
    batch = collate_packed(examples())
    plain = {k: batch[k] for k in ("input_ids", "position_ids", "use_cache")}
    with torch.no_grad():
        with_bounds = model(**model_inputs(batch)).logits
        from_positions = model(**plain).logits
        one_sequence = model(input_ids=batch["input_ids"], use_cache=False).logits
    assert (with_bounds - from_positions).abs().max().item() < 1e-5
    assert (with_bounds - one_sequence).abs().max().item() > 1e-2   # the row really was cut


@pytest.mark.parametrize("window", [4, 100])
def test_sliding_window_matches_transformers_mask_path(window):
    batch = collate_packed(examples())
    with torch.no_grad():
        varlen = tiny("mistral", VARLEN, sliding_window=window)(**model_inputs(batch)).logits
        masked = tiny("mistral", "sdpa", sliding_window=window)(**model_inputs(batch)).logits
        unwindowed = tiny("mistral", "sdpa")(**model_inputs(batch)).logits
    assert (varlen - masked).abs().max().item() < 1e-4
    if window < max(LENGTHS):
        assert (varlen - unwindowed).abs().max().item() > 1e-3


def test_attention_dropout_is_applied_in_training_only():
    model = tiny("llama", VARLEN, attention_dropout=0.5)
    batch = model_inputs(collate_packed(examples()))
    with torch.no_grad():
        evaluated = model(**batch).logits
        model.train()
        torch.manual_seed(1)
        first = model(**batch).logits
        torch.manual_seed(2)
        second = model(**batch).logits
    reference = tiny("llama", "sdpa")(**batch).logits.detach()
    assert (evaluated - reference).abs().max().item() < 1e-4
    assert (first - second).abs().max().item() > 1e-3


def test_padded_batches_and_generation_are_sdpa_unchanged():
    varlen, sdpa = tiny("llama", VARLEN), tiny("llama", "sdpa")
    input_ids = torch.tensor([[0, 0, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14]])
    attention_mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=5, do_sample=False,
                  pad_token_id=0)
    with torch.no_grad():
        assert varlen.generate(**kwargs).tolist() == sdpa.generate(**kwargs).tolist()
        right = dict(input_ids=input_ids.flip(1), attention_mask=attention_mask.flip(1), use_cache=False)
        got, want = varlen(**right).logits, sdpa(**right).logits
    real = attention_mask.flip(1).bool()
    assert (got[real] - want[real]).abs().max().item() < 1e-4


def test_which_models_get_varlen():
    assert all(supports_varlen(CONFIGS[arch]()) for arch in VERIFIED)
    assert not supports_varlen(CONFIGS["gpt2"]())
    assert not supports_varlen(tf.Gemma2Config(**{**CONFIGS["gemma"]().to_dict(), "attn_logit_softcapping": 50.0}))
    if not torch.cuda.is_available():
        assert preferred_attention(CONFIGS["llama"]()) == VARLEN
        assert preferred_attention(CONFIGS["gpt2"]()) == "sdpa"
    assert uses_varlen(tiny("llama", VARLEN)) and not uses_varlen(tiny("llama", "sdpa"))


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_short_example_attention_equals_sdpa_with_grouped_heads(dtype, tolerance):
    """The matmul path for short examples: same outputs and gradients as sdpa's causal math kernel (bf16: the
    products are rounded to bf16 before the fp32 softmax, as in the flash kernel; 2e-2 is ~2 bf16 ulps of O(1))."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from llmft.training.attention import _short_causal_attention

    torch.manual_seed(0)
    q = torch.randn(1, 6, 37, 16, dtype=dtype, requires_grad=True)
    k = torch.randn(1, 2, 37, 16, dtype=dtype, requires_grad=True)
    v = torch.randn(1, 2, 37, 16, dtype=dtype, requires_grad=True)
    grad = torch.randn(1, 6, 37, 16, dtype=dtype)
    ours = _short_causal_attention(q, k, v, 0.3)
    ours_grads = torch.autograd.grad(ours, (q, k, v), grad)
    with sdpa_kernel(SDPBackend.MATH):
        reference = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.3, is_causal=True,
                                                                     enable_gqa=True)
    reference_grads = torch.autograd.grad(reference, (q, k, v), grad)
    assert ours.dtype == dtype and ours.shape == reference.shape
    for mine, theirs in zip((ours, *ours_grads), (reference, *reference_grads)):
        torch.testing.assert_close(mine.float(), theirs.float(), rtol=tolerance, atol=tolerance)
