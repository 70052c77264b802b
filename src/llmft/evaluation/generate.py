"""Batched generation: prompts sorted by length into left-padded batches, `model.generate` with the KV cache,
stopping at EOS (and the chat template's end-of-turn token), completions returned in the caller's order."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Sequence

import torch

from llmft.errors import LlmftError
from llmft.io import progress

# End-of-turn tokens of common chat templates; generation stops at whichever the tokenizer knows.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


@dataclass
class GenerationOptions:
    max_new_tokens: int = 64
    do_sample: bool = False          # greedy unless asked
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0                   # 0: no top-k filter
    seed: int | None = None
    batch_size: int = 16

    def validate(self) -> list[str]:
        problems = []
        if self.max_new_tokens <= 0:
            problems.append(f"max_new_tokens must be positive, got {self.max_new_tokens}")
        if self.batch_size <= 0:
            problems.append(f"batch_size must be positive, got {self.batch_size}")
        if self.temperature <= 0:
            problems.append(f"temperature must be positive, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            problems.append(f"top_k must be >= 0, got {self.top_k}")
        return problems


def stop_token_ids(tokenizer, template: str | None = None) -> list[int]:
    """EOS, plus the end-of-turn token of a chat template when the run uses one."""
    ids = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    if template == "chat":
        vocab = tokenizer.get_vocab()
        ids += [vocab[tok] for tok in END_OF_TURN_TOKENS if tok in vocab]
    if not ids:
        raise LlmftError("the tokenizer has no EOS token and no end-of-turn token: generation could not stop")
    return list(dict.fromkeys(ids))


def encode_prompt(tokenizer, prompt: str, prefix: list[int] | None = None) -> list[int]:
    """Prompt token ids exactly as training built them (tokenize.encode): the tokenizer's leading special tokens,
    then the prompt tokenized without special tokens (unless the prompt text already starts with them)."""
    from llmft.training.tokenize import special_prefix

    prefix = list(special_prefix(tokenizer) if prefix is None else prefix)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return ids if prefix and ids[:len(prefix)] == prefix else prefix + ids   # a chat template wrote it already


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first, so an out-of-memory shows at once)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def left_pad(sequences: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq):] = 1
    return ids.to(device), mask.to(device)


def _generation_config(options: GenerationOptions, stop_ids: list[int], pad_id: int):
    from transformers import GenerationConfig

    sampling = dict(temperature=options.temperature, top_p=options.top_p, top_k=options.top_k) \
        if options.do_sample else {}
    # A fresh config, so a model's own generation_config (often sampling) never changes greedy decoding.
    return GenerationConfig(max_new_tokens=options.max_new_tokens, do_sample=options.do_sample,
                            eos_token_id=stop_ids, pad_token_id=pad_id, use_cache=True, **sampling)


def _cut_at_stop(tokens: list[int], stop_ids: set[int]) -> list[int]:
    for i, tok in enumerate(tokens):
        if tok in stop_ids:
            return tokens[:i]
    return tokens


def to_inference_device(model):
    """Put a freshly loaded model on the GPU when there is one (loading leaves it on the CPU)."""
    if torch.cuda.is_available() and model_device(model).type == "cpu":
        model = model.to("cuda")
    return model


def inference_dtype(setting: str = "auto") -> torch.dtype:
    """The dtype to score and generate in: bf16 when asked (`true`), fp32 when told `false`; `auto`: bf16 on a GPU
    that supports it, and on a CPU only where its bf16 matmuls measured faster than fp32 (training's probe, cached per
    machine), since emulated bf16 (AVX2-only CPUs) runs many times slower."""
    from llmft.training.cpu import choose_compute_dtype

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.bfloat16 if choose_compute_dtype(setting, device).bf16 else torch.float32


def model_device(model) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def contiguous_head_input(model):
    """While the block lasts, the output head gets a contiguous input. `generate` asks for the last position's
    logits only (`logits_to_keep`), a strided slice of the hidden states, and CPU matmuls on a strided input take a
    slow path: SmolLM2's 49152 x 576 head on 16 such rows ran 981 ms in bf16 against 9 ms contiguous (fp32: 93 vs
    26 ms), once per generated batch."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        yield model
        return
    handle = head.register_forward_pre_hook(lambda module, args: (args[0].contiguous(), *args[1:]))
    try:
        yield model
    finally:
        handle.remove()


