"""Variable-length ("varlen") causal attention for packed rows, without a [T, T] mask.

A packed row holds several examples back to back, `position_ids` restarting at 0 for each. With sdpa or eager,
transformers turns that into a block-diagonal [T, T] mask, and the CPU kernels apply the mask rather than skip the
empty blocks, so attention costs T^2 per row. `VARLEN` ("llmft_varlen") is an attention implementation registered
with transformers' `AttentionInterface` that cuts the row at the example boundaries and runs causal
`scaled_dot_product_attention` per example: cost sum(len_i^2), nothing crosses a boundary, no mask is built.

Boundaries come from `cu_seq_lens_q` (cumulative example lengths, the keyword flash-attention's varlen path reads;
`batching.collate_packed` puts it in every packed batch) or, when absent, from `position_ids` (a new example wherever
the position does not go up by one). Every other case (a padding or 4D mask, a KV cache, bidirectional attention)
goes to transformers' own sdpa function unchanged, with the mask transformers builds for sdpa: the mask function
registered under the same name returns None only when the layer sees exactly its own fresh, unpadded tokens.
Sliding windows are applied inside each example (a banded mask of that example only, when it is longer than the
window). On CUDA with flash-attn installed, `preferred_attention` picks "flash_attention_2", whose varlen path reads
the same `cu_seq_lens_*`; the segment loop also runs on a GPU (untested there).
"""
from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

VARLEN = "llmft_varlen"
# CPU flash attention works in blocks of hundreds of tokens, so a short sequence costs nearly a full block; the plain
# math kernel is faster below this length (SmolLM2 heads, bf16, one thread, fwd+bwd: 87 tokens 1.4 vs 2.7 ms,
# 128: 2.2 vs 3.6, 192: 4.5 vs 3.6).
CPU_MATH_MAX_LENGTH = 160
# Architectures whose attention goes through AttentionInterface with plain causal semantics, checked by
# tests/test_attention.py (packed == alone, no leak, generation unchanged). Others keep sdpa.
VARLEN_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "phi3"})


def segment_bounds(position_ids: torch.Tensor) -> list[int]:
    """[0, end_1, ..., T] of one row: an example starts wherever the position does not follow the previous one."""
    starts = torch.nonzero(position_ids[1:] != position_ids[:-1] + 1).flatten() + 1
    return [0, *starts.tolist(), int(position_ids.numel())]


def _window_mask(length: int, window: int, device) -> torch.Tensor:
    idx = torch.arange(length, device=device)
    distance = idx[:, None] - idx[None, :]
    return (distance >= 0) & (distance < window)


def _attend_segment(query, key, value, dropout: float, scaling, window: int | None, gqa: bool) -> torch.Tensor:
    length = query.shape[2]
    if window is not None and length > window:
        mask = _window_mask(length, window, query.device)
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling,
                                              enable_gqa=gqa)
    if query.device.type == "cpu" and length <= CPU_MATH_MAX_LENGTH:
        if dropout == 0.0:
            return _short_causal_attention(query, key, value, scaling)
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, scale=scaling,
                                                  is_causal=length > 1, enable_gqa=gqa)
    return F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, scale=scaling, is_causal=length > 1,
                                          enable_gqa=gqa)


