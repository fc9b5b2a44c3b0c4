"""GGUF files for llama.cpp, ollama and LM Studio: the gpt2 preset as llama.cpp's `gpt2` architecture.

That architecture computes exactly what our gpt2 preset does: learned (or any fixed) position table added to the token
embedding, LayerNorm with biases (eps 1e-5), fused query/key/value, tanh-approximated GELU, tied or separate output.
The modern preset has no llama.cpp architecture that computes the same function (see `unmappable`), so it is refused
in one line rather than exported approximately. The tokenizer travels inside the file (gptkit.gguf_vocab) with the
chat template in Jinja, and an ollama Modelfile is written beside it.
"""
from pathlib import Path

import numpy as np

from gptkit.chat_session import CHAT_TEMPERATURE
from gptkit.chat_template import JINJA_TEMPLATE, OLLAMA_TEMPLATE
from gptkit.engine import SamplingOptions
from gptkit.errors import UsageError
from gptkit.files import atomic_path, atomic_write
from gptkit.gguf_vocab import gguf_vocabulary, pre_tokenizer
from gptkit.hf import LAYER_NORM_EPS

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")
Q8_BLOCK = 32
# llama.cpp refuses a BPE vocabulary without merges and GGUF cannot store an empty list, so the bytes tokenizer (which
# merges nothing) gets one merge that can never apply: its left side, two NUL bytes, is made by no merge.
INERT_MERGE = "ĀĀ Ā"  # q8_0 quantizes rows in blocks of 32 values, each with its own scale
# llama.cpp's per-layer names for ours (each has a weight and a bias).
LAYER_TENSORS = (("ln_1", "attn_norm"), ("attn.c_attn", "attn_qkv"), ("attn.c_proj", "attn_output"),
                 ("ln_2", "ffn_norm"), ("mlp.c_fc", "ffn_up"), ("mlp.c_proj", "ffn_down"))


def unmappable(config):
    """What llama.cpp's gpt2 architecture cannot compute of this model, as a phrase; "" when all of it maps."""
    differences = [what for differs, what in (
        (config.pos_encoding == "rope", "rotary positions"),
        (config.norm != "layernorm", "RMSNorm"),
        (config.mlp != "gelu", "a ReLU² MLP"),
        (config.qk_norm, "QK-norm"),
        (not config.bias, "no biases"),
        (config.has_local_layers(), f"local attention layers ({config.attn_pattern}, window {config.window})"),
    ) if differs]
    return ", ".join(differences)


def check_exportable(config, gguf_type):
    """One line, before anything is written, when the model or the type cannot be expressed in GGUF as llama.cpp reads it."""
    if gguf_type not in GGUF_TYPES:
        raise UsageError(f"--type={gguf_type} is not a GGUF type this export writes; use one of {', '.join(GGUF_TYPES)}")
    differences = unmappable(config)
    if differences:
        raise UsageError(
            f"GGUF export needs the gpt2 preset, which llama.cpp runs as its gpt2 architecture; this model has {differences}, and no "
            "llama.cpp architecture computes that exactly (the closest, arcee, has RMSNorm, rotary positions and a ReLU² MLP without a "
            "gate, but no QK-norm); export it with --format=hf, or train with --preset=gpt2 to run it in llama.cpp")
    if gguf_type == "q8_0" and config.n_embd % Q8_BLOCK:
        raise UsageError(f"--type=q8_0 quantizes rows in blocks of {Q8_BLOCK} values and this model's width is {config.n_embd}; "
                         "use --type=f16 or --type=f32")


