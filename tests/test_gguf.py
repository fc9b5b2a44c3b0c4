"""GGUF export (llama.cpp's gpt2 architecture) and Hub-ready folders.

Every file is read back with gguf.GGUFReader and compared with the checkpoint; the recovered merges are checked by
tokenizing with them (Hugging Face `tokenizers`, as llama.cpp's BPE does) against our tokenizer. The llama.cpp test
itself is slow and needs llama-cpp-python (about 12 minutes to build): pytest --runslow tests/test_gguf.py.
"""
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bench.gguf_parity import llama_cpp_gelu
from export import export, export_gguf
from gptkit.chat_template import JINJA_TEMPLATE, OLLAMA_TEMPLATE, prompt_for_reply, render_conversation
from gptkit.checkpoint import save_checkpoint
from gptkit.gguf_vocab import CONTROL, NORMAL, bytes_to_unicode, gguf_vocabulary
from gptkit.model import GPT, GPTConfig
from gptkit.tokenizer import SPECIAL_TOKENS
from helpers import SAMPLES, make_corpus, run_script, tiny_config, tiny_model
from test_cli import assert_one_line_error

gguf = pytest.importorskip("gguf")

TEXTS = {**SAMPLES, "code": "def f(x):\n    return {'a': [1, 22, 333, 4444]}\n\n\nclass A:\n\tpass\n",
         "whitespace": "   three spaces\n\n\n  \t\t tabs  \r\n trailing   ", "sentences": make_corpus(20, seed=3)}
VOCAB = 512


def gpt2_model(**extra):
    """A tiny gpt2-preset model with every weight redrawn large enough that a misplaced tensor shows in the logits."""
    return tiny_model("gpt2", vocab_size=VOCAB, block_size=64, n_embd=32, scale=0.2, **extra)


@pytest.fixture
def checkpoint(tmp_path, bpe_tok):
    model = gpt2_model()
    save_checkpoint(tmp_path / "ckpt.pt", model, bpe_tok, chat_tuned=True)
    return tmp_path / "ckpt.pt", model


def read(path):
    reader = gguf.GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    tensors = {t.name: t for t in reader.tensors}
    return fields, tensors


def tensor_values(t):
    """A GGUF tensor as float32 in PyTorch's (out, in) shape."""
    return gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(reversed([int(n) for n in t.shape]))).astype(np.float32)


def expected_tensors(model, n_vocab):
    w = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    expected = {"token_embd.weight": w["transformer.wte.weight"][:n_vocab], "position_embd.weight": w["transformer.wpe.weight"],
                "output_norm.weight": w["transformer.ln_f.weight"], "output_norm.bias": w["transformer.ln_f.bias"]}
    for i in range(model.config.n_layer):
        for ours, theirs in (("ln_1", "attn_norm"), ("attn.c_attn", "attn_qkv"), ("attn.c_proj", "attn_output"),
                             ("ln_2", "ffn_norm"), ("mlp.c_fc", "ffn_up"), ("mlp.c_proj", "ffn_down")):
            for kind in ("weight", "bias"):
                expected[f"blk.{i}.{theirs}.{kind}"] = w[f"transformer.h.{i}.{ours}.{kind}"]
    return expected


# --- the file ------------------------------------------------------------------------------------------------

