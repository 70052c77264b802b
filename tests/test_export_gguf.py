"""`llmft export gguf`: the GGUF file, reloaded by transformers' GGUF loader (and, in the slow test, run by
llama.cpp itself), predicts what the merged model predicts and carries its tokenizer and chat template.

Logit bounds, relative to the largest |logit| of the source model on the test sequence (tiny random 2-layer models,
max |logit| ~0.5-0.6): f16 3e-3, bf16 2e-2, q8_0 4e-2: about 8x what was measured, where each weight's rounding
is 2^-11 (f16), 2^-8 (bf16) or 1/254 of its 32-block's largest |weight| (q8_0). Measured (2026-12-02, transformers
5.24, gguf 0.19): Llama f16 4.0e-4, bf16 3.1e-3, q8_0 8.9e-3; Qwen2 3.2e-4, 2.4e-3, 7.5e-3; Mistral as Llama. Greedy
predictions are compared token for token for f16."""
import importlib.util

import gguf
import numpy as np
import pytest
import torch

from llmft.cli import main
from llmft.errors import LlmftError
from llmft.evaluation.merge import merge_run
from llmft.export import export_gguf
from llmft.export.gguf_file import permute_for_llama_cpp
from run_factory import make_run
from tiny_models import save_tiny_model

IDS = [[1, 504, 3458, 282, 4649, 314, 2, 9, 77, 4000, 28, 1209]]
BOUNDS = {"f16": 3e-3, "bf16": 2e-2, "q8_0": 4e-2}


@pytest.fixture(scope="module")
def merged_dir(tmp_path_factory, small_vocab_tokenizer):
    """A trained run (tiny random Llama + LoRA adapter) on the small vocabulary, merged."""
    root = tmp_path_factory.mktemp("gguf")
    base = small_model_folder(root / "base", small_vocab_tokenizer, "llama", tie=True)
    return merge_run(make_run(root, small_vocab_tokenizer, base=base), root / "merged")


@pytest.fixture(scope="module")
def real_vocab_merged_dir(tmp_path_factory, smol_tokenizer):
    """The same with SmolLM2's real 49k tokenizer (every GGUF load of it takes ~20 CPU-seconds: slow tests)."""
    root = tmp_path_factory.mktemp("gguf-real")
    return merge_run(make_run(root, smol_tokenizer), root / "merged")


@pytest.fixture(scope="module")
def f16_file(merged_dir, tmp_path_factory):
    out, _ = export_gguf(merged_dir, tmp_path_factory.mktemp("f16") / "model.gguf", "f16")
    return out


@pytest.fixture(scope="module")
def f16_loaded(f16_file):
    return _load_gguf(f16_file)


@pytest.fixture(scope="module")
def merged_loaded(merged_dir):
    return _load_folder(merged_dir)


@pytest.fixture(scope="module")
def f16_reader(f16_file):
    return gguf.GGUFReader(f16_file)


