"""Export a checkpoint as a Hugging Face folder: python export.py --ckpt=out --out_dir=out_hf

A GPT-2-layout model (--preset=gpt2) becomes a GPT2LMHeadModel that transformers' AutoModelForCausalLM loads:
config.json and model.safetensors in its layout. Other layouts (rope, rmsnorm, relu2, qk_norm, no biases) have no class
in transformers: they are written in gptkit's own layout (model_type "gptkit"), which sample.py, chat.py and
train.py --init_from read back, as does gptkit.hf.from_pretrained. Both get gptkit_tokenizer.json and a README.md.
"""
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from gptkit.checkpoint import BEST, LAST, build_model
from gptkit.errors import UsageError, run_cli
from gptkit.files import atomic_write, check_output
from gptkit.hf import CONFIG_FILE, EXPORTED_TOKENIZER_FILE, gptkit_config, hf_config, is_hf_gpt2_layout, to_hf_state
from gptkit.loading import load_any_checkpoint
from gptkit.model import PRESETS
from gptkit.options import option, parse_options


@dataclass
class ExportConfig:
    ckpt: str = option("out", "a checkpoint file or the folder train.py wrote (best.pt, else last.pt); also a pretrained folder or hub name")
    out_dir: str = option("out_hf", "the folder to write config.json, model.safetensors, gptkit_tokenizer.json and README.md into")


def layout_differences(config):
    """How a config departs from GPT-2's layout, e.g. 'pos_encoding=rope, norm=rmsnorm'."""
    gpt2 = PRESETS["gpt2"]
    differences = [f"{k}={getattr(config, k)}" for k in ("pos_encoding", "norm", "mlp", "qk_norm", "bias") if getattr(config, k) != gpt2[k]]
    if config.has_local_layers():
        differences.append(f"attn_pattern={config.attn_pattern} window={config.window}")
    return ", ".join(differences)


def export_readme(kind, model, tokenizer, source, out_dir):
    c = model.config
    lines = [f"# {Path(out_dir).name}", "",
             f"A GPT trained with gptkit, exported from `{source}`: {model.num_params() / 1e6:.2f}M parameters, {c.n_layer} layers x "
             f"{c.n_embd} wide, {c.n_head} heads, context {c.block_size} tokens, vocabulary {c.vocab_size}.", ""]
    if kind == "gpt2":
        lines += ["Load it with transformers (as `GPT2LMHeadModel`):", "", "```python",
                  "from transformers import AutoModelForCausalLM", f"model = AutoModelForCausalLM.from_pretrained({str(out_dir)!r})", "```", "",
                  f"or with gptkit: `python sample.py --ckpt={out_dir}`, `python chat.py --ckpt={out_dir}`, `gptkit.hf.from_pretrained({str(out_dir)!r})`.", ""]
    else:
        lines += [f"transformers has no class for this model's layout ({layout_differences(c)}), so `AutoModelForCausalLM` cannot load it. "
                  f"The weights are in gptkit's own layout (`model.safetensors` with gptkit's names; `config.json` holds its `GPTConfig`). "
                  f"Load it with gptkit: `python sample.py --ckpt={out_dir}`, `python chat.py --ckpt={out_dir}`, "
                  f"`python train.py --init_from={out_dir}`, or `gptkit.hf.from_pretrained({str(out_dir)!r})`.", ""]
    lines += [f"The tokenizer is `{EXPORTED_TOKENIZER_FILE}`, gptkit's format (tiktoken merge ranks and special tokens; `Tokenizer.from_json`), "
              f"a {tokenizer.kind} tokenizer of {tokenizer.n_vocab} ids; `<|endoftext|>` is id {tokenizer.eot_id}. transformers does not read it."]
    if tokenizer.kind == "gpt2":
        lines += ["It is GPT-2's encoding, so transformers' GPT-2 tokenizer gives the same ids for ordinary text; ids from 50257 on are "
                  "gptkit's chat special tokens."]
    return "\n".join(lines) + "\n"


def export(ckpt_spec, out_dir):
    """Write the checkpoint's model as a folder in out_dir; return the layout written: "gpt2" or "gptkit"."""
    from safetensors.torch import save

    out_dir = check_output(out_dir, "out_dir", folder=True)
    if any((out_dir / name).is_file() for name in (BEST, LAST)):
        raise UsageError(f"{out_dir}/ holds training checkpoints ({BEST}/{LAST}); export into another folder")
    ckpt = load_any_checkpoint(ckpt_spec)
    model, tokenizer = build_model(ckpt)
    chat_tuned = bool(ckpt.get("chat_tuned"))
    if is_hf_gpt2_layout(model.config):
        kind, config, tensors = "gpt2", hf_config(model.config, tokenizer.eot_id, chat_tuned), to_hf_state(model)
    else:
        kind, config = "gptkit", gptkit_config(model.config, chat_tuned)
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()
                   if not (k == "lm_head.weight" and model.config.tie_embeddings)}  # safetensors stores a shared tensor once
    with atomic_write(out_dir / "model.safetensors") as f:
        f.write(save(tensors, metadata={"format": "pt"}))
    for name, text in ((CONFIG_FILE, json.dumps(config, indent=2) + "\n"), (EXPORTED_TOKENIZER_FILE, tokenizer.to_json()),
                       ("README.md", export_readme(kind, model, tokenizer, ckpt["path"], out_dir))):
        with atomic_write(out_dir / name, "w") as f:
            f.write(text)
    if kind == "gpt2":
        print(f"wrote {out_dir}/ as a GPT2LMHeadModel ({model.num_params() / 1e6:.2f}M parameters): "
              f"transformers.AutoModelForCausalLM.from_pretrained({str(out_dir)!r}) loads it")
    else:
        print(f"note: transformers has no class for this model's layout ({layout_differences(model.config)}); wrote {out_dir}/ in gptkit's "
              f"own format, which loads back with --ckpt={out_dir}, --init_from={out_dir} or gptkit.hf.from_pretrained({str(out_dir)!r})")
    return kind


def main():
    cfg = parse_options(ExportConfig, description=__doc__, positional=None)
    export(cfg.ckpt, cfg.out_dir)


def cli():
    """The gptkit-export command, and `python export.py`."""
    torch.set_grad_enabled(False)
    run_cli(main)


if __name__ == "__main__":
    cli()
