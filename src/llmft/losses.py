"""Cross-entropy over the hidden states in chunks, only at trainable positions, never building [T, vocab] logits.

`causal_lm_loss_sum` shifts the labels, gathers the hidden states whose next-token label is not IGNORE_INDEX (so
prompt positions cost nothing), and runs lm_head + fp32 cross-entropy over `chunk_size` rows at a time under
activation checkpointing: one chunk's logits exist at a time, in the forward and again in the backward. It returns
the SUM of token losses and the token count, so the training loop can divide by the trainable tokens of the whole
accumulated batch.

Models whose head does more than `linear (+ bias)`: Gemma-2/3 final logit soft-capping, Cohere's `logit_scale` and
Granite's `logits_scaling` are applied here (`head_options(config)`); for anything else call
`chunked_loss_matches(model)` once and use the model's own logits (`model_loss_sum(..., chunked=False)`) if it fails.

Micro-benchmark (not a test; timings go to bench/):

    import time, torch
    from llmft.losses import causal_lm_loss_sum
    T, H, V = 4096, 576, 49152
    h = torch.randn(1, T, H, requires_grad=True); w = torch.randn(V, H, requires_grad=True) * 0.02
    y = torch.randint(0, V, (1, T)); y[:, : T // 2] = -100
    for fn in ("chunked", "full"):
        t = time.perf_counter()
        if fn == "chunked":
            loss, n = causal_lm_loss_sum(h, w, y, chunk_size=1024)
        else:
            logits = (h[:, :-1] @ w.T).float()
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y[:, 1:].flatten(), reduction="sum")
        loss.backward()
        print(fn, time.perf_counter() - t)   # peak memory: torch.cuda.max_memory_allocated() on GPU
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from llmft.tokenize import IGNORE_INDEX

DEFAULT_CHUNK = 1024


def head_options(config) -> dict:
    """The logit transforms a model config asks for after lm_head (None when absent)."""
    scale = None
    if getattr(config, "logit_scale", None) is not None:            # Cohere: logits * logit_scale
        scale = float(config.logit_scale)
    elif getattr(config, "logits_scaling", None) is not None:       # Granite: logits / logits_scaling
        scale = 1.0 / float(config.logits_scaling)
    return {"scale": scale, "softcap": getattr(config, "final_logit_softcapping", None)}


def _chunk_loss(hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                scale: float | None, softcap: float | None) -> torch.Tensor:
    logits = F.linear(hidden, weight, bias)
    if scale is not None:
        logits = logits * scale
    logits = logits.float()
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, targets, reduction="sum")


def causal_lm_loss_sum(hidden_states: torch.Tensor, lm_head_weight: torch.Tensor, labels: torch.Tensor,
                       chunk_size: int = DEFAULT_CHUNK, *, bias: torch.Tensor | None = None,
                       scale: float | None = None, softcap: float | None = None) -> tuple[torch.Tensor, int]:
    """(sum of next-token cross-entropy over positions whose label is not -100, number of those positions).

    hidden_states [B, T, H] (the decoder's final, normed output), labels [B, T] unshifted."""
    length, width = hidden_states.shape[1], hidden_states.shape[2]
    next_labels = labels[:, 1:].to(hidden_states.device)
    rows, cols = (next_labels != IGNORE_INDEX).nonzero(as_tuple=True)
    n_tokens = int(rows.numel())
    if n_tokens == 0:
        return hidden_states.sum() * 0.0, 0  # keeps the graph, so backward() still works on an empty batch
    # position t predicts label t+1; gather those rows straight from the (contiguous) hidden states
    hidden = hidden_states.reshape(-1, width).index_select(0, rows * length + cols)
    targets = next_labels[rows, cols]
    recompute = torch.is_grad_enabled() and (hidden.requires_grad or lm_head_weight.requires_grad)
    total = None
    for start in range(0, n_tokens, chunk_size):
        args = (hidden[start:start + chunk_size], targets[start:start + chunk_size], lm_head_weight, bias,
                scale, softcap)
        part = checkpoint(_chunk_loss, *args, use_reentrant=False) if recompute else _chunk_loss(*args)
        total = part if total is None else total + part
    return total, n_tokens


# ---------------------------------------------------------------- on a model

def _causal_lm(model):
    """The *ForCausalLM module under a PEFT wrapper (LoRA layers are injected into it, so calling it trains them)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def model_loss_sum(model, inputs: dict, labels: torch.Tensor, chunk_size: int = DEFAULT_CHUNK,
                   chunked: bool = True) -> tuple[torch.Tensor, int]:
    """Run the model on `inputs` (batching.model_inputs) and return (loss sum, trainable tokens)."""
    lm = _causal_lm(model)
    if not chunked:
        logits = model(**inputs).logits
        shifted = labels[:, 1:].to(logits.device)
        loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), shifted.flatten(), reduction="sum",
                               ignore_index=IGNORE_INDEX)
        return loss, int((shifted != IGNORE_INDEX).sum())
    outputs = lm.base_model(**inputs)
    hidden = outputs.last_hidden_state if hasattr(outputs, "last_hidden_state") else outputs[0]
    head = lm.get_output_embeddings()
    return causal_lm_loss_sum(hidden, head.weight, labels, chunk_size, bias=getattr(head, "bias", None),
                              **head_options(lm.config))


@torch.no_grad()
def chunked_loss_matches(model, rtol: float = 1e-3) -> bool:
    """True when the chunked loss equals the loss on the model's own logits for a short random sequence."""
    weight = model.get_input_embeddings().weight
    ids = torch.randint(0, weight.shape[0], (1, 12), generator=torch.Generator().manual_seed(0)).to(weight.device)
    labels = ids.clone()
    labels[:, :4] = IGNORE_INDEX
    was_training = model.training
    model.eval()
    try:
        inputs = {"input_ids": ids, "use_cache": False}
        chunked, _ = model_loss_sum(model, inputs, labels, chunk_size=3)
        reference, _ = model_loss_sum(model, inputs, labels, chunked=False)
    finally:
        model.train(was_training)
    return bool(torch.allclose(chunked.float(), reference.float(), rtol=rtol, atol=1e-4))


class CausalLMLoss(torch.nn.Module):
    """The (PEFT-wrapped) model and its loss as one module: `forward(inputs, labels) -> (loss_sum, n_tokens)`.

    Training passes this module, not the bare model, through `accelerator.prepare`, so DDP's and FSDP's forward and
    backward hooks see the whole computation, including the chunked loss's read of lm_head's weight (FSDP only
    gathers a sharded weight inside the wrapped forward)."""

    def __init__(self, model, chunk_size: int = DEFAULT_CHUNK, chunked: bool = True):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size
        self.chunked = chunked
        # FSDP's transformer auto-wrap policy reads the decoder-layer class names from the wrapped module
        self._no_split_modules = getattr(_causal_lm(model), "_no_split_modules", None)

    def forward(self, inputs: dict, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
        return model_loss_sum(self.model, inputs, labels, self.chunk_size, chunked=self.chunked)
