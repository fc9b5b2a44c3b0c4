"""Hugging Face interop: load GPT-2's published weights, and read the folders export.py writes.

A pretrained folder holds config.json and weights (model.safetensors, or pytorch_model.bin read with
torch.load(weights_only=True), either possibly sharded with an .index.json). config.json's model_type says the layout:
"gpt2" is Hugging Face's GPT-2 (GPT2LMHeadModel); "gptkit" is our own GPTConfig and key names, which export.py writes
for the layouts transformers has no class for. Nothing here needs transformers; huggingface_hub downloads hub names.
"""
import json
import math
import pickle
import re
from pathlib import Path

import torch

from gptkit.checkpoint import BEST, FORMAT_VERSION, LAST, make_checkpoint, model_config_from
from gptkit.errors import UsageError, first_line
from gptkit.files import read_json_object
from gptkit.model import GPT, GPT2_SIZES, PRESETS, GPTConfig
from gptkit.tokenizer import Tokenizer, gpt2_tokenizer

CONFIG_FILE = "config.json"
EXPORTED_TOKENIZER_FILE = "gptkit_tokenizer.json"  # our tokenizer's JSON (Tokenizer.to_json), beside the weights
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
HUB_OWNER = "openai-community"  # GPT-2's home on the hub (the bare names redirect there)
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh")  # what our gpt2 preset computes: F.gelu(approximate="tanh")
LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, which model.py uses, as GPT-2 does
# GPT-2 stores these as Conv1D weights, (in, out): the transpose of nn.Linear's (out, in).
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
MASK_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")  # GPT-2's saved causal mask: a constant, not a weight


# --- where the weights are ------------------------------------------------------------------------------------

def hub_name(spec):
    """The GPT-2 hub name `spec` stands for (gpt2, gpt2-medium, gpt2-large, gpt2-xl, optionally openai-community/...), else None."""
    name = str(spec).removeprefix(f"{HUB_OWNER}/")
    return name if name in GPT2_SIZES and not Path(spec).exists() else None


def is_pretrained(spec):
    """A folder with config.json (and none of train.py's best.pt/last.pt, which make it ours), or a GPT-2 hub name."""
    path = Path(spec)
    if path.is_dir():
        return (path / CONFIG_FILE).is_file() and not any((path / name).is_file() for name in (BEST, LAST))
    return hub_name(spec) is not None


def locate(spec):
    """(folder, how to name it in messages): a local folder as it is, a hub name downloaded (or found in the hub's cache)."""
    path = Path(spec)
    if path.is_dir():
        if not (path / CONFIG_FILE).is_file():
            raise UsageError(f"{path}/ has no {CONFIG_FILE}: pass a Hugging Face GPT-2 folder, one export.py wrote, or a hub name "
                             f"({', '.join(GPT2_SIZES)})")
        return path, str(path)
    name = hub_name(spec)
    if name is None:
        raise UsageError(f"{spec} is neither a folder with {CONFIG_FILE} nor a GPT-2 hub name ({', '.join(GPT2_SIZES)})")
    return download(name), name


def download(name):
    from huggingface_hub import snapshot_download

    repo = f"{HUB_OWNER}/{name}"
    try:
        return Path(snapshot_download(repo, allow_patterns=[CONFIG_FILE, "model.safetensors", "model.safetensors.index.json", "model-*.safetensors"]))
    except Exception as e:  # offline, DNS, HTTP and cache errors all come as different types
        raise UsageError(f"could not download {name} from the Hugging Face hub ({type(e).__name__}; offline?); on a machine with internet run "
                         f"`hf download {repo} {CONFIG_FILE} model.safetensors --local-dir {name}-hf`, copy that folder here "
                         f"and pass its path ({name}-hf) instead of the name") from None


def read_config(folder):
    return read_json_object(folder / CONFIG_FILE, "it should hold the model's settings (export it again, or download it again)")