@pytest.fixture(scope="module")
def small_vocab_tokenizer(tmp_path_factory):
    """A 369-token byte-level BPE with Qwen2's split regex (the real 49k vocabulary makes every GGUF load slow):
    model folders built on it export and reload in a second."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    texts = ["Below is an instruction that describes a task. Write a response that appropriately completes it.",
             "Give three tips for staying healthy 12345", "The capital of France is Paris."] * 5
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=384, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", unk_token="<|endoftext|>")


SMALL_VOCAB = 384     # > the tokenizer's 369 tokens: the GGUF pads the rest as UNUSED, as llama.cpp's converter does


LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}   # Llama 3.2's kind, on a short scale


def small_model_folder(folder, tokenizer, arch, tie=False, rope=None):
    import transformers as tf

    common = dict(vocab_size=SMALL_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  **({"rope_parameters": rope} if rope else {}))
    config = {"llama": lambda: tf.LlamaConfig(**common, tie_word_embeddings=tie),
              "qwen2": lambda: tf.Qwen2Config(**common, tie_word_embeddings=True),
              "mistral": lambda: tf.MistralConfig(**common, sliding_window=None)}[arch]()
    torch.manual_seed(3)
    model = tf.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")):
                param.normal_(0.0, 0.5)              # random init leaves Qwen2's q/k/v biases at zero
            if rope and name.endswith(("q_proj.weight", "k_proj.weight")):
                param.mul_(6.0)                      # sharper attention: a wrong rotary frequency shows in the logits
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


SMALL_IDS = [[1, 40, 41, 200, 300, 7, 99, 250, 12, 5]]


def _load_gguf(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def _load_folder(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(folder)


def _greedy(model, ids, n=12):
    with torch.no_grad():
        out = model.generate(torch.tensor(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             pad_token_id=2)
    return out[0, len(ids[0]):].tolist()


def _max_relative_error(expected, got):
    return float((expected - got).abs().max() / expected.abs().max())


def test_f16_gguf_agrees_with_the_merged_model(merged_loaded, f16_loaded):
    merged, merged_tokenizer = merged_loaded
    reloaded, gguf_tokenizer = f16_loaded
    with torch.no_grad():
        expected, got = merged(torch.tensor(SMALL_IDS)).logits, reloaded(torch.tensor(SMALL_IDS)).logits
    assert _max_relative_error(expected, got) < BOUNDS["f16"]
    assert torch.equal(expected.argmax(-1), got.argmax(-1))
    assert _greedy(reloaded, SMALL_IDS) == _greedy(merged, SMALL_IDS)     # every greedy token of the test sequence
    assert gguf_tokenizer.chat_template == merged_tokenizer.chat_template
    messages = [{"role": "user", "content": "Add the numbers.", "input": "12 and 30"}]
    prompt = gguf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == merged_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("### Input:\n12 and 30\n\n### Response:")
    text = "Give three tips for staying healthy: 1) sleep 8h, 2) eat well... <|im_end|>"
    assert gguf_tokenizer(text)["input_ids"] == merged_tokenizer(text)["input_ids"]


def test_gguf_metadata(f16_reader):
    def field(key):
        return f16_reader.fields[key].contents()

    assert field("general.architecture") == "llama"
    assert field("tokenizer.ggml.model") == "gpt2" and field("tokenizer.ggml.pre") == "qwen2"
    assert field("tokenizer.ggml.eos_token_id") == 2 and field("tokenizer.ggml.bos_token_id") == 1
    assert field("tokenizer.ggml.padding_token_id") == 2 and field("tokenizer.ggml.add_bos_token") is False
    tokens = field("tokenizer.ggml.tokens")
    assert len(tokens) == SMALL_VOCAB and tokens[2] == "<|im_end|>" and tokens[-1] == f"[PAD{SMALL_VOCAB - 1}]"
    assert field("tokenizer.ggml.token_type")[:3] == [gguf.TokenType.CONTROL] * 3
    assert len(field("tokenizer.ggml.merges")) > 50
    assert "### Response:" in field("tokenizer.chat_template")
    types = {t.name: t.tensor_type for t in f16_reader.tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert "output.weight" not in types                              # tied embeddings: llama.cpp reuses token_embd


def test_modelfile_beside_the_gguf(f16_file):
    text = (f16_file.parent / "Modelfile").read_text()
    assert "FROM ./model.gguf\n" in text
    assert 'TEMPLATE """Below is an instruction that describes a task.' in text
    assert "{{ .Prompt }}\n\n### Response:{{ .Response }}" in text
    assert 'PARAMETER stop "<|im_end|>"' in text


@pytest.mark.parametrize("arch,dtype", [("llama", "f16"), ("llama", "bf16"), ("llama", "q8_0"), ("qwen2", "f16"),
                                        ("qwen2", "q8_0"), ("mistral", "f16")])
