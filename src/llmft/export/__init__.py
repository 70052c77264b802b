"""Export a tuned model for the runtimes people deploy with: `export_gguf` writes a GGUF file (llama.cpp, Ollama,
LM Studio) and an Ollama Modelfile beside it, from a run folder (merged in memory first) or a merged folder."""
from __future__ import annotations

from pathlib import Path

import torch

from llmft.errors import LlmftError


def _load_run(run_dir: Path):
    from llmft.evaluation.chat_template import end_token_ids, training_chat_template
    from llmft.evaluation.merge import merged_model
    from llmft.training.model import load_run_model

    if (run_dir / "model").is_dir():
        model, tokenizer = load_run_model(run_dir, adapter=True, dtype=torch.float32)
        info = model.llmft_template
    else:
        model, tokenizer, info = merged_model(run_dir)
    template = info["template"]
    tokenizer.chat_template = training_chat_template(template, tokenizer)
    return model, tokenizer, template, end_token_ids(template, tokenizer)


def template_of(tokenizer) -> str:
    """Which llmft prompt format a merged folder's chat template is (`chat` for any other template)."""
    from llmft.evaluation.chat_template import alpaca_chat_template, superni_chat_template

    return {alpaca_chat_template(): "alpaca", superni_chat_template(): "superni"}.get(tokenizer.chat_template, "chat")


def _load_merged(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    eos = None
    if (folder / "generation_config.json").exists():
        eos = GenerationConfig.from_pretrained(folder).eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    end_ids = [int(i) for i in (eos if isinstance(eos, list) else [eos]) if i is not None]
    if not end_ids:
        raise LlmftError(f"{folder}: neither generation_config.json nor the tokenizer names an end (EOS) token")
    return model, tokenizer, template_of(tokenizer), end_ids


def load_for_export(source: str | Path):
    """(model in fp32, tokenizer with the training chat template, template name, end token ids)."""
    source = Path(source)
    if (source / "template.json").exists():
        return _load_run(source)
    if (source / "config.json").exists():
        return _load_merged(source)
    raise LlmftError(f"{source}: neither a run folder (template.json) nor a model folder (config.json)")


def export_gguf(source: str | Path, out: str | Path, dtype: str = "f16", *,
                modelfile: str | Path | None = None) -> tuple[Path, Path]:
    """Write the GGUF `out` and the Ollama Modelfile (default: `Modelfile` beside it); neither may exist yet."""
    from llmft.export.gguf_file import GGUF_DTYPES, write_gguf
    from llmft.export.ollama import write_modelfile

    out = Path(out)
    modelfile = Path(modelfile) if modelfile is not None else out.parent / "Modelfile"
    if dtype not in GGUF_DTYPES:
        raise LlmftError(f"--dtype must be one of {', '.join(GGUF_DTYPES)}, got {dtype!r}")
    for path, option in ((out, "--out"), (modelfile, "--modelfile")):
        if path.exists():
            raise LlmftError(f"{path}: already exists; choose another {option} or remove it")
    model, tokenizer, template, end_ids = load_for_export(source)
    write_gguf(model, tokenizer, end_ids, out, dtype, name=Path(source).resolve().name)
    stops = [tokenizer.convert_ids_to_tokens(i) for i in end_ids]
    write_modelfile(modelfile, out, template, stops)
    return out, modelfile
