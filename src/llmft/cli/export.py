"""`llmft export gguf`: a run or merged folder -> a GGUF file for llama.cpp / Ollama, with a Modelfile beside it."""
from __future__ import annotations

import sys
from pathlib import Path

from llmft.errors import LlmftError


def register(sub) -> None:
    p = sub.add_parser("export", help="export a tuned model for a runtime (gguf: llama.cpp, Ollama)")
    formats = p.add_subparsers(dest="format", required=True, metavar="FORMAT")
    g = formats.add_parser("gguf", help="a GGUF file with the tokenizer and the training chat template, and an "
                                        "Ollama Modelfile beside it")
    g.add_argument("source", metavar="RUN_OR_MERGED_FOLDER",
                   help="a training run folder (its adapter is merged in memory) or a `llmft merge` folder")
    g.add_argument("--out", required=True, help="the .gguf file to write (must not exist)")
    g.add_argument("--dtype", default="f16", choices=("f16", "bf16", "q8_0"),
                   help="weight type of the matrices (norms and biases stay f32); default f16")
    g.add_argument("--modelfile", help="where to write the Ollama Modelfile (default: Modelfile beside --out)")
    g.set_defaults(func=_gguf)


def _gguf(args) -> int:
    from llmft.export import export_gguf

    source = Path(args.source)
    if not source.is_dir():
        raise LlmftError(f"{source}: no such folder")
    out, modelfile = export_gguf(source, args.out, args.dtype, modelfile=args.modelfile)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB) and {modelfile}", file=sys.stderr)
    return 0
