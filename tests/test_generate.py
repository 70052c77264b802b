"""Batched generation (left padding, length-sorted batches, order restored, stop tokens), `llmft generate` and
`llmft chat` on a hand-built run with a tiny random Llama and the real SmolLM2 tokenizer."""
import io
import json
from types import SimpleNamespace

import pytest
import torch

import llmft.evaluation.generate as gen
from llmft.cli import main
from llmft.errors import LlmftError
from llmft.evaluation.generate import GenerationOptions, as_record, chat_loop, generate, generate_tokens, stop_token_ids
from llmft.training.model import load_run_model
from llmft.data.prompts import render
from run_factory import make_run

PROMPTS = ["Hello", "Write a very long sentence about the history of the Roman empire and its roads.",
           "Name three colours.", "Hi there, how are you today?", "2+2="]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, smol_tokenizer):
    return make_run(tmp_path_factory.mktemp("gen"), smol_tokenizer)


@pytest.fixture(scope="module")
def tuned(run_dir):
    return load_run_model(run_dir)


def test_batched_generation_equals_one_prompt_at_a_time(tuned):
    model, tokenizer = tuned
    options = GenerationOptions(max_new_tokens=6, batch_size=3)
    batched = generate_tokens(model, tokenizer, PROMPTS, options)
    single = [generate_tokens(model, tokenizer, [p], GenerationOptions(max_new_tokens=6, batch_size=1))[0]
              for p in PROMPTS]
    assert batched == single
    # a random model never emits EOS here, so every completion runs to max_new_tokens
    assert [len(t) for t in batched] == [6, 6, 6, 6, 6]
    assert generate(model, tokenizer, PROMPTS[:2], options) == [
        tokenizer.decode(t, skip_special_tokens=True).strip() for t in batched[:2]]


def test_merged_adapter_gives_the_same_greedy_tokens_and_is_undone(tuned):
    """The evaluation speed-up (LoRA merged into the weights while generating) changes no greedy prediction (fp32)."""
    from peft.tuners.lora import LoraLayer

    model, tokenizer = tuned
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    options = GenerationOptions(max_new_tokens=8, batch_size=3)
    ids = tokenizer(PROMPTS[1], return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
        with model.disable_adapter():
            assert not torch.allclose(model(ids).logits, logits, atol=1e-3)     # the adapter matters here
    unmerged = generate_tokens(model, tokenizer, PROMPTS, options)
    with gen.inference_ready(model) as ready:
        assert ready is model and layers and all(layer.merged for layer in layers)
        assert generate_tokens(ready, tokenizer, PROMPTS, options) == unmerged
        with torch.no_grad():
            torch.testing.assert_close(model(ids).logits, logits, atol=1e-5, rtol=1e-5)
    assert not any(layer.merged for layer in layers)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, logits, atol=1e-5, rtol=1e-5)


def test_inference_ready_leaves_models_it_cannot_merge_alone(tuned):
    model, _ = tuned
    base = model.get_base_model()
    with gen.inference_ready(base) as ready:                   # no adapter
        assert ready is base
    with model.disable_adapter(), gen.inference_ready(model) as ready:   # base scoring: adapter off, nothing merged
        assert not any(getattr(m, "merged", False) for m in model.modules())


def test_the_output_head_sees_a_contiguous_input_while_generating(tuned):
    """generate slices the last position for the head (`logits_to_keep`); the hook hands the head a contiguous copy,
    which changes no logit, and is gone afterwards."""
    model, _ = tuned
    head = model.get_output_embeddings()
    seen = []
    hidden = torch.randn(3, 5, head.in_features)[:, -1:, :]
    assert not hidden.is_contiguous()
    with gen.contiguous_head_input(model):
        probe = head.register_forward_pre_hook(lambda module, args: seen.append(args[0].is_contiguous()))
        inside = head(hidden)
    outside = head(hidden)
    probe.remove()
    assert seen == [True, False]
    torch.testing.assert_close(inside, outside)
    assert not head._forward_pre_hooks


