"""Sharded checkpoints (torch.distributed.checkpoint): every rank writes its own shares of the weights and optimizer
states, in parallel, nothing gathered; a later run loads them into whatever layout it has (other data, tensor or
pipeline parallel sizes, or one process), each rank reading only what it holds.

A checkpoint is a folder out_dir/sharded/step_NNNNNNN/: DCP's files, then checkpoint.pt (written by rank 0 once every
rank's files are complete) with the run's other fields: model config, tokenizer, step, data position, RNG states. A
folder without checkpoint.pt is an interrupted save and is ignored (and removed by the next one).

Tensors are saved under the whole model's names and shapes, the same in every layout, which is what lets DCP reshard
them. The one tensor whose logical form depends on the layout is the fused query/key/value projection under tensor
parallelism (its rows reordered by rank, gptkit/tensor_parallel.py): it is saved whole, in the stored order.
"""
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from gptkit.checkpoint import load_checkpoint, write_checkpoint
from gptkit.tensor_parallel import QKV, from_stored, to_stored

FOLDER, FIELDS_FILE = "sharded", "checkpoint.pt"


def latest_sharded(out_dir):
    """The newest complete sharded checkpoint folder in out_dir, or None."""
    complete = sorted(p.parent for p in (Path(out_dir) / FOLDER).glob(f"step_*/{FIELDS_FILE}"))
    return complete[-1] if complete else None


def save_sharded(out_dir, keep_last, model, optimizers, fields, dist):
    """Write this rank's shares (every rank calls it), then rank 0 the run's other `fields` (a checkpoint dict without
    weights or optimizer states); keeps the newest keep_last. Returns the folder."""
    import torch.distributed.checkpoint as dcp

    folder = Path(out_dir) / FOLDER / f"step_{fields['step']:07d}"
    if dist.is_main and folder.exists():  # an interrupted save of this step (no checkpoint.pt yet), or one being replaced
        shutil.rmtree(folder)
    dist.barrier()
    with _one_process():
        dcp.save(_state(model, optimizers, dist.tp, saving=True)[0], checkpoint_id=folder, no_dist=not dist.active)
    dist.barrier()  # every rank's files are written
    if dist.is_main:
        write_checkpoint(folder / FIELDS_FILE, {**fields, "model": {}})  # last: it marks the folder complete
        complete = sorted(p.parent for p in folder.parent.glob(f"step_*/{FIELDS_FILE}"))
        for old in [p for p in folder.parent.glob("step_*") if p not in complete[-keep_last:]]:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def load_fields(folder):
    """The run's fields of a sharded checkpoint (what load_checkpoint returns for a single file, without weights)."""
    return load_checkpoint(Path(folder) / FIELDS_FILE)


def load_sharded(folder, model, optimizers, dist):
    """Read a sharded checkpoint into the model and optimizers as they are split here (every rank calls it)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    state, like = _state(model, optimizers, dist.tp, saving=False)
    with _one_process():
        dcp.load(state, checkpoint_id=folder, no_dist=not dist.active)
    set_model_state_dict(model, _split(state["model"], like["model"], dist.tp))
    for opt, states, like_states, groups in zip(optimizers, state["optimizers"], like["optimizers"], like["groups"]):
        states = {name: _split(values, like_states[name], dist.tp, name) for name, values in states.items()}
        set_optimizer_state_dict(model, opt, {"state": states, "param_groups": groups})


def _state(model, optimizers, tp, saving):
    """What DCP saves, or the destinations it loads into: {"model": {name: tensor}, "optimizers": [{name: {key: tensor}}]},
    each tensor this rank's share (a DTensor, or a plain tensor DCP saves once), the fused query/key/value projection's
    whole under tensor parallelism; and the shares as this rank holds them, with the optimizers' parameter groups."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    weights = get_model_state_dict(model)
    optimizer_states = [get_optimizer_state_dict(model, o) for o in optimizers]  # creates the states if no step ran yet
    state = {"model": _whole(weights, tp, saving),
             "optimizers": [{name: _whole(values, tp, saving, name) for name, values in s["state"].items()} for s in optimizer_states]}
    like = {"model": weights, "optimizers": [s["state"] for s in optimizer_states], "groups": [s["param_groups"] for s in optimizer_states]}
    return state, like


def _whole(tensors, tp, saving, name=None):
    """A {key: tensor} dict with the fused query/key/value projection's tensors whole and in the stored order (saving),
    or empty whole tensors to load them into; the others as they are."""
    if tp == 1:
        return dict(tensors)
    out = {}
    for key, tensor in tensors.items():
        full_name = name or key
        if QKV in full_name and torch.is_tensor(tensor) and tensor.dim() > 0:
            out[key] = to_stored(full_name, tensor.full_tensor(), tp) if saving else torch.empty(tensor.shape, dtype=tensor.dtype, device=tensor.device)
        else:
            out[key] = tensor
    return out


def _split(tensors, like, tp, name=None):
    """Loaded tensors as this rank holds them: a whole query/key/value projection reordered for tensor parallelism and
    split as `like` (its share here) is."""
    if tp == 1:
        return tensors
    from torch.distributed.tensor import distribute_tensor

    out = {}
    for key, tensor in tensors.items():
        target = like[key]
        if hasattr(target, "to_local") and not hasattr(tensor, "to_local"):
            tensor = distribute_tensor(from_stored(name or key, tensor, tp), target.device_mesh, target.placements, src_data_rank=None)
        out[key] = tensor
    return out


def consolidated(folder):
    """A sharded checkpoint as one single-file checkpoint dict (weights only, no optimizer states), read in one process:
    what sample.py, chat.py and export.py load when a run left only sharded checkpoints."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    fields = load_fields(folder)
    with tempfile.TemporaryDirectory() as tmp, _one_process():
        dcp_to_torch_save(folder, Path(tmp) / "whole.pt")
        whole = torch.load(Path(tmp) / "whole.pt", weights_only=True)
    return {**fields, "model": whole["model"]}


@contextmanager
def _one_process():
    """DCP in one process (no process group), without its warning that it assumes that is what we mean."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.distributed is disabled")
        yield
