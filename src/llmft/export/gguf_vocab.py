"""A Hugging Face byte-level BPE tokenizer as GGUF tokenizer metadata, the way llama.cpp reads it:
`tokenizer.ggml.model` "gpt2", `pre` (which regex splits the text before the merges), tokens, token types, merges,
the special token ids, whether BOS is added, and the chat template.

`pre` is read from the tokenizer's own pre-tokenizer rather than guessed from the model name: plain GPT-2 ByteLevel
-> "gpt-2"; per-digit split + ByteLevel -> "smollm" (llama.cpp's starcoder-style regex with single digits); a Split
regex + ByteLevel -> the llama.cpp name that transformers' GGUF loader maps to that very regex (its
GGUF_PRE_TOKENIZER_SPLITS, inverted), so the file splits text the same way in llama.cpp and when transformers
reloads it. Anything else is refused rather than written with a pre-tokenizer that would tokenize differently."""
from __future__ import annotations

import json
from dataclasses import dataclass

import gguf

from llmft.errors import LlmftError


@dataclass
class GgufVocab:
    pre: str
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    special_ids: dict[str, int]     # bos / eos / unk / pad / eot -> id
    add_bos: bool
    chat_template: str | None

    def add_to(self, writer: gguf.GGUFWriter) -> None:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.token_types)
        writer.add_token_merges(self.merges)
        for kind, token_id in self.special_ids.items():
            getattr(writer, f"add_{kind}_token_id")(token_id)
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_eos_token(False)
        if self.chat_template:
            writer.add_chat_template(self.chat_template)


def _known_split_regexes() -> dict[str, str]:
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    names: dict[str, str] = {}
    for name, regex in GGUF_PRE_TOKENIZER_SPLITS.items():
        names.setdefault(regex, name)     # the first (canonical) name of each regex
    return names


def _steps(pre_tokenizer: dict | None) -> list[dict]:
    if pre_tokenizer is None:
        return []
    return pre_tokenizer["pretokenizers"] if pre_tokenizer.get("type") == "Sequence" else [pre_tokenizer]


def pre_tokenizer_name(pre_tokenizer: dict | None, where: str) -> str:
    steps = _steps(pre_tokenizer)
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = (steps[0].get("pattern") or {}).get("Regex")
        name = _known_split_regexes().get(regex)
        if name is not None:
            return name
    raise LlmftError(f"{where}: its pre-tokenizer ({json.dumps(pre_tokenizer)[:200]}) is not one llmft can name "
                     f"for llama.cpp, which would then split text differently from training")


def _merges(model: dict) -> list[str]:
    merges = model.get("merges") or []
    return [m if isinstance(m, str) else " ".join(m) for m in merges]


def _token_table(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens by id, padded to the model's vocab_size; added special tokens are CONTROL, other added tokens
    USER_DEFINED, the padding UNUSED."""
    by_id = {token_id: token for token, token_id in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    if max(by_id) >= vocab_size:
        raise LlmftError(f"{tokenizer.name_or_path}: token id {max(by_id)} does not fit the model's vocab_size "
                         f"{vocab_size}")
    tokens, types = [], []
    for token_id in range(vocab_size):
        if token_id not in by_id:
            tokens.append(f"[PAD{token_id}]")
            types.append(gguf.TokenType.UNUSED)
        elif token_id in added:
            tokens.append(by_id[token_id])
            types.append(gguf.TokenType.CONTROL if added[token_id].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[token_id])
            types.append(gguf.TokenType.NORMAL)
    return tokens, [int(t) for t in types]


def _adds_bos(tokenizer) -> bool:
    bos = tokenizer.bos_token_id
    ids = tokenizer("a")["input_ids"]
    return bos is not None and len(ids) > 0 and ids[0] == bos


def gguf_vocab(tokenizer, vocab_size: int, end_ids: list[int]) -> GgufVocab:
    """The tokenizer's GGUF metadata; `end_ids`: EOS first, then an end-of-turn marker (written as EOT) if any."""
    where = f"tokenizer {tokenizer.name_or_path!r}"
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    model = state.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise LlmftError(f"{where}: not a byte-level BPE tokenizer (model {model.get('type')!r}"
                         f"{', byte_fallback' if model.get('byte_fallback') else ''}); llmft writes GGUF for byte-level "
                         "BPE vocabularies (Llama 3, Qwen2, SmolLM2, Mistral Nemo); for SentencePiece ones (Llama 2, "
                         "Mistral 7B) use llama.cpp's convert_hf_to_gguf.py on the merged folder")
    tokens, types = _token_table(tokenizer, vocab_size)
    special = {"bos": tokenizer.bos_token_id, "eos": end_ids[0], "unk": tokenizer.unk_token_id,
               "pad": tokenizer.pad_token_id, "eot": end_ids[1] if len(end_ids) > 1 else None}
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("default")
    return GgufVocab(pre=pre_tokenizer_name(state.get("pre_tokenizer"), where), tokens=tokens, token_types=types,
                     merges=_merges(model), special_ids={k: v for k, v in special.items() if v is not None},
                     add_bos=_adds_bos(tokenizer), chat_template=template)