def test_architectures_and_dtypes(tmp_path, small_vocab_tokenizer, arch, dtype):
    folder = small_model_folder(tmp_path / f"tiny-{arch}", small_vocab_tokenizer, arch)
    out, _ = export_gguf(folder, tmp_path / "out" / "m.gguf", dtype)
    reader = gguf.GGUFReader(out)
    assert reader.fields["general.architecture"].contents() == {"qwen2": "qwen2"}.get(arch, "llama")  # Mistral too
    assert reader.fields["tokenizer.ggml.pre"].contents() == "qwen2"      # read off the Split regex
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    assert len(types) == SMALL_VOCAB and types[-1] == gguf.TokenType.UNUSED
    source, source_tokenizer = _load_folder(folder)
    reloaded, gguf_tokenizer = _load_gguf(out)
    with torch.no_grad():
        expected, got = source(torch.tensor(SMALL_IDS)).logits, reloaded(torch.tensor(SMALL_IDS)).logits
    assert 0 < _max_relative_error(expected, got) < BOUNDS[dtype]
    if dtype == "f16":
        assert torch.equal(expected.argmax(-1), got.argmax(-1))
        assert _greedy(reloaded, SMALL_IDS, 8) == _greedy(source, SMALL_IDS, 8)
    text = "Write 3 tips, France!  12345"
    assert gguf_tokenizer(text)["input_ids"] == source_tokenizer(text)["input_ids"]


def test_run_folder_exports_like_its_merge(merged_dir, f16_reader, tmp_path):
    run_dir = merged_dir.parent / "run"
    out, modelfile = export_gguf(run_dir, tmp_path / "from-run.gguf", "f16", modelfile=tmp_path / "sub" / "Mf")
    a, b = gguf.GGUFReader(out), f16_reader
    assert a.fields["tokenizer.chat_template"].contents() == b.fields["tokenizer.chat_template"].contents()
    for ta, tb in zip(a.tensors, b.tensors, strict=True):
        assert ta.name == tb.name and np.array_equal(ta.data, tb.data)
    assert "FROM ./../from-run.gguf" in modelfile.read_text()


@pytest.mark.parametrize("method", ["lora", "full"])
def test_trained_run_to_merge_to_gguf(tmp_path, small_vocab_tokenizer, monkeypatch, method):
    """The whole path from `llmft train` (2 steps on a tiny Llama): merge (LoRA) or the run's own model/ (full
    fine-tuning), export, reload: the training prompt comes back from the GGUF's chat template."""
    from llmft.config import TrainConfig
    from llmft.data.prompts import render
    from llmft.training.trainer import train
    from test_train import repeat_records, write_jsonl

    monkeypatch.setenv("LLMFT_CACHE", str(tmp_path / "cache"))
    records = repeat_records(8)
    write_jsonl(tmp_path / "train.jsonl", records[:6])
    write_jsonl(tmp_path / "dev.jsonl", records[6:])
    base = small_model_folder(tmp_path / "base", small_vocab_tokenizer, "llama", tie=True)
    run = tmp_path / "run"
    train(TrainConfig(data=str(tmp_path), out=str(run), model=str(base), method=method, max_steps=2,
                      batch_tokens=256, max_length=64, lora_r=4, lora_alpha=8, lora_dropout=0.0, eval_every=0,
                      save_every=0, bf16="false", lr=1e-2, warmup_ratio=0.0))
    source = merge_run(run, tmp_path / "merged") if method == "lora" else run
    out, _ = export_gguf(source, tmp_path / "gguf" / "m.gguf", "f16")
    reloaded, gguf_tokenizer = _load_gguf(out)
    record = records[0]
    message = {"role": "user", "content": record["instruction"], "input": record["input"]}
    prompt = gguf_tokenizer.apply_chat_template([message], tokenize=False, add_generation_prompt=True)
    assert prompt == render(record, "alpaca")[0]
    if method == "lora":
        tuned, _ = _load_folder(source)
    else:
        tuned, _ = _load_folder(run / "model")
    with torch.no_grad():
        expected, got = tuned(torch.tensor(SMALL_IDS)).logits, reloaded(torch.tensor(SMALL_IDS)).logits
    assert _max_relative_error(expected, got) < BOUNDS["f16"]
    assert _greedy(reloaded, SMALL_IDS, 6) == _greedy(tuned, SMALL_IDS, 6)


def test_permutation_is_what_transformers_undoes():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    weight = np.arange(8 * 16 * 3, dtype=np.float32).reshape(8 * 16, 3)      # 8 heads of dim 16
    permuted = permute_for_llama_cpp(weight, 8)
    assert not np.array_equal(permuted, weight)
    undone = LlamaTensorProcessor()._reverse_permute_weights(permuted, 8, 8)
    assert np.array_equal(undone, weight)
    kv = weight[: 2 * 16]
    assert np.array_equal(LlamaTensorProcessor()._reverse_permute_weights(permute_for_llama_cpp(kv, 2), 8, 2), kv)