def read_weights(folder):
    """Every tensor of the folder's weights, by their stored names."""
    path = next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if path is None:
        raise UsageError(f"{folder}/ has {CONFIG_FILE} but no weights: expected model.safetensors or pytorch_model.bin")
    if path.name.endswith(".index.json"):
        try:
            shards = sorted(set(json.loads(path.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise UsageError(f"{path} is not a valid weight index ({first_line(e)})") from None
        state = {}
        for shard in shards:
            state.update(read_weight_file(folder / shard))
        return state
    return read_weight_file(path)


def read_weight_file(path):
    if not path.is_file():
        raise UsageError(f"{path} is missing (its index lists it)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(path, device="cpu")
        state = torch.load(path, map_location="cpu", weights_only=True)  # never runs code from the file
    except pickle.UnpicklingError as e:
        raise UsageError(f"refusing to load {path}: it holds objects other than tensors, which could run code ({first_line(e)})") from None
    except Exception as e:  # safetensors and torch raise many kinds for a truncated or foreign file
        raise UsageError(f"{path} is not a readable weight file (truncated or corrupted?): {first_line(e)}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"{path} does not hold a dictionary of tensors")
    return state



# --- Hugging Face GPT-2 <-> ours ------------------------------------------------------------------------------

def config_from_hf(hf, where):
    """Our gpt2-preset GPTConfig for a GPT2LMHeadModel config.json; a UsageError for a setting we do not compute."""
    if hf.get("model_type") != "gpt2":
        raise UsageError(f"{where}: model_type {hf.get('model_type')!r} is not supported; gptkit loads GPT-2 (model_type \"gpt2\") "
                         "and the folders export.py writes (\"gptkit\")")
    sizes = {}
    for ours, theirs in (("n_layer", "n_layer"), ("n_head", "n_head"), ("n_embd", "n_embd"), ("vocab_size", "vocab_size"), ("block_size", "n_positions")):
        value = hf.get(theirs, hf.get("n_ctx") if theirs == "n_positions" else None)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise UsageError(f"{where}: config.json needs a positive integer {theirs}, not {value!r}")
        sizes[ours] = value
    activation = hf.get("activation_function", "gelu_new")
    if activation not in TANH_GELU:
        raise UsageError(f"{where}: activation_function={activation!r} is not supported; gptkit's GPT-2 computes the tanh GELU "
                         f"({' or '.join(TANH_GELU)})")
    eps = hf.get("layer_norm_epsilon", LAYER_NORM_EPS)
    if not isinstance(eps, (int, float)) or not math.isclose(eps, LAYER_NORM_EPS, rel_tol=1e-6):
        raise UsageError(f"{where}: layer_norm_epsilon={eps} is not supported; gptkit's LayerNorm uses {LAYER_NORM_EPS}")
    unsupported = [(key, hf.get(key, default)) for key, default, ok in (
        ("n_inner", None, lambda v: v in (None, 4 * sizes["n_embd"])),
        ("scale_attn_weights", True, lambda v: v is True),
        ("scale_attn_by_inverse_layer_idx", False, lambda v: not v),
        ("add_cross_attention", False, lambda v: not v),
    ) if not ok(hf.get(key, default))]
    if unsupported:
        key, value = unsupported[0]
        raise UsageError(f"{where}: {key}={value!r} is not supported (gptkit's GPT-2 has a 4x MLP, 1/sqrt(head size) attention, no cross-attention)")
    try:
        return GPTConfig(**{**PRESETS["gpt2"], **sizes, "tie_embeddings": bool(hf.get("tie_word_embeddings", True))})
    except ValueError as e:
        raise UsageError(f"{where}: {e}") from None


def from_hf_state(hf_state, config):
    """GPT-2's tensors under our names: `transformer.` prefix or not, mask buffers skipped, Conv1D weights transposed."""
    state = {}
    for key, tensor in hf_state.items():
        name = key.removeprefix("transformer.")
        if MASK_BUFFER.fullmatch(name) or (name == "lm_head.weight" and config.tie_embeddings):
            continue  # a tied lm_head, when stored, is the embedding again
        if name.endswith(CONV1D) and tensor.dim() == 2:
            tensor = tensor.t()
        state[name if name == "lm_head.weight" else f"transformer.{name}"] = tensor.float().contiguous()
    return state


def is_hf_gpt2_layout(config):
    """Whether GPT2LMHeadModel computes exactly what our model with this config does."""
    gpt2 = PRESETS["gpt2"]
    return not config.has_local_layers() and all(  # GPT-2 has no banded layers
        getattr(config, key) == gpt2[key] for key in ("pos_encoding", "norm", "mlp", "qk_norm", "bias"))


def to_hf_state(model):
    """Our model's weights as GPT2LMHeadModel stores them: `transformer.` keys, Conv1D weights transposed, a tied lm_head omitted."""
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_embeddings:
            continue
        if name.endswith(CONV1D):
            tensor = tensor.t()
        state[name] = tensor.detach().float().cpu().contiguous()
    return state


def hf_config(config, eot_id, chat_tuned=False):
    """config.json of a GPT2LMHeadModel with our model's sizes (its vocabulary padded as trained)."""
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": config.vocab_size, "n_positions": config.block_size, "n_ctx": config.block_size,
        "n_embd": config.n_embd, "n_layer": config.n_layer, "n_head": config.n_head, "n_inner": None,
        "activation_function": "gelu_new", "layer_norm_epsilon": LAYER_NORM_EPS,
        "resid_pdrop": config.dropout, "embd_pdrop": config.dropout, "attn_pdrop": config.dropout,
        "initializer_range": 0.02, "scale_attn_weights": True, "use_cache": True,
        "tie_word_embeddings": config.tie_embeddings, "bos_token_id": eot_id, "eos_token_id": eot_id,
        "gptkit_chat_tuned": chat_tuned,
    }


def gptkit_config(config, chat_tuned=False):
    """config.json of our own layout: the GPTConfig itself."""
    return {"model_type": "gptkit", "format_version": FORMAT_VERSION, **vars(config), "gptkit_chat_tuned": chat_tuned}


# --- loading --------------------------------------------------------------------------------------------------

def read_pretrained(spec):
    """(GPTConfig, weights under our names, folder, config.json, name for messages) of a pretrained folder or hub name."""
    folder, where = locate(spec)
    meta = read_config(folder)
    if meta.get("model_type") == "gptkit":
        config = model_config_from(meta, f"{where}/{CONFIG_FILE}")
        state = {k: v.float().contiguous() for k, v in read_weights(folder).items()}
    else:
        config = config_from_hf(meta, where)
        state = from_hf_state(read_weights(folder), config)
    if config.tie_embeddings and "transformer.wte.weight" in state:
        state["lm_head.weight"] = state["transformer.wte.weight"]  # our state_dict names the shared matrix twice
    check_weights(state, config, where)
    return config, state, folder, meta, where


def check_weights(state, config, where):
    with torch.device("meta"):  # the names and shapes only: no memory, no random init
        expected = {name: tuple(t.shape) for name, t in GPT(config).state_dict().items()}
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    wrong = [f"{k} {tuple(state[k].shape)} (config.json: {expected[k]})" for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    for problem, names in (("missing", missing), ("unexpected", unexpected), ("of the wrong shape", wrong)):
        if names:
            more = f" and {len(names) - 2} more" if len(names) > 2 else ""
            raise UsageError(f"{where}: the weights do not fit config.json: {problem}: {', '.join(names[:2])}{more}")


def from_pretrained(name_or_dir):
    """Our GPT, in eval mode, with the weights of a Hugging Face GPT-2 (a folder, or a hub name such as "gpt2")
    or of a folder export.py wrote. The vocabulary is the folder's (50,257 for GPT-2): logits match transformers'."""
    config, state, *_ = read_pretrained(name_or_dir)
    model = GPT(config)
    model.load_state_dict(state)
    return model.eval()


def hf_checkpoint(name_or_dir):
    """What load_checkpoint returns, for a pretrained folder or hub name: model config, weights, tokenizer JSON, path.

    The tokenizer is the folder's gptkit_tokenizer.json (written by export.py), else tiktoken's GPT-2 encoding.
    """
    config, state, folder, meta, where = read_pretrained(name_or_dir)
    tokenizer_file = folder / EXPORTED_TOKENIZER_FILE
    if tokenizer_file.is_file():
        try:
            tokenizer = Tokenizer.from_json(tokenizer_file.read_text(encoding="utf-8"))
        except (UsageError, UnicodeDecodeError) as e:
            raise UsageError(f"{tokenizer_file}: {e}") from None
    elif meta.get("model_type") == "gptkit":
        raise UsageError(f"{where}/ has no {EXPORTED_TOKENIZER_FILE}, the tokenizer its model was trained with; export it again with export.py")
    else:
        try:
            tokenizer = gpt2_tokenizer()
        except UsageError as e:
            raise UsageError(f"{where} has no {EXPORTED_TOKENIZER_FILE}, so it uses GPT-2's tokenizer, but {e}") from None
    config, state = fit_vocabulary(config, state, tokenizer, where)
    return {**make_checkpoint(config, state, tokenizer, chat_tuned=bool(meta.get("gptkit_chat_tuned"))), "path": where}


def fit_vocabulary(config, state, tokenizer, where):
    """Give the tokenizer's ids past the model's vocabulary embedding rows, when they are all special tokens.

    Our GPT-2 tokenizer reserves 7 chat tokens after GPT-2's 50,257 ids. Their new rows are the mean of the trained ones:
    their logits then sit at the average (a zero row would give them logit 0, far above GPT-2's usual ones).
    """
    extra = tokenizer.n_vocab - config.vocab_size
    if extra <= 0:
        return config, state
    special = {tokenizer.special_id(name) for name in tokenizer.encoding.special_tokens_set}
    if not set(range(config.vocab_size, tokenizer.n_vocab)) <= special:
        raise UsageError(f"{where}: its tokenizer has {tokenizer.n_vocab} ids but the model only {config.vocab_size}; "
                         f"put the tokenizer it was trained with beside it as {EXPORTED_TOKENIZER_FILE}")
    state = dict(state)
    for name in ("transformer.wte.weight", "lm_head.weight"):
        if name == "lm_head.weight" and config.tie_embeddings:
            state[name] = state["transformer.wte.weight"]
            continue
        rows = state[name]
        state[name] = torch.cat((rows, rows.mean(dim=0, keepdim=True).expand(extra, -1)))
    return GPTConfig(**{**vars(config), "vocab_size": tokenizer.n_vocab}), state
