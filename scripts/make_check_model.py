"""A small random-weight Llama with the real SmolLM2 tokenizer, for GPU checks where real weights cannot travel
(bench/gpu_train_throughput.py's "check" shape).
    python scripts/make_check_model.py TOKENIZER_DIR OUT_DIR"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from gpu_train_throughput import make_model  # noqa: E402

print("saved", sys.argv[2], make_model(Path(sys.argv[2]), "check", sys.argv[1], max_length=2048))
