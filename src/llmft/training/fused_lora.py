"""One autograd node for a LoRA linear layer: y = x W^T + b + s (x A^T) B^T, with hand-written backward.

PEFT's `lora.Linear.forward` runs the base layer, then `lora_B(lora_A(x)) * scaling`, then adds the two: two extra
passes over the [tokens, out] output in the forward (scale, add) and two in the backward (the scale's gradient, the
sum of the two input gradients), plus a dozen small autograd nodes per layer. Here the scaling is applied to the
rank-r activations instead ([tokens, r], negligible), the LoRA product is accumulated into the base output by the
matmul itself (`addmm_`), and the input gradient of both paths is accumulated the same way. Same math, same saved
tensors (x, and the rank-r activations), no [tokens, out] temporaries.

`FusedLoraLinear` is a subclass of PEFT's `lora.Linear` that takes this path when it applies (one active vanilla
adapter, not merged, adapters enabled, no dropout, a plain nn.Linear base, no per-call adapter_names) and PEFT's own
forward otherwise; `fuse_lora_layers(model)` switches the class of every such layer in place, so saving, loading,
merging and `disable_adapter()` stay PEFT's.
"""
from __future__ import annotations

import torch
from peft.tuners.lora.layer import Linear as PeftLoraLinear


def lora_forward(flat, weight, bias, lora_a, lora_b, scaling: float):
    """(flat W^T + b + s (flat A^T) B^T, the scaled rank-r activations s flat A^T) for 2-D `flat`."""
    down = (flat @ lora_a.t()).mul_(scaling)
    out = torch.addmm(bias, flat, weight.t()) if bias is not None else flat @ weight.t()
    return out.addmm_(down, lora_b.t()), down


def lora_backward(grad, flat, weight, lora_a, lora_b, down, scaling: float, needs) -> tuple:
    """Gradients (input, weight, bias, A, B) of `lora_forward` for output gradient `grad`; None where `needs` (five
    booleans in that order) says no."""
    need_x, need_w, need_b, need_a, need_lb = needs
    grad_down = (grad @ lora_b).mul_(scaling)                    # d loss / d (flat A^T)
    grad_x = (grad @ weight).addmm_(grad_down, lora_a) if need_x else None
    grad_w = grad.t() @ flat if need_w else None
    grad_bias = grad.sum(0) if need_b else None
    grad_a = grad_down.t() @ flat if need_a else None
    grad_lb = grad.t() @ down if need_lb else None
    return grad_x, grad_w, grad_bias, grad_a, grad_lb


class _LoraLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float):
        flat = x.reshape(-1, x.shape[-1])
        out, down = lora_forward(flat, weight, bias, lora_a, lora_b, scaling)
        ctx.save_for_backward(flat, weight, lora_a, lora_b, down)
        ctx.scaling, ctx.has_bias, ctx.x_shape = scaling, bias is not None, x.shape
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad_out):
        flat, weight, lora_a, lora_b, down = ctx.saved_tensors
        needs = list(ctx.needs_input_grad[:5])
        needs[2] = needs[2] and ctx.has_bias
        grad_x, *rest = lora_backward(grad_out.reshape(-1, grad_out.shape[-1]), flat, weight, lora_a, lora_b, down,
                                      ctx.scaling, needs)
        return (grad_x.view(ctx.x_shape) if grad_x is not None else None), *rest, None


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The autocast dtype when autocast is on for x's device, else x's own."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def cast_to(dtype: torch.dtype, *tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    """Each tensor in `dtype` (None stays None); the casts are ordinary autograd ops, so gradients come back to
    every input in its own dtype."""
    return [t if t is None or t.dtype == dtype else t.to(dtype) for t in tensors]


def lora_linear(x, weight, bias, lora_a, lora_b, scaling: float) -> torch.Tensor:
    """x W^T + b + scaling * (x A^T) B^T in the autocast dtype (else x's dtype)."""
    cast = cast_to(compute_dtype(x), x, weight, bias, lora_a, lora_b)
    with torch.autocast(x.device.type, enabled=False):
        return _LoraLinearFn.apply(*cast, float(scaling))


class FusedLoraLinear(PeftLoraLinear):
    """PEFT's LoRA linear with `lora_linear` as the forward where it applies (see the module docstring)."""

    def _fused_adapter(self, args, kwargs) -> str | None:
        if args or kwargs or self.disable_adapters or self.merged or type(self.base_layer) is not torch.nn.Linear:
            return None
        active = [name for name in self.active_adapters if name in self.lora_A]
        if len(active) != 1 or active[0] in self.lora_variant:
            return None
        dropout = self.lora_dropout[active[0]]
        if self.training and not isinstance(dropout, torch.nn.Identity) and getattr(dropout, "p", None) != 0:
            return None         # dropout only acts in training; PEFT's forward applies it
        return active[0]

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        name = self._fused_adapter(args, kwargs)
        if name is None:
            return super().forward(x, *args, **kwargs)
        base = self.base_layer
        return lora_linear(x, base.weight, base.bias, self.lora_A[name].weight, self.lora_B[name].weight,
                           self.scaling[name])


def fuse_lora_layers(model) -> int:
    """Switch every PEFT `lora.Linear` (exactly that class) in `model` to `FusedLoraLinear`; returns how many."""
    count = 0
    for module in model.modules():
        if type(module) is PeftLoraLinear:
            module.__class__ = FusedLoraLinear
            count += 1
    return count
