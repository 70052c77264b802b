"""Raw files -> records -> clean, deduplicated, split data -> prompt strings.

- records: `Record` (the one record type), `Reject`, `stable_id`, `validate_record`
- sources: one module per dataset (`to_records` pure, `read`, `units`); `SOURCES`, `convert`; `chat` (messages and
  ShareGPT conversations) and `table` (any table with a column mapping) read through `sources.rows`
- turns: the shape of a conversation and the role names of chat formats
- clean: rule-based filters that reject records with a countable reason
- dedup: exact and MinHash near-duplicate search, decontamination of train against test
- splits: seeded random splits per source, or the official natural-instructions task split
- mixture: per-source caps and weights on the train split
- prepare: the whole data stage into one folder (`all/train/dev/test.jsonl`, `rejects.jsonl`, `manifest.json`)
- download: the real datasets from their public URLs
- stats: counts and length percentiles of a prepared folder
- prompts: `render(record, template)` -> (prompt, response) for the alpaca, superni and chat templates
- demo: the project's own learnable demo datasets, written in the real raw formats (demo_chat: the multi-turn chat one)
"""