def test_scaled_rope_goes_in_as_frequency_factors(tmp_path, small_vocab_tokenizer):
    folder = small_model_folder(tmp_path / "llama3", small_vocab_tokenizer, "llama", rope=LLAMA3_ROPE)
    out, _ = export_gguf(folder, tmp_path / "m.gguf")
    (freqs,) = [t for t in gguf.GGUFReader(out).tensors if t.name == "rope_freqs.weight"]
    factors = np.asarray(freqs.data)
    assert factors.shape == (8,) and factors[0] == pytest.approx(1.0) and factors[-1] == pytest.approx(32.0)
    yarn = small_model_folder(tmp_path / "yarn", small_vocab_tokenizer, "llama",
                              rope={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                    "original_max_position_embeddings": 64})
    with pytest.raises(LlmftError, match="rope scaling 'yarn' is not written"):
        export_gguf(yarn, tmp_path / "yarn-out" / "y.gguf")


def test_refusals(merged_dir, f16_file, tmp_path, small_vocab_tokenizer, capsys):
    with pytest.raises(LlmftError, match="already exists"):
        export_gguf(merged_dir, f16_file)
    gpt2 = save_tiny_model(tmp_path / "gpt2", small_vocab_tokenizer, "gpt2")
    with pytest.raises(LlmftError, match="model type 'gpt2' cannot be exported to GGUF"):
        export_gguf(gpt2, tmp_path / "g.gguf")
    assert not (tmp_path / "g.gguf").exists() and [p.name for p in tmp_path.iterdir()] == ["gpt2"]
    assert main(["export", "gguf", str(tmp_path / "missing"), "--out", str(tmp_path / "x.gguf")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["export", "gguf", str(tmp_path), "--out", str(tmp_path / "x.gguf")]) == 2
    assert "neither a run folder" in capsys.readouterr().err


def test_cli_export(merged_dir, tmp_path, capsys):
    assert main(["export", "gguf", str(merged_dir), "--out", str(tmp_path / "m.gguf"), "--dtype", "q8_0"]) == 0
    assert "wrote" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Modelfile", "m.gguf"]      # no temporary file left


# ---------------------------------------------------------------- the real vocabulary, llama.cpp itself

@pytest.fixture(scope="module")
def real_f16_file(real_vocab_merged_dir, tmp_path_factory):
    out, _ = export_gguf(real_vocab_merged_dir, tmp_path_factory.mktemp("real") / "model.gguf", "f16")
    return out


@pytest.mark.slow
def test_real_vocabulary_round_trip(real_vocab_merged_dir, real_f16_file):
    merged, merged_tokenizer = _load_folder(real_vocab_merged_dir)
    reloaded, gguf_tokenizer = _load_gguf(real_f16_file)
    reader = gguf.GGUFReader(real_f16_file)
    assert reader.fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    assert len(reader.fields["tokenizer.ggml.tokens"].contents()) == 49152
    with torch.no_grad():
        expected, got = merged(torch.tensor(IDS)).logits, reloaded(torch.tensor(IDS)).logits
    assert _max_relative_error(expected, got) < BOUNDS["f16"]
    assert _greedy(reloaded, IDS) == _greedy(merged, IDS)
    assert gguf_tokenizer.chat_template == merged_tokenizer.chat_template
    text = "Give three tips for staying healthy: 1) sleep 8h, 2) eat well... <|im_end|> ¿Qué? 日本語"
    assert gguf_tokenizer(text)["input_ids"] == merged_tokenizer(text)["input_ids"]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                    reason="llama_cpp is not importable (pip install llama-cpp-python builds llama.cpp from source)")
