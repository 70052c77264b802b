"""Bottleneck adapters: a small residual feed-forward layer, `h + up(act(down(h)))`, after sublayers of every decoder
block, trained while the base model stays frozen.

Placements: `houlsby` (Houlsby et al. 2019) adapts the output of the attention and of the MLP of every block;
`pfeiffer` (Pfeiffer et al. 2020) the output of the MLP only. Either way the adapter sits on the sublayer's output
before the block adds its residual stream back. The up-projection starts at zero, so a freshly attached model computes
exactly what the base model does.

The adapters are plain modules registered on each decoder layer (`bottleneck_self_attn`, `bottleneck_mlp`) and
applied by a forward hook on the sublayer, so the base model's parameter names, its forwards (including the lean
forwards of lean_blocks.py, which replace `forward`, not `__call__`), gradient checkpointing, DDP and FSDP wrapping
stay as they are. Any decoder whose layers have `self_attn` and `mlp` submodules qualifies (Llama/SmolLM2, Mistral,
Qwen2/3, Gemma, Phi-3); others (GPT-2's `attn`) are refused by name.

A run folder keeps them as `adapter/bottleneck.safetensors` (the trainable tensors, keyed like the model's own
parameters) and `adapter/bottleneck_config.json` (the BottleneckSpec). They are new layers: they cannot be merged
into the base weights.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from llmft import io
from llmft.errors import LlmftError

WEIGHTS_FILE = "bottleneck.safetensors"
CONFIG_FILE = "bottleneck_config.json"
FORMAT = "llmft-bottleneck/1"
PLACEMENTS = {"houlsby": ("self_attn", "mlp"), "pfeiffer": ("mlp",)}
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
SUPPORTED = ("decoder layers with `self_attn` and `mlp` submodules (Llama/SmolLM2, Mistral, Qwen2/3, Gemma, "
             "Phi-3)")
CHILD_PREFIX = "bottleneck_"


@dataclass
class BottleneckSpec:
    size: int                       # bottleneck width
    placement: str = "houlsby"
    activation: str = "relu"
    train_norms: bool = False
    hidden_size: int = 0            # the model's; checked when loading

    def problems(self) -> list[str]:
        problems = []
        if self.size <= 0:
            problems.append(f"size must be positive, got {self.size}")
        if self.placement not in PLACEMENTS:
            problems.append(f"placement must be one of {', '.join(PLACEMENTS)}, got {self.placement!r}")
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        return problems


def spec_from_config(cfg, hidden_size: int) -> BottleneckSpec:
    """TrainConfig keys -> a spec: `adapter_reduction` > 0 sets the width to hidden_size / reduction (at least 1)."""
    size = max(1, round(hidden_size / cfg.adapter_reduction)) if cfg.adapter_reduction > 0 else cfg.adapter_size
    return BottleneckSpec(size=size, placement=cfg.adapter_placement, activation=cfg.adapter_activation,
                          train_norms=cfg.adapter_train_norms, hidden_size=hidden_size)


class BottleneckAdapter(nn.Module):
    """`h + up(act(down(h)))` with `up` zeroed at the start. The weights stay in their own dtype (fp32 masters when
    training): under autocast the matmuls run in the autocast dtype; outside it the input is cast to the weights'
    dtype and the result back to the input's."""

    def __init__(self, hidden_size: int, size: int, activation: str):
        super().__init__()
        self.down = nn.Linear(hidden_size, size)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(size, hidden_size)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.enabled = True

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return hidden
        x = hidden
        if not torch.is_autocast_enabled(hidden.device.type):
            x = hidden.to(self.down.weight.dtype)
        return hidden + self.up(self.act(self.down(x))).to(hidden.dtype)

    def adapt_output(self, module, args, output):
        """Forward hook of the adapted sublayer: attention returns (output, weights), an MLP a tensor."""
        if isinstance(output, tuple):
            return (self(output[0]), *output[1:])
        return self(output)


# ---------------------------------------------------------------- attaching

def decoder_layers(model) -> list[nn.Module]:
    """The decoder blocks that take adapters: modules with both a `self_attn` and an `mlp` submodule, searched in the
    text decoder only (a vision tower's encoder layers have the same names)."""
    root = model
    with contextlib.suppress(AttributeError, NotImplementedError, TypeError):
        root = model.get_decoder() or model
    return [m for m in root.modules()
            if isinstance(getattr(m, "self_attn", None), nn.Module) and isinstance(getattr(m, "mlp", None), nn.Module)]


def _model_hidden_size(model) -> int:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(config.hidden_size)


def _architecture(model) -> str:
    return f"{getattr(model.config, 'model_type', '?')} ({type(model).__name__})"