def test_a_bf16_base_keeps_its_adapter_beside_it_in_bf16(tuned):
    """Merging into bf16 weights would round the adapter's update to bf16's mantissa: the adapter stays unmerged, and
    runs in bf16 (PEFT loads it in fp32) while scored, its fp32 weights back afterwards."""
    import copy

    model, tokenizer = tuned
    half = copy.deepcopy(model)
    for name, param in half.named_parameters():
        if "lora_" not in name:
            param.data = param.data.to(torch.bfloat16)
    lora = {name: param.detach().clone() for name, param in half.named_parameters() if "lora_" in name}
    ids = tokenizer(PROMPTS[1], return_tensors="pt").input_ids
    with torch.no_grad():
        with half.disable_adapter():
            base_logits = half(ids).logits.float()
        fp32_adapter = half(ids).logits.float()
    with gen.inference_ready(half) as ready, torch.no_grad():
        assert ready is half and not any(getattr(m, "merged", False) for m in half.modules())
        assert {p.dtype for n, p in half.named_parameters() if "lora_" in n} == {torch.bfloat16}
        bf16_adapter = half(ids).logits.float()
    # the adapter's effect survives in bf16: far closer to the fp32 adapter's logits than to the base's
    assert (bf16_adapter - fp32_adapter).abs().mean() < 0.2 * (base_logits - fp32_adapter).abs().mean()
    for name, param in half.named_parameters():
        if "lora_" in name:
            assert param.dtype == torch.float32 and torch.equal(param, lora[name])


def test_greedy_ignores_the_model_generation_config(tuned):
    model, tokenizer = tuned
    before = generate_tokens(model, tokenizer, PROMPTS[:2], GenerationOptions(max_new_tokens=4))
    model.generation_config.do_sample, model.generation_config.temperature = True, 5.0
    try:
        assert generate_tokens(model, tokenizer, PROMPTS[:2], GenerationOptions(max_new_tokens=4)) == before
    finally:
        model.generation_config.do_sample, model.generation_config.temperature = False, 1.0


def test_sampling_is_reproducible_with_a_seed(tuned):
    model, tokenizer = tuned
    options = GenerationOptions(max_new_tokens=6, do_sample=True, temperature=1.5, top_k=50, seed=7)
    first = generate_tokens(model, tokenizer, PROMPTS, options)
    assert generate_tokens(model, tokenizer, PROMPTS, options) == first
    assert generate_tokens(model, tokenizer, PROMPTS, GenerationOptions(max_new_tokens=6)) != first


class ScriptedModel(torch.nn.Module):
    """Answers each prompt with a fixed continuation; records what generate passed in."""

    def __init__(self, continuations: dict[int, list[int]]):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.continuations = continuations   # keyed by the prompt's last token id
        self.calls = []

    def generate(self, input_ids, attention_mask, generation_config):
        self.calls.append(SimpleNamespace(input_ids=input_ids.tolist(), attention_mask=attention_mask.tolist(),
                                          config=generation_config))
        width = max(len(c) for c in self.continuations.values())
        pad = generation_config.pad_token_id
        rows = [row + (self.continuations[row[-1]] + [pad] * width)[:width] for row in input_ids.tolist()]
        return torch.tensor(rows)


class FakeTokenizer:
    eos_token_id, pad_token_id, bos_token, eos_token = 2, 2, None, "<eos>"

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [int(t) for t in text.split()]}

    def get_vocab(self):
        return {"<eos>": 2, "<|im_end|>": 9}

    def decode(self, ids, skip_special_tokens=True):
        return " " + " ".join(f"w{i}" for i in ids) + " "