def test_llama_cpp_runs_the_gguf(real_vocab_merged_dir, real_f16_file):
    import llama_cpp

    merged, tokenizer = _load_folder(real_vocab_merged_dir)
    llm = llama_cpp.Llama(model_path=str(real_f16_file), n_ctx=128, n_threads=1, logits_all=True, verbose=False)
    assert llm.metadata["tokenizer.chat_template"] == tokenizer.chat_template
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Name a colour.", "input": "sky, 12"}],
                                           tokenize=False, add_generation_prompt=True)
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter    # what create_chat_completion uses for it

    formatter = Jinja2ChatFormatter(llm.metadata["tokenizer.chat_template"], eos_token="<|im_end|>", bos_token="")
    messages = [{"role": "user", "content": "Name a colour.", "input": "sky, 12"}]
    assert formatter(messages=messages).prompt == prompt
    ids = tokenizer(prompt)["input_ids"]
    assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == ids
    llm.eval(ids)
    with torch.no_grad():
        expected = merged(torch.tensor([ids])).logits[0]
    got = torch.tensor(np.array(llm.scores[: len(ids)]))
    assert _max_relative_error(expected, got) < BOUNDS["f16"]
    assert torch.equal(expected.argmax(-1), got.argmax(-1))
    generated = []
    for token in llm.generate(ids, top_k=1, temp=0.0, reset=True):
        generated.append(token)
        if len(generated) == 8:
            break
    assert generated == _greedy(merged, [ids], 8)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                    reason="llama_cpp is not importable (pip install llama-cpp-python builds llama.cpp from source)")
@pytest.mark.parametrize("arch,dtype,rope", [("llama", "f16", None), ("llama", "q8_0", None), ("qwen2", "f16", None),
                                             ("mistral", "bf16", None), ("llama", "f16", LLAMA3_ROPE)])
def test_llama_cpp_runs_each_architecture(tmp_path, small_vocab_tokenizer, arch, dtype, rope):
    import llama_cpp

    folder = small_model_folder(tmp_path / f"tiny-{arch}", small_vocab_tokenizer, arch, rope=rope)
    out, _ = export_gguf(folder, tmp_path / "out" / "m.gguf", dtype)
    source, tokenizer = _load_folder(folder)
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=64, n_threads=1, logits_all=True, verbose=False)
    text = "Write 3 tips, France!  12345"
    assert llm.tokenize(text.encode(), add_bos=False) == tokenizer(text)["input_ids"]      # the qwen2 split regex
    ids = SMALL_IDS[0]
    llm.eval(ids)
    with torch.no_grad():
        expected = source(torch.tensor([ids])).logits[0]
    got = torch.tensor(np.array(llm.scores[: len(ids)]))
    assert _max_relative_error(expected, got) < BOUNDS[dtype]
    if rope:        # and far closer to the scaled rope than to the unscaled one it would run without rope_freqs
        from transformers import AutoModelForCausalLM

        unscaled = AutoModelForCausalLM.from_pretrained(
            folder, rope_parameters={"rope_type": "default", "rope_theta": rope["rope_theta"]}).eval()
        with torch.no_grad():
            gap = _max_relative_error(expected, unscaled(torch.tensor([ids])).logits[0])
        assert _max_relative_error(expected, got) < gap / 10


def test_pre_tokenizer_names_follow_the_tokenizers_own_split():
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    from llmft.export.gguf_vocab import pre_tokenizer_name

    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    assert pre_tokenizer_name(byte_level, "t") == "gpt-2"
    digits = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]}
    assert pre_tokenizer_name(digits, "t") == "smollm"                     # SmolLM2's tokenizer.json
    split = {"type": "Split", "pattern": {"Regex": GGUF_PRE_TOKENIZER_SPLITS["llama-bpe"]}, "behavior": "Isolated"}
    llama3 = {"type": "Sequence", "pretokenizers": [split, {**byte_level, "use_regex": False}]}
    assert pre_tokenizer_name(llama3, "t") == "llama3"
    with pytest.raises(LlmftError, match="t: its pre-tokenizer .*Metaspace.* is not one llmft can name"):
        pre_tokenizer_name({"type": "Metaspace", "replacement": "\u2581"}, "t")


def test_sentencepiece_style_vocabularies_are_refused_with_a_pointer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from llmft.export.gguf_vocab import gguf_vocab

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(["a small text", "another text"], trainers.BpeTrainer(
        vocab_size=60, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", bos_token="<s>", unk_token="<unk>")
    with pytest.raises(LlmftError, match="not a byte-level BPE tokenizer .*byte_fallback.*convert_hf_to_gguf.py"):
        gguf_vocab(tokenizer, 64, [2])
