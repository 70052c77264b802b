"""`llmft data format DIR --template T --out DIR2`: a prepared data folder as `{"prompt", "completion"}` JSONL per
split (TRL's prompt-completion format; the completion is the response without EOS, TRL appends it)."""
from __future__ import annotations

from pathlib import Path

from llmft.errors import InputFormatError, LlmftError
from llmft.folders import check_not_inside, new_folder
from llmft.io import dumps_record, progress, read_jsonl, write_json
from llmft.data.prompts import TEMPLATES, render

SPLITS = ("train", "dev", "test")


def load_tokenizer(name: str):
    try:
        from llmft.training.model import load_tokenizer as load
    except ImportError:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(name)
    return load(name)


def format_split(path: Path, out: Path, template: str, tokenizer, k_positive: int) -> int:
    """Render every record of one split file into `out`; a bad record names the file and its line."""
    n = 0
    with open(out, "w", encoding="utf-8", newline="\n") as f:
        for record in progress(read_jsonl(path), desc=f"format {path.name}", unit=" rec"):
            n += 1
            try:
                prompt, completion = render(record, template, tokenizer=tokenizer, k_positive=k_positive)
            except LlmftError as e:
                raise InputFormatError(path, f"record {n}: {e}") from None
            f.write(dumps_record({"prompt": prompt, "completion": completion}) + "\n")
    return n


def format_folder(data_dir: Path, out: Path, template: str, *, tokenizer=None, k_positive: int = 0,
                  model: str | None = None) -> dict[str, int]:
    splits = [s for s in SPLITS if (data_dir / f"{s}.jsonl").is_file()]
    if not splits:
        raise LlmftError(f"{data_dir}: no train.jsonl, dev.jsonl or test.jsonl (run `llmft data prepare` first)")
    if template == "chat" and tokenizer is None:
        raise LlmftError("--template chat needs --model (the tokenizer's chat template)")
    check_not_inside(out, [data_dir])
    counts = {}
    with new_folder(out, "data format") as tmp:
        for split in splits:
            counts[split] = format_split(data_dir / f"{split}.jsonl", tmp / f"{split}.jsonl", template, tokenizer,
                                         k_positive)
        write_json(tmp / "format.json", {"template": template, "k_positive": k_positive, "model": model,
                                         "source": str(data_dir), "counts": counts})
    return counts


def run(args) -> int:
    tokenizer = load_tokenizer(args.model) if args.model else None
    counts = format_folder(Path(args.data_dir), Path(args.out), args.template, tokenizer=tokenizer,
                           k_positive=args.k_positive, model=args.model)
    for split, n in counts.items():
        print(f"{split}: {n} prompt/completion rows -> {Path(args.out) / (split + '.jsonl')}")
    return 0


def register(sub) -> None:
    parser = sub.add_parser("format", help="render a prepared data folder as prompt/completion JSONL per split")
    parser.add_argument("data_dir", metavar="DIR", help="prepared data folder (train/dev/test.jsonl)")
    parser.add_argument("--template", required=True, choices=TEMPLATES)
    parser.add_argument("--model", help="model whose tokenizer gives the chat template (needed for --template chat)")
    parser.add_argument("--k-positive", type=int, default=0, choices=(0, 1, 2),
                        help="superni: positive examples in the prompt")
    parser.add_argument("--out", required=True, help="output folder, written atomically")
    parser.set_defaults(func=run)