def _short_causal_attention(query, key, value, scaling) -> torch.Tensor:
    """Causal attention of one short example ([1, H, L, D], key/value [1, H_kv, L, D]) as two batched matmuls in the
    inputs' dtype with an fp32 softmax. sdpa's math kernel computes bf16 inputs in fp32 and adds checks for fully
    masked rows; this is ~1.2x faster per layer for SmolLM2-sized heads (bf16 product rounding, like the flash kernel)."""
    heads, length, dim = query.shape[1], query.shape[2], query.shape[3]
    key, value = key[0], value[0]
    if key.shape[0] != heads:
        key = key.repeat_interleave(heads // key.shape[0], dim=0)
        value = value.repeat_interleave(heads // value.shape[0], dim=0)
    future = torch.full((length, length), float("-inf"), dtype=query.dtype, device=query.device).triu_(1)
    scores = torch.baddbmm(future.expand(heads, length, length), query[0], key.transpose(1, 2),
                           alpha=scaling if scaling is not None else dim ** -0.5)
    probs = scores.softmax(-1, dtype=torch.float32).to(value.dtype)
    return torch.bmm(probs, value).unsqueeze(0)


def _row_bounds(batch: int, length: int, cu_seq_lens, position_ids) -> list[list[int]]:
    if cu_seq_lens is not None and batch == 1:
        return [[int(b) for b in cu_seq_lens.tolist()]]
    if position_ids is not None:
        rows = position_ids.expand(batch, -1)
        return [segment_bounds(rows[b]) for b in range(batch)]
    return [[0, length]] * batch


def varlen_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                             is_causal=None, **kwargs):
    """AttentionInterface signature: query [B, H, T, D], key/value [B, H_kv, S, D] -> ([B, T, H, D], None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if (attention_mask is not None or not causal or query.shape[2] != key.shape[2]
            or kwargs.get("position_bias") is not None):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    if kwargs.get("softcap") is not None:
        raise ValueError(f"{VARLEN} attention does not support softcap; load the model with eager attention")
    batch, _, length, _ = query.shape
    gqa = query.shape[1] != key.shape[1]
    window = kwargs.get("sliding_window")
    rows = []
    for b, bounds in enumerate(_row_bounds(batch, length, kwargs.get("cu_seq_lens_q"), kwargs.get("position_ids"))):
        q, k, v = query[b:b + 1], key[b:b + 1], value[b:b + 1]
        if len(bounds) == 2:
            rows.append(_attend_segment(q, k, v, dropout, scaling, window, gqa))
            continue
        # split, not slices: the backward of n slices fills and sums n zero tensors of the whole row (per q, k, v
        # and layer); split's backward is one concatenation (SmolLM2 shapes, 9 examples in a row: 1.37x faster)
        lengths = [e - s for s, e in zip(bounds[:-1], bounds[1:])]
        if gqa and q.device.type == "cpu":     # one copy of the shared key/value heads per row, not per example
            k, v = (t.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for t in (k, v))
        parts = [_attend_segment(qs, ks, vs, dropout, scaling, window, gqa and k.shape[1] != q.shape[1])
                 for qs, ks, vs in zip(q.split(lengths, 2), k.split(lengths, 2), v.split(lengths, 2))]
        rows.append(torch.cat(parts, dim=2))
    out = rows[0] if batch == 1 else torch.cat(rows, dim=0)
    return out.transpose(1, 2).contiguous(), None


def varlen_mask(batch_size: int, q_length: int, kv_length: int, q_offset=0, kv_offset=0, attention_mask=None,
                **kwargs):
    """No mask when the layer attends exactly its own unpadded tokens (the attention function then splits the row
    itself); otherwise whatever transformers builds for sdpa."""
    from transformers.masking_utils import sdpa_mask

    fresh = (isinstance(q_offset, int) and isinstance(kv_offset, int) and q_offset == 0 and kv_offset == 0
             and q_length == kv_length)
    if attention_mask is None and fresh:
        return None
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                     kv_offset=kv_offset, attention_mask=attention_mask, **kwargs)


def register() -> str:
    """Make VARLEN a valid `attn_implementation` (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN, varlen_attention_forward)
    AttentionMaskInterface.register(VARLEN, varlen_mask)
    return VARLEN


def supports_varlen(config) -> bool:
    """Verified architectures only, and no attention-logit softcapping (sdpa cannot do it either)."""
    return (getattr(config, "model_type", None) in VARLEN_MODEL_TYPES
            and getattr(config, "attn_logit_softcapping", None) is None)


def preferred_attention(config) -> str:
    """flash_attention_2 on CUDA when flash-attn is installed, VARLEN for verified architectures, else sdpa."""
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    if supports_varlen(config):
        return register()
    return "sdpa"


def uses_varlen(model) -> bool:
    """True when packed rows cost sum(len_i^2) in attention (VARLEN or flash-attention), so a packed micro-batch can
    stay one row."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    impl = getattr(getattr(lm, "config", None), "_attn_implementation", None)
    return impl == VARLEN or (isinstance(impl, str) and impl.startswith("flash_attention"))