@contextlib.contextmanager
def inference_ready(model):
    """The model made cheaper to run for as long as the block lasts, and restored afterwards. An fp32 base: a PEFT
    LoRA adapter is merged into its weights (W + s B A), so each linear layer is one matmul instead of three plus the
    adapter's Python; greedy outputs equal the unmerged model's up to float rounding (tests/test_generate.py). A bf16
    base is not merged: the adapter's small update added to bf16 weights is rounded to their 8-bit mantissa (SuperNI
    run A, 160 test records: fp32 40.0 ROUGE-L, bf16 merged 38.8). Its adapter (which PEFT loads in fp32) runs in
    bf16 beside it instead: the update is rounded at the layer's output, not into the weights (SuperNI run C, the same
    160 records: fp32 adapter 42.6, bf16 adapter 42.5, 134 completions equal) and generation took 98 s instead of
    125. Anything else (no adapter, DoRA, a quantized base, several or disabled adapters) passes through unchanged."""
    base_dtype = _lora_base_dtype(model) if _single_lora(model) else None
    if base_dtype == torch.float32:
        model.merge_adapter()
        try:
            yield model
        finally:
            model.unmerge_adapter()
    elif base_dtype in (torch.bfloat16, torch.float16):
        with _adapter_in(model, base_dtype):
            yield model
    else:
        yield model


@contextlib.contextmanager
def _adapter_in(model, dtype: torch.dtype):
    """The LoRA weights cast to `dtype` while the block lasts (their own dtypes restored afterwards)."""
    params = [p for name, p in model.named_parameters() if "lora_" in name]
    saved = [p.data for p in params]
    for param in params:
        param.data = param.data.to(dtype)
    try:
        yield model
    finally:
        for param, data in zip(params, saved):
            param.data = data


def _lora_base_dtype(model) -> torch.dtype | None:
    """The one dtype of the LoRA layers' base weights (None when they differ or there are none)."""
    from peft.tuners.lora import LoraLayer

    dtypes = {layer.get_base_layer().weight.dtype for layer in model.modules() if isinstance(layer, LoraLayer)}
    return dtypes.pop() if len(dtypes) == 1 else None


def _single_lora(model) -> bool:
    """One active plain LoRA adapter on an unquantized base (what merging or recasting may touch)."""
    from peft import PeftModel

    config = getattr(model, "peft_config", None) if isinstance(model, PeftModel) else None
    if not config or getattr(model, "_adapters_disabled", False) or len(config) != 1:
        return False
    (adapter,) = config.values()
    if getattr(adapter, "peft_type", None) != "LORA" or getattr(adapter, "use_dora", False):
        return False
    base = model.get_base_model()
    return not (getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False)
                or getattr(base.config, "quantization_config", None))


