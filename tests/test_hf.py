"""Hugging Face interop: GPT-2 folders load with transformers' logits, export.py writes folders transformers loads,
round trips keep logits and tokenizer, and every script takes a pretrained folder. Offline: no hub access."""
import json

import pytest
import tiktoken
import torch

from export import export
from gptkit import hf
from gptkit.checkpoint import LAST, build_model, load_checkpoint, save_checkpoint
from gptkit.demo_chat import make_conversations
from gptkit.errors import UsageError
from gptkit.loading import load_any_checkpoint
from gptkit.model import GPT, PRESETS, GPTConfig
from gptkit.tokenizer import byte_tokenizer, gpt2_tokenizer
from helpers import run_script, tiny_model
from test_chat import chat
from test_cli import assert_one_line_error
from test_resilience import tiny_run
from train import train

VOCAB = 320  # room for the bytes tokenizer's 264 ids


def randomize(model, scale=0.2, seed=0):
    """Re-draw every weight, biases and norms included, so that a misplaced or untransposed tensor changes the logits."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model.eval()


def hf_gpt2(vocab_size=96, n_positions=64, seed=0):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=n_positions, vocab_size=vocab_size,
                                     bos_token_id=0, eos_token_id=0)
    return randomize(transformers.GPT2LMHeadModel(config), seed=seed)


def transformers_logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def our_logits(model, ids):
    with torch.no_grad():
        return model(ids)


@pytest.fixture
def hf_dir(tmp_path):
    """A transformers-saved GPT-2 (safetensors) with our bytes tokenizer beside it, as export.py would put it."""
    model = hf_gpt2(vocab_size=VOCAB, n_positions=192)
    model.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / hf.EXPORTED_TOKENIZER_FILE).write_text(byte_tokenizer().to_json())
    return tmp_path / "hf", model


def gpt2_checkpoint(path, seed=0, **changes):
    model = randomize(GPT(GPTConfig(**{**PRESETS["gpt2"], **changes}, vocab_size=VOCAB, block_size=64, n_layer=2, n_head=2, n_embd=32)), seed=seed)
    save_checkpoint(path, model, byte_tokenizer(), chat_tuned=True)
    return model


# --- loading Hugging Face GPT-2 -------------------------------------------------------------------------------

def test_a_transformers_gpt2_loads_with_its_logits(tmp_path):
    reference = hf_gpt2()
    reference.save_pretrained(tmp_path)
    model = hf.from_pretrained(tmp_path)
    c = model.config
    assert (c.pos_encoding, c.norm, c.mlp, c.tie_embeddings, c.bias) == ("learned", "layernorm", "gelu", True, True)
    assert (c.vocab_size, c.block_size, c.n_layer, c.n_head, c.n_embd) == (96, 64, 2, 2, 32)  # the vocabulary is not padded
    assert not model.training
    ids = torch.randint(0, 96, (2, 64), generator=torch.Generator().manual_seed(1))
    assert (our_logits(model, ids) - transformers_logits(reference, ids)).abs().max() < 1e-4


def test_pytorch_model_bin_without_prefix_and_with_mask_buffers_loads(tmp_path):
    """The layout of GPT-2's original files: no `transformer.` prefix, the causal mask saved as attn.bias, lm_head stored though tied."""
    reference = hf_gpt2(seed=2)
    state = {k.removeprefix("transformer."): v.clone() for k, v in reference.state_dict().items()}
    for layer in range(2):
        state[f"h.{layer}.attn.bias"] = torch.ones(1, 1, 64, 64).tril()
        state[f"h.{layer}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, tmp_path / "pytorch_model.bin")
    reference.config.to_json_file(tmp_path / "config.json")
    model = hf.from_pretrained(tmp_path)
    ids = torch.randint(0, 96, (3, 40), generator=torch.Generator().manual_seed(2))
    assert (our_logits(model, ids) - transformers_logits(reference, ids)).abs().max() < 1e-4


def test_a_pytorch_model_bin_that_would_run_code_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1, "n_head": 1, "n_embd": 8, "n_positions": 8, "vocab_size": 8}))
    torch.save({"h.0.attn.c_attn.weight": torch.zeros(8, 24), "evil": print}, tmp_path / "pytorch_model.bin")
    with pytest.raises(UsageError, match="refusing to load"):
        hf.from_pretrained(tmp_path)


