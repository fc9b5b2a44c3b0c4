"""Training on several processes, composed around the plain model: torchrun's environment, the process group,
DDP or FSDP2 wrapping, activation checkpointing, rank helpers, and full (consolidated) state dicts for checkpoints.

train.py calls this in a few places; model.py knows nothing about distribution. Run alone (`python train.py`), every
helper here is a no-op: no process group is created and nothing changes.

Data: every rank draws the same global batch from one shared RNG and keeps its own share, so W processes see exactly
the batches one process would with the same global batch (batch_size x grad_accum sequences per step): whole
micro-batches when grad_accum is a multiple of W, else the rows of every micro-batch (`batch_split`). So the defaults
(grad_accum=1) run under torchrun as they are, as nanochat and torchtitan derive each device's share from a global batch.
"""
import functools
import os
import sys
import time
from contextlib import nullcontext
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.utils.checkpoint import checkpoint

from gptkit.errors import UsageError

# A collective that waits longer than this (a rank died, or hangs) raises instead of blocking forever.
TIMEOUT = timedelta(minutes=15)


def launched_world_size():
    """The number of processes torchrun started (1 when run as `python train.py`)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def resolve_parallel(parallel):
    """auto: ddp when launched by torchrun with more than one process, otherwise none."""
    if parallel == "auto":
        return "ddp" if launched_world_size() > 1 else "none"
    if "WORLD_SIZE" not in os.environ:
        raise UsageError(f"--parallel={parallel} needs torchrun (WORLD_SIZE is not set): "
                         f"torchrun --standalone --nproc_per_node=N train.py ... (or --parallel=auto)")
    return parallel


class Distributed:
    """This process among the job's: rank, world size, and the parallelism in use ("none", "ddp" or "fsdp")."""

    def __init__(self, mode="none", rank=0, world_size=1, local_rank=0, split="batches"):
        self.mode, self.rank, self.world_size, self.local_rank = mode, rank, world_size, local_rank
        self.split = split  # how the ranks share a step's micro-batches: "batches" or "rows" (batch_split)
        self._stdout = None

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def active(self):
        return self.mode != "none"

    # -- setup and teardown ---------------------------------------------------------------------------------------

    @classmethod
    def setup(cls, cfg, device):
        """Start the process group when --parallel asks for one; returns (Distributed, the device this rank uses)."""
        mode = resolve_parallel(cfg.parallel)
        if mode == "none":
            return cls(), device
        rank, world_size, local_rank = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
        split = batch_split(cfg, world_size)
        if device.startswith("cuda"):
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(device)
            backend = "nccl"
        elif device == "cpu":
            backend = "gloo"
        else:
            raise UsageError(f"--parallel={mode} runs on CUDA (nccl) or the CPU (gloo), not on --device={device}")
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=TIMEOUT,
                                **({"device_id": torch.device(device)} if backend == "nccl" else {}))
        self = cls(mode, rank, world_size, local_rank, split)
        if not self.is_main:  # only rank 0 prints; errors still reach stderr
            self._stdout, sys.stdout = sys.stdout, open(os.devnull, "w")
        return self, device

    def close(self):
        if self.active and dist.is_initialized():
            dist.destroy_process_group()
        if self._stdout is not None:
            sys.stdout.close()
            sys.stdout, self._stdout = self._stdout, None

    def barrier(self):
        if self.active:
            dist.barrier()

    def wait_for(self, ready, poll_s=2.0):
        """Rank 0 makes something (prepared data) while the others poll the shared filesystem: no collective, no timeout."""
        if self.active and not self.is_main:
            while not ready():
                time.sleep(poll_s)

    # -- the model ----------------------------------------------------------------------------------------------

    def shard(self, model):
        """FSDP2: shard each transformer block, then the root (in place; the optimizer is built afterwards)."""
        if self.mode == "fsdp":
            from torch.distributed.fsdp import fully_shard

            for block in model.transformer.h:
                fully_shard(block)
            fully_shard(model)
        return model

    def wrap(self, model, compile=False, find_unused=False):
        """(the module to train through, the module to evaluate with): compiled and, for DDP, wrapped (find_unused: some
        parameters get no gradient, as a reward model's output layer)."""
        core = torch.compile(model) if compile else model
        if self.mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.local_rank] if next(model.parameters()).is_cuda else None
            return DistributedDataParallel(core, device_ids=device_ids, find_unused_parameters=find_unused), core  # evaluation needs no gradient sync
        return core, core

    def grad_sync(self, train_model, sync):
        """Context for one micro-step's backward: gradients are reduced across ranks only when `sync` (the last one)."""
        if self.mode == "ddp" and not sync:
            return train_model.no_sync()
        if self.mode == "fsdp":
            train_model.set_requires_gradient_sync(sync)
        return nullcontext()

    @staticmethod
    def full_value(x):
        """A plain tensor from what clip_grad_norm_ returns (a DTensor under FSDP)."""
        return x.full_tensor() if hasattr(x, "full_tensor") else x

    # -- numbers and flags across ranks -----------------------------------------------------------------------

    def sum(self, *values):
        """Each value summed over the ranks (unchanged when alone)."""
        if not self.active:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t)
        return tuple(t.tolist())

    def any(self, flag):
        """True on every rank when it is true on any."""
        if not self.active:
            return bool(flag)
        t = torch.tensor([1 if flag else 0], device=self._comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def average_gradients(self, module):
        """Every rank's gradients of `module` replaced by their mean (a module outside DDP that must step alike everywhere)."""
        if self.active:
            for p in module.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.world_size

    def gather(self, obj):
        """Every rank's `obj` (picklable), in rank order, on every rank."""
        if not self.active:
            return [obj]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def _comm_device(self):
        return f"cuda:{self.local_rank}" if dist.get_backend() == "nccl" else "cpu"

    # -- data ----------------------------------------------------------------------------------------------------

    def micro_steps(self, grad_accum):
        """The micro-batches this rank runs in a step."""
        return grad_accum // self.world_size if self.split == "batches" else grad_accum

    def micro_batch_rows(self, batch_size):
        """The sequences of each micro-batch this rank runs."""
        return batch_size if self.split == "batches" else batch_size // self.world_size

    @property
    def shards(self):
        """Into how many parts the weights, gradients and optimizer state are split: W under FSDP, else 1."""
        return self.world_size if self.mode == "fsdp" else 1

    def train_batches(self, batches):
        return RankBatches(batches, self.rank, self.world_size, self.split == "rows") if self.active else batches

    def eval_batches(self, batches):
        """This rank's share of the validation batches (batch i goes to rank i mod W); every rank runs the same number of
        forwards (FSDP gathers weights in each), padding with a batch whose targets are all ignored (-1: scores nothing)."""
        if not self.active:
            yield from batches
            return
        mine = total = 0
        last = None
        for i, batch in enumerate(batches):
            total += 1
            if i % self.world_size == self.rank:
                mine += 1
                yield batch
            last = batch
        for _ in range(-(-total // self.world_size) - mine):
            yield last[0], last[1] * 0 - 1

    # -- state dicts -----------------------------------------------------------------------------------------------

    def full_state(self, model, optimizers):
        """(model state dict, [optimizer state dicts]) in the single-process format, complete on rank 0 (None elsewhere).

        Every rank must call it: under FSDP it gathers the shards (to the CPU)."""
        if self.mode != "fsdp":
            return (model.state_dict(), [o.state_dict() for o in optimizers]) if self.is_main else (None, None)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = get_model_state_dict(model, options=options)
        states = [get_optimizer_state_dict(model, o, options=options) for o in optimizers]  # complete on rank 0 only
        return (weights, [_indexed(state, _names(model, o)) for state, o in zip(states, optimizers)]) if self.is_main else (None, None)

    def full_weights(self, model):
        return self.full_state(model, [])[0]

    def load_state(self, model, optimizers, weights, optimizer_states):
        """Load a full (single-process format) state into the model and optimizers, sharding it under FSDP."""
        if self.mode != "fsdp":
            model.load_state_dict(weights)
            for opt, state in zip(optimizers, optimizer_states):
                opt.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, weights, options=options)
        for opt, state in zip(optimizers, optimizer_states):
            set_optimizer_state_dict(model, opt, _named(state, _names(model, opt)), options=options)


def batch_split(cfg, world_size):
    """How world_size processes share a step's batch_size x grad_accum sequences: "batches" (each rank runs grad_accum / W
    whole micro-batches) when grad_accum is a multiple of W, else "rows" (each rank runs every micro-batch's batch_size / W
    rows); a UsageError when neither divides evenly."""
    if cfg.grad_accum % world_size == 0:
        return "batches"
    if cfg.batch_size % world_size == 0 and cfg.objective not in ("ppo", "grpo"):  # a rollout's prompts are drawn per micro-batch
        return "rows"
    grow = "--grad_accum" if cfg.objective in ("ppo", "grpo") else "--grad_accum or --batch_size"
    raise UsageError(f"a global batch of --batch_size={cfg.batch_size} x --grad_accum={cfg.grad_accum} sequences cannot be shared "
                     f"evenly by {world_size} processes: make {grow} a multiple of {world_size}, "
                     f"e.g. --grad_accum={world_size * max(1, cfg.grad_accum // world_size)}")


class RankBatches:
    """Every rank draws the whole global micro-batch sequence from the shared sampler and keeps its share (every W-th
    micro-batch, or with `rows` its 1/W of every micro-batch's rows), so the batches of a step are those a single
    process would train on; the sampler's state is the same on every rank."""

    def __init__(self, batches, rank, world_size, rows=False):
        self.batches, self.rank, self.world_size, self.rows = batches, rank, world_size, rows

    def next_batch(self):
        if self.rows:
            return rank_rows(self.batches.next_batch(), self.rank, self.world_size)
        drawn = [self.batches.next_batch() for _ in range(self.world_size)]
        return drawn[self.rank]

    def state_dict(self):
        return self.batches.state_dict()

    def load_state_dict(self, state):
        self.batches.load_state_dict(state)


def rank_rows(batch, rank, world_size):
    """Rank `rank`'s contiguous 1/world_size of a batch's rows: of each array of an (x, y) batch, or of a list of indices."""
    if isinstance(batch, tuple):
        return tuple(rank_rows(part, rank, world_size) for part in batch)
    share = len(batch) // world_size
    return batch[rank * share:(rank + 1) * share]


def checkpoint_activations(model):
    """Recompute each block's activations in the backward pass instead of keeping them (torch.utils.checkpoint):
    less memory, about a third more compute. Generation with a KV cache and evaluation run the block as usual."""
    for block in model.transformer.h:
        forward = block.forward

        def checkpointed(x, rope, kv_cache, forward=forward):
            if kv_cache is not None or not torch.is_grad_enabled():
                return forward(x, rope, kv_cache)
            return checkpoint(forward, x, rope, kv_cache, use_reentrant=False)

        block.forward = functools.update_wrapper(checkpointed, forward)
    return model


def _names(model, optimizer):
    """The parameter names of an optimizer's parameters, in the order torch numbers them in its state dict."""
    names = {id(p): name for name, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def _indexed(state, names):
    """A name-keyed optimizer state dict (torch.distributed.checkpoint's) in torch's index-keyed format."""
    index = {name: i for i, name in enumerate(names)}
    return {"state": {index[k]: v for k, v in state["state"].items()},
            "param_groups": [{**g, "params": [index[k] for k in g["params"]]} for g in state["param_groups"]]}


def _named(state, names):
    return {"state": {names[k]: v for k, v in state["state"].items()},
            "param_groups": [{**g, "params": [names[k] for k in g["params"]]} for g in state["param_groups"]]}