def test_an_f32_gguf_holds_the_header_the_tokenizer_the_template_and_the_exact_weights(tmp_path, checkpoint, bpe_tok):
    ckpt, model = checkpoint
    path = export_gguf(ckpt, tmp_path / "tiny.gguf", "f32")
    fields, tensors = read(path)
    c = model.config
    assert fields["general.architecture"] == "gpt2" and fields["general.name"] == "tiny"
    assert (fields["gpt2.block_count"], fields["gpt2.context_length"], fields["gpt2.embedding_length"]) == (c.n_layer, c.block_size, c.n_embd)
    assert (fields["gpt2.feed_forward_length"], fields["gpt2.attention.head_count"]) == (4 * c.n_embd, c.n_head)
    assert fields["gpt2.attention.layer_norm_epsilon"] == pytest.approx(1e-5)
    assert fields["general.file_type"] == gguf.LlamaFileType.ALL_F32
    tokens, types, merges = gguf_vocabulary(bpe_tok)
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "llama-bpe"
    assert fields["tokenizer.ggml.tokens"] == tokens and len(tokens) == bpe_tok.n_vocab
    assert fields["tokenizer.ggml.token_type"] == types and fields["tokenizer.ggml.merges"] == merges
    assert [tokens[i] for i, t in enumerate(types) if t == CONTROL] == list(SPECIAL_TOKENS)
    assert fields["tokenizer.ggml.bos_token_id"] == bpe_tok.special_id("<|bos|>")
    assert fields["tokenizer.ggml.eos_token_id"] == bpe_tok.eot_id
    assert fields["tokenizer.ggml.eot_token_id"] == bpe_tok.special_id("<|assistant_end|>")
    assert fields["tokenizer.ggml.add_bos_token"] is False
    assert fields["tokenizer.chat_template"] == JINJA_TEMPLATE
    expected = expected_tensors(model, bpe_tok.n_vocab)
    assert set(tensors) == set(expected)  # tied: no output.weight
    for name, values in expected.items():
        assert tensors[name].tensor_type == gguf.GGMLQuantizationType.F32
        np.testing.assert_array_equal(tensor_values(tensors[name]), values, err_msg=name)
    assert not list(tmp_path.glob(".*"))  # no temporary left