@pytest.mark.parametrize("change, message", [
    ({"activation_function": "relu"}, "activation_function='relu' is not supported"),
    ({"activation_function": "gelu"}, "tanh GELU"),
    ({"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon"),
    ({"n_inner": 64}, "n_inner=64 is not supported"),
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
    ({"model_type": "llama"}, "model_type 'llama' is not supported"),
    ({"n_embd": None}, "needs a positive integer n_embd"),
    ({"n_embd": 64}, "the weights do not fit config.json"),
])
def test_a_config_we_do_not_compute_is_refused_in_one_line(tmp_path, change, message):
    hf_gpt2().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(UsageError, match=message) as error:
        hf.from_pretrained(tmp_path)
    assert "\n" not in str(error.value)


def test_a_broken_folder_is_a_one_line_error_in_every_script(tmp_path):
    hf_gpt2().save_pretrained(tmp_path / "no_weights")
    (tmp_path / "no_weights" / "model.safetensors").unlink()
    assert_one_line_error(run_script("sample.py", f"--ckpt={tmp_path / 'no_weights'}"), "no weights", "model.safetensors")
    (tmp_path / "bad_json").mkdir()
    (tmp_path / "bad_json" / "config.json").write_text("{not json")
    assert_one_line_error(run_script("export.py", f"--ckpt={tmp_path / 'bad_json'}", f"--out_dir={tmp_path / 'x'}"), "config.json is not valid JSON")
    (tmp_path / "truncated").mkdir()
    hf_gpt2().save_pretrained(tmp_path / "truncated")
    weights = tmp_path / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(UsageError, match="not a readable weight file"):
        load_any_checkpoint(tmp_path / "truncated")


def test_a_hub_name_offline_says_how_to_use_a_local_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # an empty cache, whatever this machine has downloaded
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = run_script("sample.py", "--ckpt=gpt2", "--device=cpu")
    assert_one_line_error(result, "could not download gpt2", "hf download openai-community/gpt2", "pass its path")
    with pytest.raises(UsageError, match="could not download gpt2-xl"):
        load_any_checkpoint("gpt2-xl")


def test_a_name_that_is_neither_a_path_nor_a_hub_name_is_a_missing_checkpoint(tmp_path):
    with pytest.raises(UsageError, match="does not exist.*hub name"):
        load_any_checkpoint(tmp_path / "gpt3")
    with pytest.raises(UsageError, match="neither a folder with config.json nor a GPT-2 hub name"):
        hf.from_pretrained(tmp_path / "gpt3")


def test_a_training_folder_with_a_config_json_is_ours(tmp_path):
    gpt2_checkpoint(tmp_path / LAST)
    (tmp_path / "config.json").write_text("{}")
    ckpt = load_any_checkpoint(tmp_path)
    assert ckpt["path"] == str(tmp_path / LAST) and "optimizers" not in ckpt


def test_tokenizer_ids_past_the_vocabulary_get_rows_when_they_are_special(bytes_tok):
    """GPT-2's 50,257 ids plus our 7 reserved chat tokens, in miniature: the bytes tokenizer's specials start at 256."""
    model = randomize(GPT(GPTConfig(**PRESETS["gpt2"], vocab_size=258, block_size=16, n_layer=1, n_head=2, n_embd=16)))
    config, state = hf.fit_vocabulary(model.config, model.state_dict(), bytes_tok, "here")
    assert config.vocab_size == bytes_tok.n_vocab
    grown = GPT(config)
    grown.load_state_dict(state)
    ids = torch.randint(0, 258, (1, 16))
    before, after = our_logits(model, ids), our_logits(grown.eval(), ids)
    assert torch.equal(after[..., :258], before)
    assert (after[..., 258:] < before.max(dim=-1, keepdim=True).values).all()  # the new ids are not the likeliest
    small = GPTConfig(**PRESETS["gpt2"], vocab_size=200, block_size=16, n_layer=1, n_head=2, n_embd=16)
    with pytest.raises(UsageError, match="264 ids but the model only 200"):
        hf.fit_vocabulary(small, GPT(small).state_dict(), bytes_tok, "here")


def test_a_gpt2_folder_without_our_tokenizer_needs_gpt2s_and_says_how_to_get_it(tmp_path, monkeypatch):
    hf_gpt2().save_pretrained(tmp_path)

    def offline(name):
        raise ConnectionError("no network")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(UsageError, match="no gptkit_tokenizer.json, so it uses GPT-2's tokenizer.*TIKTOKEN_CACHE_DIR") as error:
        load_any_checkpoint(tmp_path)
    assert "\n" not in str(error.value)


def test_gpt2_with_gpt2s_tokenizer_gets_rows_for_the_chat_tokens_and_keeps_its_logits(tmp_path):
    try:
        tokenizer = gpt2_tokenizer()
    except UsageError as e:
        pytest.skip(f"GPT-2's encoding is not available offline: {str(e)[:80]}")
    reference = hf_gpt2(vocab_size=50257)
    reference.save_pretrained(tmp_path)
    model, loaded = build_model(load_any_checkpoint(tmp_path))
    assert loaded.to_json() == tokenizer.to_json() and model.config.vocab_size == tokenizer.n_vocab == 50264
    assert hf.from_pretrained(tmp_path).config.vocab_size == 50257  # from_pretrained keeps GPT-2's vocabulary exactly
    ids = torch.randint(0, 50257, (1, 32))
    assert (our_logits(model, ids)[..., :50257] - transformers_logits(reference, ids)).abs().max() < 1e-4


# --- export ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tie", [True, False])
def test_an_exported_gpt2_preset_loads_in_transformers_with_our_logits(tmp_path, tie, capsys):
    transformers = pytest.importorskip("transformers")
    model = gpt2_checkpoint(tmp_path / "ckpt.pt", tie_embeddings=tie)
    assert export(tmp_path / "ckpt.pt", tmp_path / "hf_model") == "gpt2"
    assert "AutoModelForCausalLM" in capsys.readouterr().out
    config = json.loads((tmp_path / "hf_model" / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"] and config["vocab_size"] == VOCAB and config["eos_token_id"] == 256
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf_model").eval()
    assert type(loaded).__name__ == "GPT2LMHeadModel"
    ids = torch.randint(0, VOCAB, (2, 64), generator=torch.Generator().manual_seed(3))
    assert (transformers_logits(loaded, ids) - our_logits(model, ids)).abs().max() < 1e-4


def test_export_then_load_gives_identical_logits_and_the_same_tokenizer(tmp_path, capsys):
    model = gpt2_checkpoint(tmp_path / "ckpt.pt")
    export(tmp_path / "ckpt.pt", tmp_path / "hf_model")
    assert sorted(p.name for p in (tmp_path / "hf_model").iterdir()) == ["README.md", "config.json", "gptkit_tokenizer.json", "model.safetensors"]
    ckpt = load_any_checkpoint(tmp_path / "hf_model")
    back, tokenizer = build_model(ckpt)
    ids = torch.randint(0, VOCAB, (2, 64))
    assert torch.equal(our_logits(back, ids), our_logits(model, ids))
    assert tokenizer.to_json() == byte_tokenizer().to_json()
    assert ckpt["chat_tuned"] is True and ckpt["model_config"] == vars(model.config)


def test_the_modern_preset_exports_in_our_layout_and_says_transformers_has_no_class(tmp_path):
    model = tiny_model("modern", vocab_size=VOCAB, block_size=64, n_embd=32)
    save_checkpoint(tmp_path / "ckpt.pt", model, byte_tokenizer())
    result = run_script("export.py", f"--ckpt={tmp_path / 'ckpt.pt'}", f"--out_dir={tmp_path / 'out'}")
    assert result.returncode == 0, result.stderr
    assert "transformers has no class" in result.stdout and "pos_encoding=rope" in result.stdout
    assert "transformers has no class" in (tmp_path / "out" / "README.md").read_text()
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "gptkit"
    ids = torch.randint(0, VOCAB, (2, 64))
    assert torch.equal(our_logits(hf.from_pretrained(tmp_path / "out"), ids), our_logits(model, ids))
    back, tokenizer = build_model(load_any_checkpoint(tmp_path / "out"))
    assert torch.equal(our_logits(back, ids), our_logits(model, ids)) and tokenizer.n_vocab == 264


def test_export_refuses_to_write_into_a_training_folder(tmp_path):
    gpt2_checkpoint(tmp_path / LAST)
    assert_one_line_error(run_script("export.py", f"--ckpt={tmp_path}", f"--out_dir={tmp_path}"), "holds training checkpoints")
    assert not (tmp_path / "config.json").exists()


# --- the scripts take a pretrained folder ---------------------------------------------------------------------

def test_train_init_from_a_hf_folder_starts_from_its_weights(tmp_path, hf_dir, data_dir):
    folder, reference = hf_dir
    model = train(tiny_run(tmp_path / "out", data_dir, init_from=str(folder), max_iters=2, eval_interval=2, lr=0.0))
    wte = reference.state_dict()["transformer.wte.weight"]
    assert torch.equal(model.transformer.wte.weight.detach(), wte)  # lr 0: the weights are GPT-2's, untouched
    c_fc = reference.state_dict()["transformer.h.1.mlp.c_fc.weight"]
    assert torch.equal(model.transformer.h[1].mlp.c_fc.weight.detach(), c_fc.t())
    saved = load_checkpoint(tmp_path / "out" / LAST)
    assert saved["model_config"]["block_size"] == 32 and saved["model_config"]["vocab_size"] == VOCAB  # 192 learned positions, first 32 kept


def test_fine_tuning_for_chat_from_a_hf_folder_lowers_the_loss(tmp_path, hf_dir):
    folder, _ = hf_dir
    chats = tmp_path / "chat.jsonl"
    chats.write_text("".join(json.dumps(c) + "\n" for c in make_conversations(120, seed=0)))
    out = tmp_path / "sft"
    train(tiny_run(out, "", init_from=str(folder), chat_data=str(chats), block_size=160, batch_size=4, max_iters=16, eval_interval=8,
                   val_fraction=0.1))
    losses = [r["val_loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "val_loss" in r]
    assert losses[-1] < 0.8 * losses[0]
    assert load_checkpoint(out / LAST)["chat_tuned"] is True


@pytest.mark.slow  # 10 s of CI's 15 minutes; the loading of a Hugging Face folder is tested above, in process
def test_sample_and_chat_take_a_hf_folder(hf_dir):
    folder, _ = hf_dir
    sampled = run_script("sample.py", f"--ckpt={folder}", "--prompt=the cat ", "--max_new_tokens=20", "--device=cpu", "--seed=1")
    assert sampled.returncode == 0, sampled.stderr
    assert sampled.stdout.startswith("the cat ") and len(sampled.stdout.strip()) > len("the cat")
    chatted = chat(folder, "Hello there\n", "--device=cpu")
    assert chatted.rc == 0, chatted.stderr
    assert len(chatted.replies) == 1
    assert "not fine-tuned for chat" in chatted.stderr


def test_export_has_help():
    result = run_script("export.py", "--help")
    assert result.returncode == 0 and "--ckpt=" in result.stdout and "--out_dir=" in result.stdout
