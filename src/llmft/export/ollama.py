"""An Ollama Modelfile beside an exported GGUF. Ollama templates are Go templates, not Jinja, so the training prompt
formats are written out here: alpaca's instruction-only prompt with the user's message as the instruction; superni
with the SYSTEM text as the task definition and the user's message as the task input (end both with punctuation:
Tk-Instruct's added full stop is not reproduced); for `chat` no TEMPLATE line, and Ollama takes the template from the
GGUF's chat template as it does for any imported model."""
from __future__ import annotations

from pathlib import Path

from llmft.data.prompts import ALPACA_PROMPT_NO_INPUT

SUPERNI_OLLAMA = ("Definition: {{ .System }}\n\nNow complete the following example -\nInput: {{ .Prompt }}\n"
                  "Output: {{ .Response }}")


def ollama_template(template: str) -> str | None:
    if template == "alpaca":
        return ALPACA_PROMPT_NO_INPUT.replace("{instruction}", "{{ .Prompt }}") + "{{ .Response }}"
    if template == "superni":
        return SUPERNI_OLLAMA
    return None


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def modelfile_text(gguf_ref: str, template: str, stop_tokens: list[str], modelfile_name: str = "Modelfile") -> str:
    """`gguf_ref`: the GGUF's path relative to the Modelfile's folder (Ollama resolves FROM from there)."""
    lines = [f"# ollama create MODEL_NAME -f {modelfile_name}; then: ollama run MODEL_NAME",
             f"# prompt format: llmft's {template!r} training template", f"FROM ./{gguf_ref}"]
    go_template = ollama_template(template)
    if go_template is not None:
        lines.append(f'TEMPLATE """{go_template}"""')
    if template == "superni":
        lines.append('SYSTEM """Answer the input."""')
    lines += [f"PARAMETER stop {_quoted(token)}" for token in stop_tokens]
    lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n"


def write_modelfile(path: Path, gguf_path: Path, template: str, stop_tokens: list[str]) -> Path:
    import os

    from llmft.io import atomic_write

    ref = os.path.relpath(gguf_path.resolve(), path.resolve().parent)
    with atomic_write(path) as f:
        f.write(modelfile_text(ref, template, stop_tokens, path.name))
    return path
