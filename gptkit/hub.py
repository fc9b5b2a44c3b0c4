"""Hub-ready folders: the README.md the Hugging Face Hub reads (YAML metadata, then the card), and the upload.

The metadata comes from the checkpoint's own record: what it was trained on, for how long, its validation bits per
byte, whether it was fine-tuned for chat and from which model. Nothing is sent anywhere unless --push_to_hub asks.
"""
import json
import re
from pathlib import Path

from gptkit.errors import UsageError, first_line
from gptkit.hf import EXPORTED_TOKENIZER_FILE, HUB_OWNER, hub_name
from gptkit.model_card import data_source

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def check_repo_id(repo_id):
    if not REPO_ID.match(repo_id):
        raise UsageError(f"--push_to_hub={repo_id} is not a Hub repository name; write USER/NAME, e.g. --push_to_hub=alice/tiny-gpt")
    return repo_id


def hub_metadata(kind, ckpt, license):
    """The YAML block's fields: how the Hub files, searches and loads the model."""
    tc = ckpt.get("train_config") or {}
    meta = {"library_name": "transformers" if kind == "gpt2" else "gptkit", "pipeline_tag": "text-generation", "license": license}
    datasets = [name for name in (tc.get("dataset"), tc.get("chat_dataset")) if name]
    if datasets:
        meta["datasets"] = datasets
    base = hub_name(tc["init_from"]) if tc.get("init_from") else None
    if base:
        meta["base_model"] = f"{HUB_OWNER}/{base}"
    meta["tags"] = ["gptkit", "gpt", *(["conversational"] if ckpt.get("chat_tuned") else []), *(["gpt2"] if kind == "gpt2" else [])]
    return meta


def yaml_block(meta):
    """Front matter for a README: strings are written as JSON strings, which YAML reads as they are."""
    lines = ["---"]
    for key, value in meta.items():
        if isinstance(value, list):
            lines += [f"{key}:", *(f"- {json.dumps(item)}" for item in value)]
        else:
            lines.append(f"{key}: {json.dumps(value)}")
    return lines + ["---", ""]


def training_record(ckpt):
    """What the checkpoint says of its training, as Markdown table rows (none when it records nothing)."""
    tc = ckpt.get("train_config")
    rows = []
    if tc:
        rows.append(("data", data_source(tc)))
    if ckpt.get("step") is not None:
        rows.append(("steps", f"{ckpt['step']:,}"))
    if ckpt.get("tokens_seen") is not None:
        rows.append(("tokens processed", f"{ckpt['tokens_seen']:,}"))
    if isinstance(ckpt.get("val_bpb"), (int, float)):
        rows.append(("validation bits per byte", f"{ckpt['val_bpb']:.4f}"))
    if isinstance(ckpt.get("val_loss"), (int, float)):
        rows.append(("validation loss (nats per token)", f"{ckpt['val_loss']:.4f}"))
    if tc or ckpt.get("chat_tuned"):
        rows.append(("fine-tuned for chat", "yes" if ckpt.get("chat_tuned") else "no"))
    if not rows:
        return []
    return ["## Training", "", "| | |", "| --- | --- |", *(f"| {what} | {value} |" for what, value in rows), ""]


def hub_readme(kind, model, tokenizer, ckpt, out_dir, license, layout_note=""):
    """README.md for the exported folder: the Hub's metadata, what the model is, how it was trained, how to load it."""
    c = model.config
    lines = [*yaml_block(hub_metadata(kind, ckpt, license)),
             f"# {Path(out_dir).name}", "",
             f"A GPT trained with gptkit, exported from `{ckpt['path']}`: {model.num_params() / 1e6:.2f}M parameters, {c.n_layer} layers x "
             f"{c.n_embd} wide, {c.n_head} heads, context {c.block_size} tokens, vocabulary {c.vocab_size}.", "",
             *training_record(ckpt), "## Use it", ""]
    if kind == "gpt2":
        lines += ["Load it with transformers (as `GPT2LMHeadModel`):", "", "```python",
                  "from transformers import AutoModelForCausalLM", f"model = AutoModelForCausalLM.from_pretrained({str(out_dir)!r})", "```", "",
                  f"or with gptkit: `python sample.py --ckpt={out_dir}`, `python chat.py --ckpt={out_dir}`, `gptkit.hf.from_pretrained({str(out_dir)!r})`.", ""]
    else:
        lines += [f"transformers has no class for this model's layout ({layout_note}), so `AutoModelForCausalLM` cannot load it. "
                  f"The weights are in gptkit's own layout (`model.safetensors` with gptkit's names; `config.json` holds its `GPTConfig`). "
                  f"Load it with gptkit: `python sample.py --ckpt={out_dir}`, `python chat.py --ckpt={out_dir}`, "
                  f"`python train.py --init_from={out_dir}`, or `gptkit.hf.from_pretrained({str(out_dir)!r})`.", ""]
    lines += [f"The tokenizer is `{EXPORTED_TOKENIZER_FILE}`, gptkit's format (tiktoken merge ranks and special tokens; `Tokenizer.from_json`), "
              f"a {tokenizer.kind} tokenizer of {tokenizer.n_vocab} ids; `<|endoftext|>` is id {tokenizer.eot_id}. transformers does not read it."]
    if tokenizer.kind == "gpt2":
        lines += ["It is GPT-2's encoding, so transformers' GPT-2 tokenizer gives the same ids for ordinary text; ids from 50257 on are "
                  "gptkit's chat special tokens."]
    return "\n".join(lines) + "\n"


def push_folder(folder, repo_id):
    """Upload a written folder to the Hub as repo_id (created if new); one line, the folder kept, when that fails."""
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(repo_id, exist_ok=True)
        return api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Upload a model exported by gptkit")
    except Exception as e:  # offline, not logged in, no permission: each comes as a different type
        raise UsageError(f"wrote {folder}/ but could not upload it to the Hugging Face Hub as {repo_id} ({type(e).__name__}: {first_line(e)[:160]}); "
                         f"offline or not logged in? Run `hf auth login`, then `hf upload {repo_id} {folder}`") from None
