"""llmft: instruction-tune causal LMs with supervised fine-tuning."""
import os

# Before torch loads its OpenMP runtime: how long an idle OpenMP thread spins before it sleeps. libgomp's default
# (300,000 spins) collapses a 2-thread run that shares a core with another busy process (SmolLM2 LoRA on 2 cores:
# 30 real tokens/s); never spinning (OMP_WAIT_POLICY=PASSIVE) costs 40% on a quiet machine (252 vs 409). 10,000
# spins keeps the quiet speed (409) and limits the damage (132); the trainer also leaves busy cores out
# (train.set_cpu_threads). A user's own setting wins.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

__version__ = "0.1.0"
