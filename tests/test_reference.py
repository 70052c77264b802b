from pathlib import Path

from llmft.reference import render

DOC = Path(__file__).resolve().parents[1] / "docs" / "reference.md"


def test_committed_reference_matches_the_code():
    text = render()
    assert "### `llmft train`" in text and "| `lora_r` | `int` | `16` |" in text
    assert DOC.read_text(encoding="utf-8") == text, "docs/reference.md is stale: python -m llmft.reference > docs/reference.md"
