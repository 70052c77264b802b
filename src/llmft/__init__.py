"""llmft: instruction-tune causal LMs with supervised fine-tuning.

The Python API, one call per stage (each takes a config object or keyword arguments and returns its result):

    import llmft
    manifest = llmft.prepare(out="data", alpaca=["alpaca_data.json"], split="random")
    summary = llmft.train(data="data", out="runs/lora", max_steps=100)
    scores = llmft.evaluate("runs/lora", split="test", limit=200)
    answers = llmft.generate("runs/lora", ["Give three tips for staying healthy."])
    folder = llmft.merge("runs/lora", out="merged")
    summary = llmft.run(out="runs/demo")            # the whole pipeline with a recipe (default: demo)

None of them changes process-wide settings (threads, heap); `llmft.tune_cpu()` applies what the CLI applies.
The command line (`llmft --help`) calls the same functions.
"""
from llmft.api import evaluate, generate, merge, prepare, run, train, tune_cpu

__version__ = "0.1.0"
__all__ = ["prepare", "train", "evaluate", "generate", "merge", "run", "tune_cpu", "__version__"]
