"""`export_gguf`: a merged model folder (or a run folder, merged first) -> one GGUF file that llama.cpp, Ollama and
transformers' GGUF loader read: the weights in f16, bf16 or q8_0 (norms and biases stay f32, as llama.cpp keeps
them), the hyperparameters under the architecture's keys, the tokenizer and the training chat template.

Tensor names come from gguf's own TensorNameMap for the architecture. Llama-family q_proj/k_proj rows are
permuted into llama.cpp's rotary layout (pairs of dimensions interleaved per head; HF keeps the two halves apart),
the inverse of what transformers' GGUF loader undoes (LlamaTensorProcessor); Qwen2 runs NEOX-style rope in
llama.cpp and keeps HF's order. Mistral is written as llama.cpp does: the llama architecture. Rope scaling that
only rescales frequencies (Llama 3.1/3.2's `llama3`, `linear`) goes in as llama.cpp's `rope_freqs` tensor; others
(yarn, dynamic, longrope) are refused."""
from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch

from llmft.errors import LlmftError
from llmft.export.gguf_vocab import gguf_vocab

GGUF_DTYPES = ("f16", "bf16", "q8_0")
_FILE_TYPES = {"f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
               "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
_MATRIX_TYPES = {"f16": gguf.GGMLQuantizationType.F16, "bf16": gguf.GGMLQuantizationType.BF16,
                 "q8_0": gguf.GGMLQuantizationType.Q8_0}


@dataclass(frozen=True)
class ArchSpec:
    arch: gguf.MODEL_ARCH
    permute_qk: bool          # llama.cpp's non-NEOX rope wants q/k rows interleaved per head


ARCHS = {
    "llama": ArchSpec(gguf.MODEL_ARCH.LLAMA, permute_qk=True),
    "mistral": ArchSpec(gguf.MODEL_ARCH.LLAMA, permute_qk=True),
    "qwen2": ArchSpec(gguf.MODEL_ARCH.QWEN2, permute_qk=False),
}


# Rope scalings that only rescale each rotary frequency (no attention factor, nothing that depends on the sequence
# length): llama.cpp takes them as a `rope_freqs` tensor of per-frequency divisors.
FREQUENCY_ONLY_ROPE = ("llama3", "linear")


def arch_spec(config, where: str) -> ArchSpec:
    spec = ARCHS.get(config.model_type)
    if spec is None:
        raise LlmftError(f"{where}: model type {config.model_type!r} cannot be exported to GGUF by llmft yet "
                         f"(supported: {', '.join(ARCHS)}); llama.cpp's convert_hf_to_gguf.py reads the merged folder")
    rope_type = _rope_type(config)
    if rope_type not in ("default", *FREQUENCY_ONLY_ROPE):
        raise LlmftError(f"{where}: rope scaling {rope_type!r} is not written by llmft's GGUF export (it handles "
                         f"{', '.join(FREQUENCY_ONLY_ROPE)} and none)")
    return spec


def _rope_type(config) -> str:
    return str((getattr(config, "rope_parameters", None) or {}).get("rope_type", "default"))


def rope_frequency_factors(model) -> np.ndarray | None:
    """llama.cpp's `rope_freqs`: what each default rotary frequency is divided by. Taken from the frequencies
    transformers itself computed for the model (default / actual), so no scaling formula is written twice. None for
    unscaled rope. transformers' GGUF loader ignores this tensor: a reloaded file runs with unscaled rope."""
    if _rope_type(model.config) == "default":
        return None
    rotary = next(m for m in model.modules() if isinstance(getattr(m, "inv_freq", None), torch.Tensor))
    if float(getattr(rotary, "attention_scaling", 1.0)) != 1.0:
        raise LlmftError(f"rope scaling {_rope_type(model.config)!r} scales attention too; not exportable here")
    dim = _head_dim(model.config)
    theta = float(model.config.rope_parameters["rope_theta"])
    default = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    return (default / rotary.inv_freq.double()).float().numpy()


def permute_for_llama_cpp(weight: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotary layout (first half / second half of each head) -> llama.cpp's (dimension pairs interleaved)."""
    head_half = weight.shape[0] // n_head // 2
    return (weight.reshape(n_head, 2, head_half, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _add_hyperparameters(writer: gguf.GGUFWriter, config, name: str, dtype: str) -> None:
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(float((config.rope_parameters or {}).get("rope_theta", 10000.0)))
    writer.add_rope_dimension_count(_head_dim(config))
    if _head_dim(config) != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(_head_dim(config))
        writer.add_value_length(_head_dim(config))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(_FILE_TYPES[dtype])
    if dtype == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _tensor_data(name: str, tensor: torch.Tensor, dtype: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """f32 for vectors (norms, biases); the chosen type for matrices (f16 where a q8_0 row is not whole blocks)."""
    data = tensor.detach().to(torch.float32).numpy()
    if data.ndim < 2:
        return data, gguf.GGMLQuantizationType.F32
    qtype = _MATRIX_TYPES[dtype]
    if qtype == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
        qtype = gguf.GGMLQuantizationType.F16
    return gguf.quants.quantize(data, qtype), qtype


def gguf_tensors(model, spec: ArchSpec, dtype: str, where: str):
    """(gguf name, data, type) for every weight of `model`, in state-dict order."""
    config = model.config
    names = gguf.get_tensor_name_map(spec.arch, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    unmapped = []
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue                  # llama.cpp reuses token_embd; transformers reads the absence as tied
        mapped = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if mapped is None:
            unmapped.append(hf_name)
            continue
        data = tensor
        if spec.permute_qk and ".self_attn.q_proj." in hf_name:
            data = torch.from_numpy(permute_for_llama_cpp(tensor.float().numpy(), config.num_attention_heads))
        elif spec.permute_qk and ".self_attn.k_proj." in hf_name:
            data = torch.from_numpy(permute_for_llama_cpp(tensor.float().numpy(), config.num_key_value_heads))
        array, qtype = _tensor_data(mapped, data, dtype)
        yield mapped, array, qtype
    if unmapped:
        raise LlmftError(f"{where}: no GGUF name for {', '.join(unmapped[:3])}"
                         f"{' ...' if len(unmapped) > 3 else ''}; the export would lose these weights")


@contextlib.contextmanager
def _atomic_path(out: Path):
    """A temporary path beside `out`, renamed to `out` when the block succeeds (folders' temporary tag)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.llmft-tmp-", dir=out.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_gguf(model, tokenizer, end_ids: list[int], out: Path, dtype: str, name: str) -> Path:
    """Write `model` + `tokenizer` (whose chat_template goes in as is) to the GGUF file `out`."""
    if dtype not in GGUF_DTYPES:
        raise LlmftError(f"--dtype must be one of {', '.join(GGUF_DTYPES)}, got {dtype!r}")
    where = str(getattr(model.config, "_name_or_path", "") or name)
    spec = arch_spec(model.config, where)
    vocab = gguf_vocab(tokenizer, model.config.vocab_size, end_ids)
    with _atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[spec.arch])
        try:
            _add_hyperparameters(writer, model.config, name, dtype)
            vocab.add_to(writer)
            factors = rope_frequency_factors(model)
            if factors is not None:
                writer.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", factors,
                                  raw_dtype=gguf.GGMLQuantizationType.F32)
            for gguf_name, array, qtype in gguf_tensors(model, spec, dtype, where):
                writer.add_tensor(gguf_name, array, raw_dtype=qtype)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    return out