@torch.no_grad()
def generate_tokens(model, tokenizer, prompts: Sequence[str], options: GenerationOptions | None = None, *,
                    template: str | None = None, desc: str = "generating") -> list[list[int]]:
    """The new token ids for each prompt (prompt and stop token stripped), in the order of `prompts`: texts, or
    token id lists used as they are (evaluation passes the prompt tokens of the training example)."""
    options = options or GenerationOptions()
    problems = options.validate()
    if problems:
        raise LlmftError("invalid generation options: " + "; ".join(problems))
    stop_ids = stop_token_ids(tokenizer, template)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    config = _generation_config(options, stop_ids, pad_id)
    if options.seed is not None:
        torch.manual_seed(options.seed)
    from llmft.training.tokenize import special_prefix

    prefix = special_prefix(tokenizer)
    encoded = [encode_prompt(tokenizer, p, prefix) if isinstance(p, str) else list(p) for p in prompts]
    empty = [i for i, ids in enumerate(encoded) if not ids]
    if empty:
        raise LlmftError(f"prompt {empty[0] + 1} is empty: nothing to generate from")
    device = model_device(model)
    results: list[list[int]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        with contiguous_head_input(model):
            for batch in progress(length_sorted_batches([len(e) for e in encoded], options.batch_size), desc=desc,
                                  unit="batch"):
                ids, mask = left_pad([encoded[i] for i in batch], pad_id, device)
                out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
                for row, index in enumerate(batch):
                    results[index] = _cut_at_stop(out[row, ids.shape[1]:].tolist(), set(stop_ids))
    finally:
        model.train(was_training)
    return results


def generate(model, tokenizer, prompts: Sequence[str], options: GenerationOptions | None = None, *,
             template: str | None = None, desc: str = "generating") -> list[str]:
    """Completions (decoded, special tokens and surrounding whitespace removed), in the order of `prompts`."""
    tokens = generate_tokens(model, tokenizer, prompts, options, template=template, desc=desc)
    return [tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens]


# ---------------------------------------------------------------- prompts from a run

def as_record(row: dict, number: int = 1) -> dict:
    """A prompt row (at least `instruction`, or `prompt`) filled out to what the templates read."""
    if "prompt" in row:
        return {"id": str(row.get("id", number)), "prompt": row["prompt"], "completion": row.get("completion", "")}
    if not isinstance(row.get("instruction"), str):
        raise LlmftError(f"record {number}: needs an 'instruction' string (or a 'prompt')")
    return {"id": str(row.get("id", number)), "source": row.get("source", ""), "task": row.get("task", ""),
            "instruction": row["instruction"], "input": row.get("input") or "", "output": row.get("output") or "",
            "references": row.get("references") or [], "meta": row.get("meta") or {}}


def load_for_generation(run_dir, *, adapter: bool = True, trust_remote_code: bool = False):
    """(model on the inference device, tokenizer, template info) of a run: what `llmft generate`, `llmft chat` and
    `llmft.generate` start from."""
    from llmft.training.model import load_run_model, load_template

    model, tokenizer = load_run_model(run_dir, adapter=adapter, trust_remote_code=trust_remote_code)
    info = getattr(model, "llmft_template", None) or load_template(run_dir)
    return to_inference_device(model), tokenizer, info


def generate_for_rows(model, tokenizer, info: dict, rows: Sequence[dict],
                      options: GenerationOptions) -> tuple[list[dict], list[str]]:
    """The rows as records (`as_record`) and their completions under the run's template."""
    records = [as_record(row, n) for n, row in enumerate(rows, 1)]
    return records, generate(model, tokenizer, run_prompts(records, tokenizer, info), options,
                             template=info["template"])


def run_prompts(records: Sequence[dict], tokenizer, info: dict) -> list[str]:
    """Prompts rendered with the template the run was trained with (template.json), so inference matches."""
    from llmft.data.prompts import render

    return [render(r, info["template"], tokenizer=tokenizer, k_positive=info.get("k_positive", 0))[0]
            for r in records]


# ---------------------------------------------------------------- chat

CHAT_HELP = "Type a message; /reset starts a new conversation, /exit (or Ctrl-D) quits."


def chat_loop(model, tokenizer, info: dict, options: GenerationOptions, *, read=input, write=print) -> int:
    """An interactive loop: with the `chat` template the conversation so far is the prompt; with other templates
    each turn is its own instruction (those templates have no notion of earlier turns). Returns turns answered."""
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    template = info["template"]
    history: list[dict] = []
    turns = 0
    write(CHAT_HELP)
    while True:
        try:
            text = read("> ").strip()
        except EOFError:
            break
        if text == "/exit":
            break
        if text == "/reset":
            history = []
            write("(conversation reset)")
            continue
        if not text:
            continue
        if template == "chat":
            history.append({"role": "user", "content": text})
            prompt = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
        else:
            prompt = run_prompts([as_record({"instruction": text})], tokenizer, info)[0]
        reply = generate(model, tokenizer, [prompt], options, template=template, desc="reply")[0]
        if template == "chat":
            history.append({"role": "assistant", "content": reply})
        write(reply)
        turns += 1
    return turns
