"""Export a checkpoint for other tools: a Hugging Face folder, or a GGUF file for llama.cpp and ollama.

  python export.py --ckpt=out --out_dir=out_hf                      # a Hugging Face folder (the default --format=hf)
  python export.py --ckpt=out --format=gguf --type=f16 --out=m.gguf  # one GGUF file, and m.Modelfile for ollama

--format=hf: a GPT-2-layout model (--preset=gpt2) becomes a GPT2LMHeadModel that transformers' AutoModelForCausalLM
loads. Other layouts (rope, rmsnorm, relu2, qk_norm, no biases) have no class in transformers: they are written in
gptkit's own layout (model_type "gptkit"), which sample.py, chat.py and train.py --init_from read back. Both get
gptkit_tokenizer.json and a README.md with the Hub's metadata; --push_to_hub=USER/NAME uploads the folder.

--format=gguf: the gpt2 preset as llama.cpp's gpt2 architecture, the tokenizer and chat template inside the file.
"""
import json
from dataclasses import dataclass

import torch

from gptkit.checkpoint import BEST, LAST, build_model
from gptkit.errors import UsageError, run_cli
from gptkit.files import atomic_write, check_output
from gptkit.gguf_export import GGUF_TYPES, write_gguf, write_modelfile
from gptkit.hf import CONFIG_FILE, EXPORTED_TOKENIZER_FILE, gptkit_config, hf_config, is_hf_gpt2_layout, to_hf_state
from gptkit.hub import check_repo_id, hub_readme, push_folder
from gptkit.loading import checkpoint_name, load_any_checkpoint
from gptkit.model import PRESETS
from gptkit.options import option, parse_options


@dataclass
class ExportConfig:
    ckpt: str = option("out", "a checkpoint file or the folder train.py wrote (best.pt, else last.pt); also a pretrained folder or hub name")
    format: str = option("hf", "hf: a Hugging Face folder (--out_dir); gguf: one GGUF file for llama.cpp, ollama and LM Studio (--out)", ("hf", "gguf"))
    out_dir: str = option("out_hf", "--format=hf: the folder to write config.json, model.safetensors, gptkit_tokenizer.json and README.md into")
    out: str = option("", "--format=gguf: the file to write (empty: the checkpoint folder's name + .gguf, e.g. out.gguf); "
                          "an ollama Modelfile is written beside it")
    type: str = option("f32", "--format=gguf: the matrices' type (vectors stay f32); q8_0 needs a width divisible by 32", GGUF_TYPES)
    push_to_hub: str = option("", "--format=hf: after writing the folder, upload it to the Hugging Face Hub as USER/NAME (needs `hf auth login`)")
    license: str = option("other", "the license the folder's README.md declares to the Hub, e.g. mit or apache-2.0")


def layout_differences(config):
    """How a config departs from GPT-2's layout, e.g. 'pos_encoding=rope, norm=rmsnorm'."""
    gpt2 = PRESETS["gpt2"]
    differences = [f"{k}={getattr(config, k)}" for k in ("pos_encoding", "norm", "mlp", "qk_norm", "bias") if getattr(config, k) != gpt2[k]]
    if config.has_local_layers():
        differences.append(f"attn_pattern={config.attn_pattern} window={config.window}")
    return ", ".join(differences)


def export(ckpt_spec, out_dir, license="other", push_to_hub=""):
    """Write the checkpoint's model as a folder in out_dir (and upload it when push_to_hub names a Hub repo);
    return the layout written: "gpt2" or "gptkit"."""
    from safetensors.torch import save

    out_dir = check_output(out_dir, "out_dir", folder=True)
    if push_to_hub:
        check_repo_id(push_to_hub)
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
                       ("README.md", hub_readme(kind, model, tokenizer, ckpt, out_dir, license, layout_differences(model.config)))):
        with atomic_write(out_dir / name, "w") as f:
            f.write(text)
    if kind == "gpt2":
        print(f"wrote {out_dir}/ as a GPT2LMHeadModel ({model.num_params() / 1e6:.2f}M parameters): "
              f"transformers.AutoModelForCausalLM.from_pretrained({str(out_dir)!r}) loads it")
    else:
        print(f"note: transformers has no class for this model's layout ({layout_differences(model.config)}); wrote {out_dir}/ in gptkit's "
              f"own format, which loads back with --ckpt={out_dir}, --init_from={out_dir} or gptkit.hf.from_pretrained({str(out_dir)!r})")
    if push_to_hub:
        push_folder(out_dir, push_to_hub)
        print(f"uploaded {out_dir}/ to the Hugging Face Hub as {push_to_hub}")
    return kind


def export_gguf(ckpt_spec, out="", gguf_type="f32"):
    """Write the checkpoint's model as one GGUF file and an ollama Modelfile beside it; returns the GGUF's path."""
    out = check_output(out or f"{checkpoint_name(ckpt_spec)}.gguf", "out")
    if not out.parent.is_dir():
        raise UsageError(f"--out={out}: the folder {out.parent} does not exist; create it first, or write the file elsewhere")
    ckpt = load_any_checkpoint(ckpt_spec)
    model, tokenizer = build_model(ckpt)
    write_gguf(model, tokenizer, out, gguf_type)  # checks first that llama.cpp can run the model, in one line
    modelfile = write_modelfile(out, model.config.block_size)
    print(f"wrote {out} ({gguf_type}, {out.stat().st_size / 2**20:.1f} MiB; llama.cpp's gpt2 architecture) and {modelfile}: "
          f"llama-cli -m {out} -cnv, or ollama create {out.stem} -f {modelfile}")
    return out


def main():
    cfg = parse_options(ExportConfig, description=__doc__, positional=None)
    if cfg.format == "gguf":
        if cfg.push_to_hub:
            raise UsageError("--push_to_hub uploads the Hugging Face folder; use it with --format=hf (upload a GGUF with `hf upload USER/NAME FILE.gguf`)")
        export_gguf(cfg.ckpt, cfg.out, cfg.type)
    else:
        export(cfg.ckpt, cfg.out_dir, cfg.license, cfg.push_to_hub)


def cli():
    """The gptkit-export command, and `python export.py`."""
    torch.set_grad_enabled(False)
    run_cli(main)


if __name__ == "__main__":
    cli()
