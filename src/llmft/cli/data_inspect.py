"""`llmft data inspect PATH --template T [--model M] [-n N] [--json]`: what the model will see and learn, per
example, built by the same code as training (tokenize.encode_record): the rendered text with the trained tokens
marked (ANSI colour on a terminal, [[ ]] otherwise), or with --json one object per line
{"text": the whole rendered example, "trained": [the decoded text of each contiguous trained span]}."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from llmft.errors import LlmftError

TERMINAL_EXAMPLES = 5
COLOUR_ON, COLOUR_OFF = "\x1b[1;32m", "\x1b[0m"
BRACKET_ON, BRACKET_OFF = "[[", "]]"


def register(sub) -> None:
    from llmft.data.prompts import TEMPLATES

    p = sub.add_parser("inspect", help="show the rendered examples and the tokens training learns from")
    p.add_argument("path", metavar="PATH", help="prepared data folder or JSONL of records, {prompt, completion} or "
                   "{messages} rows")
    p.add_argument("--template", required=True, choices=TEMPLATES)
    p.add_argument("--model", default="smollm2-135m", help="model whose tokenizer (and chat template) is used")
    p.add_argument("-n", type=int, help=f"examples to show (default: {TERMINAL_EXAMPLES}, with --json all; 0: all)")
    p.add_argument("--json", action="store_true", help='one {"text", "trained"} object per line')
    p.add_argument("--split", default="train", help="split file of a prepared folder (default: train)")
    p.add_argument("--max-length", type=int, default=512, help="tokens per example, as in training")
    p.add_argument("--k-positive", type=int, default=0, choices=(0, 1, 2))
    p.add_argument("--train-on", default="all_assistant", choices=("all_assistant", "last_assistant"))
    p.add_argument("--trust-remote-code", action="store_true")
    p.set_defaults(func=run)


def rows_of(path: Path, split: str) -> tuple[Path, list[dict]]:
    from llmft.training.data import read_rows

    file = path / f"{split}.jsonl" if path.is_dir() else path
    if not file.is_file():
        raise LlmftError(f"{file}: no such file (give a prepared data folder or a JSONL file)")
    return file, read_rows(file)


def segments(example, tokenizer) -> list[tuple[str, bool]]:
    """The example's text as (decoded piece, trained) runs of consecutive tokens."""
    from llmft.training.tokenize import IGNORE_INDEX

    runs: list[tuple[list[int], bool]] = []
    for token, label in zip(example.input_ids.tolist(), example.labels.tolist()):
        trained = label != IGNORE_INDEX
        if runs and runs[-1][1] == trained:
            runs[-1][0].append(token)
        else:
            runs.append(([token], trained))
    return [(tokenizer.decode(ids, skip_special_tokens=False), trained) for ids, trained in runs]


def inspect_row(row: dict, tokenizer, args) -> dict | None:
    """{"text", "trained"} of one row, or None when no trainable token is left."""
    from llmft.training.tokenize import encode_record

    example, _ = encode_record(row, tokenizer, template=args.template, max_length=args.max_length,
                               k_positive=args.k_positive, train_on=args.train_on)
    if example is None:
        return None
    pieces = segments(example, tokenizer)
    return {"text": tokenizer.decode(example.input_ids.tolist(), skip_special_tokens=False),
            "trained": [text for text, trained in pieces if trained], "pieces": pieces,
            "tokens": len(example), "trained_tokens": example.n_trainable, "truncated": example.truncated}


def marked(pieces: list[tuple[str, bool]], colour: bool) -> str:
    on, off = (COLOUR_ON, COLOUR_OFF) if colour else (BRACKET_ON, BRACKET_OFF)
    return "".join(on + text + off if trained else text for text, trained in pieces)


def run(args) -> int:
    from llmft.training.model import load_tokenizer

    file, rows = rows_of(Path(args.path), args.split)
    limit = args.n if args.n is not None else (0 if args.json else TERMINAL_EXAMPLES)
    if limit < 0:
        raise LlmftError(f"-n must be >= 0, got {limit}")
    tokenizer = load_tokenizer(args.model, trust_remote_code=args.trust_remote_code)
    colour = sys.stdout.isatty()
    for number, row in enumerate(rows[:limit] if limit else rows, 1):
        shown = inspect_row(row, tokenizer, args)
        if shown is None:
            print(f"{file}: record {number} ({row.get('id', number)}): no trainable token within max_length "
                  f"{args.max_length}; training drops it", file=sys.stderr)
            if args.json:
                print(json.dumps({"text": "", "trained": []}, ensure_ascii=False))
            continue
        if args.json:
            print(json.dumps({"text": shown["text"], "trained": shown["trained"]}, ensure_ascii=False))
            continue
        cut = ", truncated" if shown["truncated"] else ""
        print(f"--- example {number} ({row.get('id', f'line {number}')}): {shown['tokens']} tokens, "
              f"{shown['trained_tokens']} trained{cut} ---")
        print(marked(shown["pieces"], colour))
    return 0