def gguf_tensors(model, n_vocab):
    """(llama.cpp name, float32 array) pairs, in PyTorch's (out, in) shape, which GGUF stores with the dimensions reversed.

    The embedding (and a separate output layer) keep only the tokenizer's n_vocab rows: llama.cpp sizes them by its
    token list, and the rows beyond are padding no token reaches.
    """
    c = model.config
    weights = {name: t.detach().float().cpu() for name, t in model.state_dict().items()}
    yield "token_embd.weight", weights["transformer.wte.weight"][:n_vocab]
    positions = weights["transformer.wpe.weight"] if c.pos_encoding == "learned" else model.pos_table.float().cpu()  # sinusoidal: the fixed table
    yield "position_embd.weight", positions
    for layer in range(c.n_layer):
        for ours, theirs in LAYER_TENSORS:
            for kind in ("weight", "bias"):
                yield f"blk.{layer}.{theirs}.{kind}", weights[f"transformer.h.{layer}.{ours}.{kind}"]
    yield "output_norm.weight", weights["transformer.ln_f.weight"]
    yield "output_norm.bias", weights["transformer.ln_f.bias"]
    if not c.tie_embeddings:  # tied: llama.cpp reuses token_embd as the output layer
        yield "output.weight", weights["lm_head.weight"][:n_vocab]


def encode_tensor(name, tensor, gguf_type):
    """(data, raw GGML type or None) for one tensor: vectors and the position table stay float32; matrices take gguf_type."""
    import gguf

    data = tensor.numpy().astype(np.float32)
    if data.ndim == 1 or name == "position_embd.weight" or gguf_type == "f32":
        return data, None
    if gguf_type == "f16":
        return data.astype(np.float16), None
    raw_type = {"bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[gguf_type]
    return gguf.quants.quantize(data, raw_type), raw_type


def write_gguf(model, tokenizer, path, gguf_type="f32", name=None):
    """Write the model, its tokenizer and chat template to `path` as one GGUF file, atomically."""
    import gguf

    c = model.config
    check_exportable(c, gguf_type)
    tokens, types, merges = gguf_vocabulary(tokenizer)
    file_types = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
                  "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(tmp, "gpt2")
        writer.add_name(name or Path(path).stem)
        writer.add_context_length(c.block_size)
        writer.add_embedding_length(c.n_embd)
        writer.add_feed_forward_length(4 * c.n_embd)
        writer.add_block_count(c.n_layer)
        writer.add_head_count(c.n_head)
        writer.add_layer_norm_eps(LAYER_NORM_EPS)
        writer.add_file_type(file_types[gguf_type])
        if gguf_type == "q8_0":
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre_tokenizer(tokenizer))
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(merges or [INERT_MERGE])
        writer.add_bos_token_id(tokenizer.special_id("<|bos|>"))
        writer.add_eos_token_id(tokenizer.eot_id)
        writer.add_eot_token_id(tokenizer.special_id("<|assistant_end|>"))  # ends a chat reply
        writer.add_add_bos_token(False)  # as sample.py: a completion starts from the prompt's own tokens; the chat template adds <|bos|>
        writer.add_add_eos_token(False)
        writer.add_chat_template(JINJA_TEMPLATE)
        for tensor_name, tensor in gguf_tensors(model, tokenizer.n_vocab):
            data, raw_type = encode_tensor(tensor_name, tensor, gguf_type)
            writer.add_tensor(tensor_name, data, raw_dtype=raw_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return Path(path)


def ollama_modelfile(gguf_path, block_size):
    """An ollama Modelfile for the GGUF beside it: our chat template, its stop tokens, chat.py's sampling defaults."""
    gguf_path = Path(gguf_path)
    return "\n".join([
        f"# ollama create {gguf_path.stem} -f {gguf_path.stem}.Modelfile && ollama run {gguf_path.stem}",
        f"FROM ./{gguf_path.name}",
        f'TEMPLATE """{OLLAMA_TEMPLATE}"""',
        'PARAMETER stop "<|assistant_end|>"',
        'PARAMETER stop "<|endoftext|>"',
        f"PARAMETER num_ctx {block_size}",
        f"PARAMETER temperature {CHAT_TEMPERATURE:g}",
        f"PARAMETER top_k {SamplingOptions().top_k}",
        "",
    ])


def write_modelfile(gguf_path, block_size):
    path = Path(gguf_path).with_suffix(".Modelfile")
    with atomic_write(path, "w") as f:
        f.write(ollama_modelfile(gguf_path, block_size))
    return path

