"""`llmft run`: every stage, in order, resumable.

- layout: `Layout`, the folder of a run (raw/, data/, train/, report.md, summary.json)
- recipe: `Recipe`, `load_recipe` (built-in recipes in recipes/*.yaml, `--set` overrides), `resolve_recipe`
- budget: fit the training steps and evaluation size to a wall-clock budget from measured throughput
- runner: `run_pipeline` (demo -> prepare -> budget -> train -> eval -> report)
"""