@pytest.mark.parametrize("gguf_type, matrix_type, tolerance", [("f16", "F16", 1e-3), ("bf16", "BF16", 2 ** -8), ("q8_0", "Q8_0", 1 / 127)])
def test_16_and_8_bit_types_store_matrices_in_their_type_and_dequantize_close_to_the_weights(tmp_path, checkpoint, bpe_tok, gguf_type, matrix_type,
                                                                                               tolerance):
    ckpt, model = checkpoint
    fields, tensors = read(export_gguf(ckpt, tmp_path / "m.gguf", gguf_type))
    file_types = {"f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
    assert fields["general.file_type"] == file_types[gguf_type]
    for name, values in expected_tensors(model, bpe_tok.n_vocab).items():
        stored = tensors[name].tensor_type.name
        assert stored == (matrix_type if values.ndim == 2 and name != "position_embd.weight" else "F32"), name
        scale = np.abs(values).max(axis=-1, keepdims=True)  # q8_0's error is relative to each block's largest value
        assert np.all(np.abs(tensor_values(tensors[name]) - values) <= tolerance * scale + 1e-7), name


def test_an_untied_output_layer_and_sinusoidal_positions_are_written(tmp_path, bpe_tok):
    torch.manual_seed(0)
    config = tiny_config("gpt2", "sinusoidal", vocab_size=VOCAB, block_size=64, n_embd=32)
    model = GPT(GPTConfig(**{**vars(config), "tie_embeddings": False})).eval()
    save_checkpoint(tmp_path / "ckpt.pt", model, bpe_tok)
    _, tensors = read(export_gguf(tmp_path / "ckpt.pt", tmp_path / "m.gguf"))
    np.testing.assert_array_equal(tensor_values(tensors["output.weight"]), model.lm_head.weight.detach().numpy()[:bpe_tok.n_vocab])
    np.testing.assert_array_equal(tensor_values(tensors["position_embd.weight"]), model.pos_table.numpy())


def test_the_modelfile_beside_it_carries_the_template_and_stop_tokens(tmp_path, checkpoint):
    path = export_gguf(checkpoint[0], tmp_path / "tiny.gguf", "f16")
    modelfile = (tmp_path / "tiny.Modelfile").read_text()
    assert "FROM ./tiny.gguf" in modelfile and f'TEMPLATE """{OLLAMA_TEMPLATE}"""' in modelfile
    assert 'PARAMETER stop "<|assistant_end|>"' in modelfile and "PARAMETER num_ctx 64" in modelfile
    assert path.is_file()


# --- the tokenizer and the template -----------------------------------------------------------------------------

def test_bytes_map_to_256_distinct_printable_characters():
    chars = bytes_to_unicode()
    assert len(set(chars.values())) == 256 and all(c.isprintable() and not c.isspace() for c in chars.values())
    assert chars[ord("a")] == "a" and chars[ord(" ")] == "Ġ" and chars[ord("\n")] == "Ċ"  # GPT-2's spellings


def merges_tokenizer(tokenizer):
    """A BPE built only from what the GGUF holds (token strings and merges), splitting text with the same regex."""
    tokenizers = pytest.importorskip("tokenizers")
    tokens, types, merges = gguf_vocabulary(tokenizer)
    vocab = {t: i for i, t in enumerate(tokens) if types[i] == NORMAL}
    bpe = tokenizers.models.BPE(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges], ignore_merges=True)
    hf = tokenizers.Tokenizer(bpe)
    pattern = tokenizer.encoding._pat_str.replace("?+", "?").replace("++", "+")  # Rust's regex has no possessive forms; same matches here
    hf.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([tokenizers.pre_tokenizers.Split(tokenizers.Regex(pattern), behavior="isolated"),
                                                           tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    return hf


@pytest.mark.parametrize("kind", ["bpe", "bytes"])
def test_the_recovered_merges_tokenize_every_text_as_our_tokenizer_does(kind, bpe_tok, bytes_tok):
    tokenizer = {"bpe": bpe_tok, "bytes": bytes_tok}[kind]
    hf = merges_tokenizer(tokenizer)
    for name, text in TEXTS.items():
        assert hf.encode(text).ids == tokenizer.encode(text), name


@given(st.text(max_size=80))
def test_the_recovered_merges_tokenize_any_text_as_our_tokenizer_does(bpe_tok, text):
    assert merges_tokenizer(bpe_tok).encode(text).ids == bpe_tok.encode(text)


def test_the_jinja_template_renders_what_our_template_renders(bpe_tok):
    jinja2 = pytest.importorskip("jinja2")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi <b>there</b>"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "My name is Ada."}]
    template = jinja2.Environment().from_string(JINJA_TEMPLATE)
    render = lambda **kw: bpe_tok.encoding.encode(template.render(raise_exception=None, **kw), allowed_special="all")
    assert render(messages=messages, add_generation_prompt=False) == render_conversation(bpe_tok, messages)[0]
    turns = [(m["role"], bpe_tok.encode(m["content"])) for m in messages]
    assert render(messages=messages, add_generation_prompt=True) == prompt_for_reply(bpe_tok, turns)


# --- refusals -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset, extra, fragment", [
    ("modern", {}, "QK-norm"),
    ("gpt2", {"pos_encoding": "rope"}, "rotary positions"),
    ("gpt2", {"attn_pattern": "LG", "window": 8}, "local attention layers"),
])
def test_what_llama_cpp_cannot_compute_is_refused_in_one_line_and_nothing_is_written(tmp_path, bytes_tok, preset, extra, fragment):
    model = tiny_model(preset, vocab_size=VOCAB, block_size=64, n_embd=32, **extra)
    save_checkpoint(tmp_path / "ckpt.pt", model, bytes_tok)
    result = run_script("export.py", f"--ckpt={tmp_path / 'ckpt.pt'}", "--format=gguf", f"--out={tmp_path / 'm.gguf'}")
    assert_one_line_error(result, fragment, "--format=hf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_a_bad_type_a_width_q8_0_cannot_block_and_a_missing_folder_are_refused_in_one_line(tmp_path, bytes_tok):
    save_checkpoint(tmp_path / "ckpt.pt", tiny_model("gpt2", vocab_size=VOCAB, n_embd=16), bytes_tok)
    ckpt = f"--ckpt={tmp_path / 'ckpt.pt'}"
    assert_one_line_error(run_script("export.py", ckpt, "--format=gguf", "--type=q4_0"), "--type", "f32, f16, bf16, q8_0")
    assert_one_line_error(run_script("export.py", ckpt, "--format=gguf", "--type=q8_0", f"--out={tmp_path / 'm.gguf'}"), "blocks of 32", "width is 16")
    assert_one_line_error(run_script("export.py", ckpt, "--format=gguf", f"--out={tmp_path / 'no' / 'm.gguf'}"), "does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_a_write_that_fails_midway_leaves_no_file(tmp_path, checkpoint, monkeypatch):
    (tmp_path / "m.gguf").write_bytes(b"the previous export")

    def fail(self, *args, **kwargs):
        raise OSError("disk on fire")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", fail)
    with pytest.raises(OSError):
        export_gguf(checkpoint[0], tmp_path / "m.gguf")
    assert (tmp_path / "m.gguf").read_bytes() == b"the previous export"
    assert not list(tmp_path.glob(".*"))


def test_the_command_line_writes_the_file_and_names_how_to_run_it(tmp_path, checkpoint):
    result = run_script("export.py", f"--ckpt={checkpoint[0]}", "--format=gguf", "--type=f16", f"--out={tmp_path / 'chat.gguf'}")
    assert result.returncode == 0, result.stderr
    assert "llama-cli -m" in result.stdout and "ollama create chat" in result.stdout
    assert (tmp_path / "chat.gguf").is_file() and (tmp_path / "chat.Modelfile").is_file()


# --- Hub-ready folders -----------------------------------------------------------------------------------------

def front_matter(readme):
    yaml = pytest.importorskip("yaml")
    assert readme.startswith("---\n")
    return yaml.safe_load(readme.split("---\n")[1])


def test_the_folder_readme_carries_the_hubs_metadata_from_the_checkpoints_record(tmp_path, bpe_tok):
    model = gpt2_model()
    train_config = {"init_from": "gpt2", "chat_dataset": "HuggingFaceTB/smol-smoltalk", "chat_split": "train"}
    save_checkpoint(tmp_path / "ckpt.pt", model, bpe_tok, chat_tuned=True, train_config=train_config, step=1200, tokens_seen=4_915_200,
                    val_loss=1.25, val_bpb=0.8123)
    export(tmp_path / "ckpt.pt", tmp_path / "folder", license="apache-2.0")
    readme = (tmp_path / "folder" / "README.md").read_text()
    meta = front_matter(readme)
    assert meta == {"library_name": "transformers", "pipeline_tag": "text-generation", "license": "apache-2.0",
                    "datasets": ["HuggingFaceTB/smol-smoltalk"], "base_model": "openai-community/gpt2",
                    "tags": ["gptkit", "gpt", "conversational", "gpt2"]}
    for row in ("| steps | 1,200 |", "| tokens processed | 4,915,200 |", "| validation bits per byte | 0.8123 |", "| fine-tuned for chat | yes |"):
        assert row in readme


def test_a_folder_without_a_training_record_still_gets_valid_metadata(tmp_path, bytes_tok):
    save_checkpoint(tmp_path / "ckpt.pt", tiny_model("modern", vocab_size=VOCAB, n_embd=32), bytes_tok)
    export(tmp_path / "ckpt.pt", tmp_path / "folder")
    meta = front_matter((tmp_path / "folder" / "README.md").read_text())
    assert meta["library_name"] == "gptkit" and meta["license"] == "other" and "base_model" not in meta


def test_push_to_hub_offline_fails_in_one_line_after_writing_the_folder(tmp_path, checkpoint):
    result = run_script("export.py", f"--ckpt={checkpoint[0]}", f"--out_dir={tmp_path / 'folder'}", "--push_to_hub=alice/tiny-gpt")
    assert_one_line_error(result, "could not upload", "alice/tiny-gpt", "hf upload")
    assert (tmp_path / "folder" / "model.safetensors").is_file() and (tmp_path / "folder" / "README.md").is_file()


def test_a_malformed_repo_name_is_refused_before_anything_is_written(tmp_path, checkpoint):
    result = run_script("export.py", f"--ckpt={checkpoint[0]}", f"--out_dir={tmp_path / 'folder'}", "--push_to_hub=not a repo")
    assert_one_line_error(result, "USER/NAME")
    assert not (tmp_path / "folder").exists()


# --- llama.cpp itself (slow: needs llama-cpp-python) ---------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("kind, gguf_type, tolerance", [("bpe", "f32", 1e-3), ("bpe", "f16", 2e-2), ("bpe", "bf16", 0.2), ("bpe", "q8_0", 0.5),
                                                           ("bytes", "f32", 1e-3)])