def test_left_padding_sorting_stop_tokens_and_order(monkeypatch):
    import llmft.training.tokenize

    monkeypatch.setattr(llmft.training.tokenize, "special_prefix", lambda tok: [])
    model = ScriptedModel({11: [5, 6, 2, 7], 12: [8, 9, 3], 13: [4]})
    tokenizer = FakeTokenizer()
    prompts = ["11", "1 1 1 12", "1 13"]
    out = generate_tokens(model, tokenizer, prompts, GenerationOptions(batch_size=2))
    assert out == [[5, 6], [8, 9, 3], [4]]                   # cut at EOS (2); caller's order restored
    assert [c.input_ids for c in model.calls] == [[[1, 1, 1, 12], [2, 2, 1, 13]], [[11]]]   # longest first
    assert model.calls[0].attention_mask == [[1, 1, 1, 1], [0, 0, 1, 1]]                  # left padding
    assert model.calls[0].config.do_sample is False and model.calls[0].config.eos_token_id == [2]
    # the chat template's end-of-turn token stops generation too
    out = generate_tokens(ScriptedModel({11: [5, 9, 6]}), tokenizer, ["11"], template="chat")
    assert out == [[5]]
    assert generate(ScriptedModel({11: [5, 6]}), tokenizer, ["11"]) == ["w5 w6"]   # stripped
    assert generate_tokens(model, tokenizer, []) == []


def test_sampling_options_reach_generate(monkeypatch):
    import llmft.training.tokenize

    monkeypatch.setattr(llmft.training.tokenize, "special_prefix", lambda tok: [])
    model = ScriptedModel({11: [5]})
    generate_tokens(model, FakeTokenizer(), ["11"], GenerationOptions(do_sample=True, temperature=0.7, top_p=0.9,
                                                                       top_k=20, max_new_tokens=3))
    config = model.calls[0].config
    assert (config.do_sample, config.temperature, config.top_p, config.top_k, config.max_new_tokens) == (
        True, 0.7, 0.9, 20, 3)


def test_stop_tokens_of_the_real_tokenizer(smol_tokenizer):
    assert stop_token_ids(smol_tokenizer, "alpaca") == [2]          # <|im_end|> is SmolLM2's EOS
    assert stop_token_ids(smol_tokenizer, "chat") == [2, 0]         # ... and <|endoftext|>


def test_bad_options_and_empty_prompt(monkeypatch):
    import llmft.training.tokenize

    monkeypatch.setattr(llmft.training.tokenize, "special_prefix", lambda tok: [])
    with pytest.raises(LlmftError, match="temperature must be positive"):
        generate_tokens(ScriptedModel({11: [5]}), FakeTokenizer(), ["11"], GenerationOptions(temperature=0))
    with pytest.raises(LlmftError, match="prompt 2 is empty"):
        generate_tokens(ScriptedModel({11: [5]}), FakeTokenizer(), ["11", ""])


def test_as_record_fills_prompt_rows():
    assert as_record({"instruction": "Say hi"}, 3) == {
        "id": "3", "source": "", "task": "", "instruction": "Say hi", "input": "", "output": "", "references": [],
        "meta": {}}
    assert as_record({"id": "a", "prompt": "P"}) == {"id": "a", "prompt": "P", "completion": ""}
    with pytest.raises(LlmftError, match="record 4: needs an 'instruction'"):
        as_record({"input": "x"}, 4)


# ---------------------------------------------------------------- CLI

