"""Cross-entropy over the hidden states in chunks, only at trainable positions, never building [T, vocab] logits.

`causal_lm_loss_sum` shifts the labels, gathers the hidden states whose next-token label is not IGNORE_INDEX (so
prompt positions cost nothing), and runs lm_head + fp32 cross-entropy over `chunk_size` rows at a time in one
autograd Function (`_LinearCrossEntropy`): when a gradient is wanted, each chunk's forward also turns its fp32
logits, in place, into d loss / d logits (softmax - one-hot, through softcap and scale) and multiplies that into the
gradients of the hidden rows (kept, [N, H]) and, when they train, of lm_head's weight and bias (summed in fp32). So
one chunk's logits exist at a time, the logits matmul runs once, and backward only scales the kept gradients by the
incoming one. It returns the SUM of token losses and the token count, so the training loop can divide by the
trainable tokens of the whole accumulated batch.

Models whose head does more than `linear (+ bias)`: Gemma-2/3 final logit soft-capping, Cohere's `logit_scale` and
Granite's `logits_scaling` are applied here (`head_options(config)`); for anything else call
`chunked_loss_matches(model)` once and use the model's own logits (`model_loss_sum(..., chunked=False)`) if it fails.

Micro-benchmark (not a test; one process, torch.set_num_threads(1), time.process_time, best of 3 after a warm-up):
forward + backward of 400 trainable rows, hidden [400, 576] bf16, frozen bf16 lm_head [49152, 576] (SmolLM2-135M),
bf16 autocast, chunk_size 1024. The former path (each chunk under torch.utils.checkpoint: logits matmul, fp32 copy
and log_softmax twice, log_softmax backward, grad-input matmul) took 0.368 s of CPU, this one 0.166 s (2.2x); the
losses agree to 1e-7 relative. Rerun it with:

    import time, torch
    from llmft.training.losses import causal_lm_loss_sum
    torch.set_num_threads(1)
    N, H, V = 400, 576, 49152
    h = torch.randn(1, N + 1, H).bfloat16().requires_grad_(); w = (torch.randn(V, H) * 0.02).bfloat16()
    y = torch.randint(0, V, (1, N + 1))
    t = time.process_time()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, n = causal_lm_loss_sum(h, w, y, chunk_size=1024)
    loss.backward()
    print(time.process_time() - t)   # peak memory: torch.cuda.max_memory_allocated() on GPU
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from llmft.training.tokenize import IGNORE_INDEX

# rows per chunk: 256 keeps the fp32 + bf16 logits of a chunk at ~75 MB for a 49k vocabulary; 1024 was as fast in
# bench/train_throughput.py but 120 MB more peak RSS
DEFAULT_CHUNK = 256


def head_options(config) -> dict:
    """The logit transforms a model config asks for after lm_head (None when absent)."""
    scale = None
    if getattr(config, "logit_scale", None) is not None:            # Cohere: logits * logit_scale
        scale = float(config.logit_scale)
    elif getattr(config, "logits_scaling", None) is not None:       # Granite: logits / logits_scaling
        scale = 1.0 / float(config.logits_scaling)
    return {"scale": scale, "softcap": getattr(config, "final_logit_softcapping", None)}


@dataclass(frozen=True)
class _Head:
    """How the logits of a chunk are made: the matmul dtype (None: the inputs' own, as F.linear outside autocast),
    the optional logit transforms, and which of (hidden, weight, bias) want a gradient."""
    chunk_size: int
    compute_dtype: torch.dtype | None
    scale: float | None
    softcap: float | None
    wants_grad: tuple[bool, bool, bool]


def _chunk_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  head: _Head) -> torch.Tensor:
    """fp32 logits of one chunk, transformed as the model heads do (scale in the matmul dtype, softcap in fp32)."""
    logits = torch.mm(hidden, weight.t()) if bias is None else torch.addmm(bias, hidden, weight.t())
    if head.scale is not None:
        logits.mul_(head.scale)
    logits = logits.float()
    if head.softcap is not None:
        logits.div_(head.softcap).tanh_().mul_(head.softcap)
    return logits


def _add_matmul(total: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """total += a @ b, with the product in a's dtype and the sum in total's (fp32)."""
    if a.dtype == total.dtype:
        total.addmm_(a, b)
    else:
        total.add_(torch.mm(a, b))


def _softcap_slope(capped: torch.Tensor, softcap: float) -> torch.Tensor:
    """d softcap*tanh(x/softcap) / dx = 1 - tanh^2, with tanh = capped / softcap."""
    return capped.square().div_(-softcap * softcap).add_(1.0)


def _exp_in_place(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits <- exp(logits - row max); returns (row sums of that [n, 1], logsumexp of the logits [n])."""
    row_max = logits.amax(dim=1, keepdim=True)
    sums = logits.sub_(row_max).exp_().sum(dim=1, keepdim=True)
    return sums, (row_max + sums.log()).squeeze(1)


def _accumulate_chunk_grads(grads: list, rows: slice, exps: torch.Tensor, sums: torch.Tensor,
                            softcap_slope: torch.Tensor | None, targets: torch.Tensor, hidden: torch.Tensor,
                            weight: torch.Tensor, scale: float | None) -> None:
    """Turn the chunk's shifted exponentials, in place, into d loss_sum / d logits = (softmax - onehot) * scale
    * softcap slope, and add its share to `grads` ([hidden, weight, bias]; None where no gradient is wanted)."""
    scale = 1.0 if scale is None else scale
    grad = exps.mul_(sums.reciprocal_().mul_(scale))
    grad.scatter_add_(1, targets.unsqueeze(1), torch.full_like(sums, -scale))
    if softcap_slope is not None:
        grad.mul_(softcap_slope)
    grad_hidden, grad_weight, grad_bias = grads
    in_matmul_dtype = grad.to(hidden.dtype)
    if grad_hidden is not None:
        grad_hidden[rows] = torch.mm(in_matmul_dtype, weight)
    if grad_weight is not None:
        _add_matmul(grad_weight, in_matmul_dtype.t(), hidden)
    if grad_bias is not None:
        grad_bias.add_(grad.sum(0))


def _gradient_buffers(hidden, weight, bias, wants_grad) -> list:
    """[d/d hidden in hidden's dtype, d/d weight and d/d bias in fp32] for those that want one, else None."""
    wants_hidden, wants_weight, wants_bias = wants_grad
    return [torch.empty_like(hidden) if wants_hidden else None,
            torch.zeros_like(weight, dtype=torch.float32) if wants_weight else None,
            torch.zeros_like(bias, dtype=torch.float32) if wants_bias else None]


def _cast(tensor: torch.Tensor | None, dtype: torch.dtype | None) -> torch.Tensor | None:
    return tensor if tensor is None or dtype is None else tensor.to(dtype)


class _LinearCrossEntropy(torch.autograd.Function):
    """sum over rows of cross_entropy(head(hidden @ weight.T + bias), targets), gradients made in the forward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, head: _Head):
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        with torch.autocast(hidden.device.type, enabled=False):
            hidden_c, weight_c, bias_c = (_cast(t, head.compute_dtype) for t in (hidden, weight, bias))
            grads = _gradient_buffers(hidden, weight, bias, head.wants_grad)
            wants_any = any(head.wants_grad)
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for start in range(0, hidden.shape[0], head.chunk_size):
                rows = slice(start, start + head.chunk_size)
                logits = _chunk_logits(hidden_c[rows], weight_c, bias_c, head)
                target_logits = logits.gather(1, targets[rows].unsqueeze(1)).squeeze(1)
                slope = _softcap_slope(logits, head.softcap) if wants_any and head.softcap is not None else None
                sums, lse = _exp_in_place(logits)
                total += (lse - target_logits).sum()
                if wants_any:
                    _accumulate_chunk_grads(grads, rows, logits, sums, slope, targets[rows], hidden_c[rows],
                                            weight_c, head.scale)
                del logits, slope
        ctx.save_for_backward(*grads)
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        scaled = [None if g is None else (g * grad_output).to(dtype)
                  for g, dtype in zip(ctx.saved_tensors, ctx.dtypes)]
        return (*scaled, None, None)


def _matmul_dtype(tensor: torch.Tensor) -> torch.dtype | None:
    """The dtype F.linear would multiply in here: autocast's when it is on for this device, else None (as given)."""
    device_type = tensor.device.type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None


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
    grad_on = torch.is_grad_enabled()
    wants_grad = (grad_on and hidden.requires_grad, grad_on and lm_head_weight.requires_grad,
                  grad_on and bias is not None and bias.requires_grad)
    head = _Head(chunk_size, _matmul_dtype(hidden), scale, softcap, wants_grad)
    return _LinearCrossEntropy.apply(hidden, lm_head_weight, bias, targets, head), n_tokens


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