def attach_bottleneck(model, spec: BottleneckSpec) -> list[str]:
    """Add one adapter per adapted sublayer of every decoder block, freeze everything else (the norms stay trainable
    with `train_norms`); returns the names of the trainable parameters. The adapters are fp32 on the model's device,
    initialised from torch's current random state (seed before calling for identical adapters)."""
    problems = spec.problems()
    if problems:
        raise LlmftError("bottleneck adapter: " + "; ".join(problems))
    layers = decoder_layers(model)
    if not layers:
        raise LlmftError(f"bottleneck adapters cannot be placed in {_architecture(model)}: they need {SUPPORTED}; "
                         f"use --method lora or --method full for this model")
    if spec.hidden_size and spec.hidden_size != _model_hidden_size(model):
        raise LlmftError(f"bottleneck adapters of hidden size {spec.hidden_size} do not fit {_architecture(model)} "
                         f"(hidden size {_model_hidden_size(model)})")
    spec.hidden_size = _model_hidden_size(model)
    device = next(model.parameters()).device
    model.requires_grad_(False)
    for layer in layers:
        for sublayer in PLACEMENTS[spec.placement]:
            name = CHILD_PREFIX + sublayer
            if hasattr(layer, name):
                raise LlmftError(f"{_architecture(model)} already has bottleneck adapters attached")
            adapter = BottleneckAdapter(spec.hidden_size, spec.size, spec.activation).to(device)
            layer.add_module(name, adapter)
            getattr(layer, sublayer).register_forward_hook(adapter.adapt_output)
    if spec.train_norms:
        for module in model.modules():
            if _is_norm(module):
                module.requires_grad_(True)
    model.llmft_bottleneck = spec
    return [n for n, p in model.named_parameters() if p.requires_grad]


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith(("RMSNorm", "LayerNorm"))


def adapters(model) -> list[BottleneckAdapter]:
    return [m for m in model.modules() if isinstance(m, BottleneckAdapter)]


def has_bottleneck(model) -> bool:
    return getattr(model, "llmft_bottleneck", None) is not None


@contextlib.contextmanager
def bottleneck_disabled(model):
    """The base model's computation (the adapters pass their input through) inside the block. Trained norms, when
    `train_norms` was on, keep their trained values."""
    layers = adapters(model)
    for adapter in layers:
        adapter.enabled = False
    try:
        yield model
    finally:
        for adapter in layers:
            adapter.enabled = True


# ---------------------------------------------------------------- saving and loading

def is_bottleneck_folder(folder: str | Path) -> bool:
    return (Path(folder) / CONFIG_FILE).exists()


def save_bottleneck(folder: str | Path, state: dict[str, torch.Tensor], spec: BottleneckSpec) -> None:
    """`state`: the trainable tensors keyed like the model's parameters (adapters, and norms with train_norms)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    save_file({n: t.detach().contiguous().cpu() for n, t in state.items()}, str(folder / WEIGHTS_FILE),
              metadata={"format": FORMAT})
    io.write_json(folder / CONFIG_FILE, {"format": FORMAT, **dataclasses.asdict(spec)})


def read_spec(folder: str | Path) -> BottleneckSpec:
    path = Path(folder) / CONFIG_FILE
    data = io.load_json(path)
    fields = {f.name for f in dataclasses.fields(BottleneckSpec)}
    if not isinstance(data, dict) or data.get("format") != FORMAT or not fields <= set(data):
        raise LlmftError(f"{path}: not a bottleneck adapter config (expected format {FORMAT!r} with keys "
                         f"{', '.join(sorted(fields))})")
    spec = BottleneckSpec(**{k: data[k] for k in fields})
    problems = spec.problems()
    if problems:
        raise LlmftError(f"{path}: " + "; ".join(problems))
    return spec


def load_bottleneck(model, folder: str | Path):
    """Attach the adapters saved in `folder` to `model` (the base the run trained) and load their weights."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    spec = read_spec(folder)
    trainable = set(attach_bottleneck(model, spec))
    try:
        weights = load_file(str(folder / WEIGHTS_FILE))
    except (OSError, SafetensorError) as e:
        raise LlmftError(f"{folder / WEIGHTS_FILE}: cannot read the adapter weights ({e})") from None
    if set(weights) != trainable:
        missing, extra = sorted(trainable - set(weights)), sorted(set(weights) - trainable)
        raise LlmftError(f"{folder / WEIGHTS_FILE}: does not match the adapters of its config "
                         f"(missing: {missing[:3]}, unexpected: {extra[:3]})")
    model.load_state_dict(weights, strict=False)
    model.requires_grad_(False)
    return model
