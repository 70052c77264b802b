"""Decoder-block pieces that keep fewer activations for the backward pass, recomputing cheap elementwise work instead.

Per token and layer, SmolLM2-135M with LoRA in bf16 keeps ~23 KB for the backward with transformers' modules. The
SwiGLU MLP keeps gate, silu(gate), up and their product (4 x 3 KB); each RMSNorm keeps an fp32 copy of its input
(2 x 2.3 KB). Here the MLP keeps gate and up only and recomputes silu(gate) * up in the backward (two elementwise
passes), and RMSNorm keeps its bf16 input and one inverse norm per token: ~15 KB in all, so a CPU row can be longer
for the same memory.

`lean_decoder_blocks(model)` switches, in place:
- every MLP with `gate_proj`, `up_proj`, `down_proj` and a SiLU `act_fn` whose `down_proj` is a `FusedLoraLinear`:
  its forward runs `down(silu(gate(x)) * up(x))` as one autograd node for the product and the down projection
  whenever the fused LoRA path applies, and the module's own forward otherwise;
- every RMSNorm whose own forward gives bitwise the same output as `rms_norm` on a probe input (Llama, Mistral,
  Qwen2/3, Phi-3 style: `weight * (x_fp32 * rsqrt(mean(x^2) + eps)).to(dtype)`; Gemma's `1 + weight` fails the probe
  and is left alone).
The values are the modules' own (the MLP up to fp32 summation order); only what is kept for the backward changes.
"""
from __future__ import annotations

import types

import torch
import torch.nn.functional as F

from llmft.training.fused_lora import FusedLoraLinear, cast_to, lora_backward, lora_forward


class _SwiGLUDownFn(torch.autograd.Function):
    """down(silu(gate) * up) with LoRA on down, keeping gate and up (not silu(gate), not the product)."""

    @staticmethod
    def forward(ctx, gate, up, weight, bias, lora_a, lora_b, scaling: float):
        flat = F.silu(gate).mul_(up).reshape(-1, gate.shape[-1])
        out, down = lora_forward(flat, weight, bias, lora_a, lora_b, scaling)
        ctx.save_for_backward(gate, up, weight, lora_a, lora_b, down)
        ctx.scaling, ctx.has_bias = scaling, bias is not None
        return out.view(*gate.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad_out):
        gate, up, weight, lora_a, lora_b, down = ctx.saved_tensors
        need_gate, need_up, need_w, need_b, need_a, need_lb, _ = ctx.needs_input_grad
        activated = F.silu(gate)
        flat = (activated * up).reshape(-1, gate.shape[-1])
        grad_hidden, *rest = lora_backward(grad_out.reshape(-1, grad_out.shape[-1]), flat, weight, lora_a, lora_b,
                                           down, ctx.scaling,
                                           (need_gate or need_up, need_w, need_b and ctx.has_bias, need_a, need_lb))
        grad_gate = grad_up = None
        if grad_hidden is not None:
            grad_hidden = grad_hidden.view(gate.shape)
            grad_up = grad_hidden * activated if need_up else None
            grad_gate = torch.ops.aten.silu_backward(grad_hidden * up, gate) if need_gate else None
        return grad_gate, grad_up, *rest, None


class _RMSNormFn(torch.autograd.Function):
    """weight * (x_fp32 * rsqrt(mean(x^2) + eps)).to(x.dtype), keeping x and the inverse norms."""

    @staticmethod
    def forward(ctx, x, weight, eps: float):
        x_fp32 = x.float()
        inverse = torch.rsqrt(x_fp32.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, inverse)
        return weight * (x_fp32 * inverse).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, weight, inverse = ctx.saved_tensors
        normed = x.float() * inverse
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = (grad * normed.to(x.dtype)).reshape(-1, grad.shape[-1]).sum(0, dtype=torch.float32)
            grad_weight = grad_weight.to(weight.dtype)
        grad_normed = (grad * weight).float()
        grad_x = inverse * (grad_normed - normed * (grad_normed * normed).mean(-1, keepdim=True))
        return grad_x.to(x.dtype), grad_weight, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _RMSNormFn.apply(x, weight, float(eps))


def _lean_norm_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    return rms_norm(hidden_states, self.weight, self.variance_epsilon)


def _lean_mlp_forward(self, x: torch.Tensor) -> torch.Tensor:
    down = self.down_proj
    name = down._fused_adapter((), {})
    if name is None:
        return type(self).forward(self, x)
    gate, up = self.gate_proj(x), self.up_proj(x)
    cast = cast_to(gate.dtype, down.base_layer.weight, down.base_layer.bias, down.lora_A[name].weight,
                   down.lora_B[name].weight)
    with torch.autocast(x.device.type, enabled=False):
        return _SwiGLUDownFn.apply(gate, up, *cast, float(down.scaling[name]))


def _is_silu(module) -> bool:
    return isinstance(module, torch.nn.SiLU) or type(module).__name__ == "SiLUActivation"


def _is_swiglu_mlp(module) -> bool:
    return (all(isinstance(getattr(module, n, None), torch.nn.Module) for n in ("gate_proj", "up_proj", "down_proj"))
            and _is_silu(getattr(module, "act_fn", None)) and type(module.down_proj) is FusedLoraLinear)


def _norm_matches(module) -> bool:
    """The module's own forward equals `rms_norm` bitwise on a probe, in fp32 and in the weight's dtype."""
    if not isinstance(getattr(module, "weight", None), torch.Tensor) or not hasattr(module, "variance_epsilon"):
        return False
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for dtype in {torch.float32, module.weight.dtype}:
            probe = torch.randn(3, module.weight.shape[-1], generator=generator).to(module.weight.device, dtype)
            if not torch.equal(type(module).forward(module, probe), rms_norm(probe, module.weight,
                                                                            module.variance_epsilon)):
                return False
    return True


def lean_decoder_blocks(model) -> dict[str, int]:
    """Switch the MLPs and RMSNorms described in the module docstring; returns how many of each."""
    counts = {"mlp": 0, "rmsnorm": 0}
    verdicts: dict[type, bool] = {}
    for module in model.modules():
        if _is_swiglu_mlp(module):
            module.forward = types.MethodType(_lean_mlp_forward, module)
            counts["mlp"] += 1
        elif type(module).__name__.endswith("RMSNorm"):
            if type(module) not in verdicts:
                verdicts[type(module)] = _norm_matches(module)
            if verdicts[type(module)]:
                module.forward = types.MethodType(_lean_norm_forward, module)
                counts["rmsnorm"] += 1
    return counts