def test_cli_generate_instruction_uses_the_run_template(run_dir, tuned, capsys):
    model, tokenizer = tuned
    prompt = render(as_record({"instruction": "Name a fruit.", "input": "Red ones."}), "alpaca")[0]
    expected = generate(model, tokenizer, [prompt], GenerationOptions(max_new_tokens=5))[0]
    assert main(["generate", str(run_dir), "--instruction", "Name a fruit.", "--input", "Red ones.",
                 "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out == expected + "\n"


def test_cli_generate_file_writes_jsonl(run_dir, tuned, tmp_path):
    model, tokenizer = tuned
    rows = [{"id": "x1", "instruction": "Name a fruit."}, {"instruction": "Add 2 and 3.", "input": "2, 3"}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    prompts = [render(as_record(r), "alpaca")[0] for r in rows]
    expected = generate(model, tokenizer, prompts, GenerationOptions(max_new_tokens=4))
    assert main(["generate", str(run_dir), "--file", str(tmp_path / "in.jsonl"), "--max-new-tokens", "4",
                 "--out", str(tmp_path / "out.jsonl")]) == 0
    lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert lines == [{"id": "x1", "prediction": expected[0]}, {"id": "2", "prediction": expected[1]}]


def test_cli_generate_errors(run_dir, tmp_path, capsys):
    (tmp_path / "bad.jsonl").write_text('{"instruction": "ok"}\n{"input": "no instruction"}\n', encoding="utf-8")
    assert main(["generate", str(run_dir), "--file", str(tmp_path / "bad.jsonl")]) == 2
    assert "record 2: needs an 'instruction'" in capsys.readouterr().err
    assert main(["generate", str(tmp_path / "missing"), "--instruction", "hi"]) == 2
    assert "no such run folder" in capsys.readouterr().err
    assert main(["generate", str(run_dir), "--instruction", "hi", "--top-p", "1.5"]) == 2
    assert "top_p must be in (0, 1]" in capsys.readouterr().err


def _scripted_replies(monkeypatch):
    seen = []

    def fake_generate(model, tokenizer, prompts, options=None, *, template=None, desc=""):
        seen.append((prompts[0], template, options.do_sample))
        return [f"reply {len(seen)}"]

    monkeypatch.setattr(gen, "generate", fake_generate)
    return seen


def test_chat_with_chat_template_keeps_history_until_reset(monkeypatch, smol_tokenizer):
    seen = _scripted_replies(monkeypatch)
    lines = iter(["hello", "", "and then?", "/reset", "new topic", "/exit", "never read"])
    written = []
    turns = chat_loop(None, smol_tokenizer, {"template": "chat"}, GenerationOptions(),
                      read=lambda _p: next(lines), write=written.append)
    assert turns == 3
    chat = lambda msgs: smol_tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert [s[0] for s in seen] == [
        chat([{"role": "user", "content": "hello"}]),
        chat([{"role": "user", "content": "hello"}, {"role": "assistant", "content": "reply 1"},
              {"role": "user", "content": "and then?"}]),
        chat([{"role": "user", "content": "new topic"}]),
    ]
    assert written == [gen.CHAT_HELP, "reply 1", "reply 2", "(conversation reset)", "reply 3"]


def test_cli_chat_reads_stdin_with_the_run_template(monkeypatch, run_dir, capsys):
    seen = _scripted_replies(monkeypatch)
    monkeypatch.setattr("sys.stdin", io.StringIO("What is 2+2?\nAnd 3+3?\n"))   # EOF ends the loop
    assert main(["chat", str(run_dir), "--temperature", "0.8"]) == 0
    assert [s[0] for s in seen] == [render(as_record({"instruction": q}), "alpaca")[0]
                                    for q in ("What is 2+2?", "And 3+3?")]   # alpaca: one turn per prompt
    assert all(s[1] == "alpaca" and s[2] is True for s in seen)
    assert capsys.readouterr().out == f"{gen.CHAT_HELP}\nreply 1\nreply 2\n"


@pytest.mark.slow
def test_embedded_model_answers_and_stops_at_eos():
    from llmft.training.model import load_model, load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m")
    model = load_model("smollm2-135m")
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                             add_generation_prompt=True)
               for q in ("What is the capital of France?", "Say hello.")]
    tokens = generate_tokens(model, tokenizer, prompts, GenerationOptions(max_new_tokens=48), template="chat")
    texts = [tokenizer.decode(t, skip_special_tokens=True) for t in tokens]
    assert "Paris" in texts[0]
    assert all(len(t) < 48 for t in tokens)            # both answers ended at <|im_end|> before the limit
    assert all(2 not in t for t in tokens)             # the stop token itself is stripped
