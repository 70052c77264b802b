"""A run folder -> scores, generations, a merged model, reports.

- metrics: ROUGE-L and exact match with SuperNI semantics; aggregation per source and task
- generate: batched greedy or sampled generation with the run's own template; `chat_loop`
- evaluate: `evaluate_run` (loss, perplexity, ROUGE-L, exact match of base and tuned)
- merge: `merge_run` (fold a LoRA adapter into plain safetensors weights)
- chat_template: the alpaca/superni prompt formats as Jinja chat templates (what a merged folder ships)
- model_card: the merged folder's README.md (Hub metadata header, eval results)
- report: eval tables and plots, and the `llmft run` report and closing summary
"""
