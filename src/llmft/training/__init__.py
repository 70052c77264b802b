"""Prompts -> token batches -> a trained adapter or model in a run folder.

- tokenize: `encode` (loss on the response only) and `tokenize_records` (cached)
- batching: `Batcher` (packing without attention across examples, or padded batches)
- attention: the `llmft_varlen` kernel that runs each packed example on its own
- losses: chunked linear + cross-entropy, summed, for token-weighted normalisation
- fused_lora, lean_blocks: CPU speed (one autograd node per LoRA linear; leaner saved activations)
- model: `resolve_model`, `load_model`, `load_tokenizer`, `attach_adapter`, `load_run_model`
- data: `read_training_data` (a prepared folder or one JSONL file, dev rows held out)
- cpu: thread count, the bf16 choice and glibc's heap (`tune_process`, the CLI's only)
- distributed: Accelerate's engine (one process, DDP, FSDP2) and its checks
- optim: `build_model` (base + adapter), AdamW, the cosine schedule
- plan: micro-batches per step and epoch, rows per forward, passes per rank
- checkpoint: save/load a step's state atomically; `check_resumable`
- run_folder: config, manifest, metrics, summary and loss plot of a run
- trackers: `--report-to` experiment trackers (tensorboard, mlflow, wandb, trackio) as Accelerate trackers
- trainer: `Trainer` (the loop) and `train(cfg)`
"""