def test_llama_cpp_computes_our_logits_tokenizes_as_we_do_and_chats_through_the_template(tmp_path, bpe_tok, bytes_tok, kind, gguf_type, tolerance,
                                                                                         monkeypatch):
    llama_cpp = pytest.importorskip("llama_cpp")
    jinja2 = pytest.importorskip("jinja2")
    from gptkit.engine import generate

    tokenizer = {"bpe": bpe_tok, "bytes": bytes_tok}[kind]
    model = gpt2_model()
    save_checkpoint(tmp_path / "ckpt.pt", model, tokenizer)
    path = export_gguf(tmp_path / "ckpt.pt", tmp_path / "m.gguf", gguf_type)
    f32 = 0  # GGML_TYPE_F32: a float32 KV cache (llama.cpp's default is float16)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=2, seed=0, type_k=f32, type_v=f32)
    for name, text in TEXTS.items():
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == tokenizer.encode(text), name
    ids = tokenizer.encode(TEXTS["english"])[:48]
    llm.eval(ids)
    theirs = np.array(llm.scores[:len(ids)])
    logits = lambda: model(torch.tensor([ids]))[0, :, :tokenizer.n_vocab].detach().numpy()
    raw = float(np.abs(theirs - logits()).max())
    monkeypatch.setattr(torch.nn.functional, "gelu", llama_cpp_gelu)
    same_gelu = float(np.abs(theirs - logits()).max())
    monkeypatch.undo()
    print(f"\nllama.cpp {gguf_type}: max logit difference {raw:.2e} against ours in float32, {same_gelu:.2e} against ours with llama.cpp's "
          f"float16 GELU table (logits up to {np.abs(theirs).max():.1f})")
    assert same_gelu <= tolerance and raw <= 10 * tolerance
    messages = [{"role": "user", "content": "Hi there"}]
    prompt = prompt_for_reply(tokenizer, [("user", tokenizer.encode("Hi there"))])
    rendered = jinja2.Environment().from_string(llm.metadata["tokenizer.chat_template"]).render(messages=messages, add_generation_prompt=True)
    assert llm.tokenize(rendered.encode(), add_bos=False, special=True) == prompt  # the embedded template, special tokens read
    end = tokenizer.special_id("<|assistant_end|>")
    ours = list(generate(model, prompt, 8, temperature=0, stop_ids=(end, tokenizer.eot_id), vocab_limit=tokenizer.n_vocab))
    if gguf_type in ("bf16", "q8_0"):  # bf16 and q8_0 round weights (q8_0 also llama.cpp's activations) to 8 bits: greedy picks may part
        return
    theirs = [t for _, t in zip(range(len(ours)), llm.generate(prompt, temp=0.0, top_k=1, reset=True))]
    assert theirs == ours
    if kind == "bpe":  # llama-cpp-python's chat completion formats with the template itself (with random bytes, as the bytes
        llm.reset()  # model writes, it loops past max_tokens on incomplete UTF-8, into positions the model does not have)
        reply = llm.create_chat_completion(messages=messages, temperature=0.0, max_tokens=8)["choices"][0]["message"]["content"]
        text = tokenizer.decode_bytes([t for t in ours if t not in (end, tokenizer.eot_id)]).decode("utf-8", errors="ignore")
        assert reply == text


def test_the_parity_benchmark_says_in_one_line_when_llama_cpp_is_missing():
    try:
        import llama_cpp  # noqa: F401
        pytest.skip("llama-cpp-python is installed: the benchmark would run for real")
    except ImportError:
        pass
    assert_one_line_error(run_script("bench/gguf_parity.py", "--ckpt=nowhere"), "llama-cpp-python", "pip install")
