"""Training on several processes, composed around the plain model: torchrun's environment, the process group and
device mesh, tensor parallelism (gptkit/tensor_parallel.py), DDP or FSDP2 over the data-parallel ranks, activation
checkpointing, rank helpers, and full (consolidated) state dicts for checkpoints.

Layout: W processes form a (dp, tp) mesh, W = dp x tp. The tp ranks of a data-parallel group hold one copy of the model
split between them and see the same batches; the dp groups share the global batch as below.

train.py calls this in a few places; model.py knows nothing about distribution. Run alone (`python train.py`), every
helper here is a no-op: no process group is created and nothing changes.

Data: every rank draws the same global batch from one shared RNG and keeps its data-parallel group's share, so the dp
groups see exactly the batches one process would with the same global batch (batch_size x grad_accum sequences per
step): whole micro-batches when grad_accum is a multiple of dp, else the rows of every micro-batch (`batch_split`). So the defaults
(grad_accum=1) run under torchrun as they are, as nanochat and torchtitan derive each device's share from a global batch.
"""
import functools
import logging
import math
import os
import sys
import time
from contextlib import contextmanager, nullcontext
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.utils.checkpoint import checkpoint

from gptkit.errors import UsageError
from gptkit.tensor_parallel import from_stored, loss_context, parallelize, to_stored

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
    """This process among the job's: rank, world size, the data parallelism in use ("none", "ddp" or "fsdp"), and the
    tensor-parallel ranks `tp` each copy of the model is split over."""

    def __init__(self, mode="none", rank=0, world_size=1, local_rank=0, split="batches", tp=1, mesh=None):
        self.mode, self.rank, self.world_size, self.local_rank = mode, rank, world_size, local_rank
        self.split = split  # how the data-parallel groups share a step's micro-batches: "batches" or "rows" (batch_split)
        self.tp, self.mesh = tp, mesh  # mesh: the (dp, tp) DeviceMesh when tp > 1
        self.data_ranks = world_size // tp  # dp: copies of the model, each fed its share of the batch
        self.data_rank = mesh.get_local_rank("dp") if mesh is not None else rank
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
            if cfg.tp > 1:
                raise UsageError(f"--tp={cfg.tp} splits the model across processes: run it under torchrun "
                                 f"(torchrun --standalone --nproc_per_node={cfg.tp} train.py --tp={cfg.tp} ...)")
            return cls(), device
        rank, world_size, local_rank = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
        if world_size % cfg.tp:
            raise UsageError(f"--tp={cfg.tp} does not divide the {world_size} processes torchrun started: start a multiple of "
                             f"{cfg.tp} (--nproc_per_node x --nnodes), or change --tp")
        split = batch_split(cfg, world_size // cfg.tp)
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
        mesh = None
        if cfg.tp > 1:
            from torch.distributed.device_mesh import init_device_mesh

            # Gathering a (dp, tp)-split tensor whole (Muon, checkpoints) is correct; torch warns that it takes two steps
            logging.getLogger("torch.distributed.tensor._redistribute").setLevel(logging.ERROR)

            mesh = init_device_mesh(device.split(":")[0], (world_size // cfg.tp, cfg.tp), mesh_dim_names=("dp", "tp"))
        self = cls(mode, rank, world_size, local_rank, split, cfg.tp, mesh)
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

    @property
    def sharded(self):
        """Whether the model's parameters are DTensors split across ranks (FSDP, tensor parallel, or both)."""
        return self.mode == "fsdp" or self.tp > 1

    def shard(self, model):
        """Split the model in place (the optimizer is built afterwards): tensor parallel over the tp ranks first, then
        FSDP2 over the data-parallel ones, each transformer block and then the root."""
        if self.tp > 1:
            parallelize(model, self.mesh["tp"])
        if self.mode == "fsdp":
            from torch.distributed.fsdp import fully_shard

            data_mesh = self.mesh["dp"] if self.mesh is not None else None
            for block in model.transformer.h:
                fully_shard(block, mesh=data_mesh)
            fully_shard(model, mesh=data_mesh)
        return model

    def wrap(self, model, compile=False, find_unused=False):
        """(the module to train through, the module to evaluate with): compiled and, for DDP, wrapped (find_unused: some
        parameters get no gradient, as a reward model's output layer)."""
        core = torch.compile(model) if compile else model
        if self.mode == "ddp" and self.tp == 1:  # with tp, micro_step averages the gradients over the dp ranks itself
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.local_rank] if next(model.parameters()).is_cuda else None
            return DistributedDataParallel(core, device_ids=device_ids, find_unused_parameters=find_unused), core  # evaluation needs no gradient sync
        return core, core

    @contextmanager
    def micro_step(self, train_model, sync):
        """Context for one micro-step's forward and backward: gradients are reduced across the data-parallel ranks only
        when `sync` (the last one); under tensor parallelism the loss is computed on vocabulary-split logits."""
        if self.mode == "fsdp":
            train_model.set_requires_gradient_sync(sync)
        quiet = train_model.no_sync() if self.mode == "ddp" and self.tp == 1 and not sync else nullcontext()
        with quiet, loss_context(self.tp):
            yield
        if self.mode == "ddp" and self.tp > 1 and sync and self.data_ranks > 1:
            self.average_gradients(train_model)

    def evaluation(self):
        """Context for scoring: the loss of vocabulary-split logits under tensor parallelism."""
        return loss_context(self.tp)

    def clip_gradients(self, model, max_norm):
        """Scale the gradients down to a total norm of at most max_norm; returns the norm before, a float, the same on
        every rank."""
        if self.tp == 1:
            return self.full_value(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)).item()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norm = math.sqrt(_squared_norm(grads))  # torch's clip_grad_norm_ refuses a mix of DTensors and plain tensors
        if norm > max_norm:
            for grad in grads:
                grad.mul_(max_norm / (norm + 1e-6))
        return norm

    @staticmethod
    def full_value(x):
        """A plain tensor from a DTensor (what clip_grad_norm_ returns under FSDP, a loss under tensor parallelism)."""
        return x.full_tensor() if hasattr(x, "full_tensor") else x

    # -- numbers and flags across ranks -----------------------------------------------------------------------

    def sum(self, *values):
        """Each value summed over the data-parallel ranks (unchanged when alone): the tp ranks of a group hold the same."""
        if not self.active:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t, group=self._data_group())
        return tuple(t.tolist())

    def any(self, flag):
        """True on every rank when it is true on any."""
        if not self.active:
            return bool(flag)
        t = torch.tensor([1 if flag else 0], device=self._comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def average_gradients(self, module):
        """Every data-parallel rank's gradients of `module` replaced by their mean (a module outside DDP that must step
        alike everywhere, or a tensor-parallel model's shares: each averaged with the same share on the other dp ranks)."""
        if self.active:
            for p in module.parameters():
                if p.grad is not None:
                    grad = p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad
                    dist.all_reduce(grad, group=self._data_group())
                    grad /= self.data_ranks

    def _data_group(self):
        """The process group of this rank's data-parallel peers (None: all ranks, when there is no tensor parallelism)."""
        return self.mesh.get_group("dp") if self.mesh is not None else None

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
        return grad_accum // self.data_ranks if self.split == "batches" else grad_accum

    def micro_batch_rows(self, batch_size):
        """The sequences of each micro-batch this rank runs."""
        return batch_size if self.split == "batches" else batch_size // self.data_ranks

    def train_batches(self, batches):
        return RankBatches(batches, self.data_rank, self.data_ranks, self.split == "rows") if self.active else batches

    def eval_batches(self, batches):
        """This rank's share of the validation batches (batch i goes to data-parallel rank i mod dp); every rank runs the same number of
        forwards (FSDP gathers weights in each), padding with a batch whose targets are all ignored (-1: scores nothing)."""
        if not self.active:
            yield from batches
            return
        mine = total = 0
        last = None
        for i, batch in enumerate(batches):
            total += 1
            if i % self.data_ranks == self.data_rank:
                mine += 1
                yield batch
            last = batch
        for _ in range(-(-total // self.data_ranks) - mine):
            yield last[0], last[1] * 0 - 1

    # -- state dicts -----------------------------------------------------------------------------------------------

    def full_state(self, model, optimizers):
        """(model state dict, [optimizer state dicts]) in the single-process format, complete on rank 0 (None elsewhere).

        Every rank must call it: under FSDP or tensor parallelism it gathers the shards (to the CPU)."""
        if not self.sharded:
            return (model.state_dict(), [o.state_dict() for o in optimizers]) if self.is_main else (None, None)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = get_model_state_dict(model, options=options)
        states = [get_optimizer_state_dict(model, o, options=options) for o in optimizers]  # complete on rank 0 only
        if not self.is_main:
            return None, None
        states = [{**state, "state": {name: self._stored(values, name) for name, values in state["state"].items()}} for state in states]
        return self._stored(weights), [_indexed(state, _names(model, o)) for state, o in zip(states, optimizers)]

    def _stored(self, tensors, name=None, convert=to_stored):
        """A whole state dict ({name: tensor}, or one parameter's optimizer state with `name`) in the checkpoint's order
        (convert=from_stored: in the tensor-parallel model's)."""
        return {key: convert(name or key, tensor, self.tp) for key, tensor in tensors.items()}

    def full_weights(self, model):
        return self.full_state(model, [])[0]

    def load_state(self, model, optimizers, weights, optimizer_states):
        """Load a full (single-process format) state into the model and optimizers, split as they are."""
        if not self.sharded:
            model.load_state_dict(weights)
            for opt, state in zip(optimizers, optimizer_states):
                opt.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, self._stored(weights, convert=from_stored), options=options)
        for opt, state in zip(optimizers, optimizer_states):
            state = _named(state, _names(model, opt))
            state["state"] = {name: self._stored(values, name, from_stored) for name, values in state["state"].items()}
            set_optimizer_state_dict(model, opt, state, options=options)


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


def _squared_norm(grads):
    """The sum of squares of every entry of the whole gradients, from this rank's shares: a DTensor's local squares are
    summed over the mesh dimensions it is split along (not those it is replicated on); a plain tensor is the same
    on every rank."""
    sums = {}  # (mesh, split dimensions) -> this rank's sum of squares of such gradients
    for grad in grads:
        if hasattr(grad, "to_local"):
            key = (grad.device_mesh, tuple(d for d, placement in enumerate(grad.placements) if not placement.is_replicate()))  # FSDP's _StridedShard too
            local = grad.to_local()
        else:
            key, local = None, grad
        sums[key] = sums.get(key, 0.0) + local.float().square().sum()
    total = 0.0
    for key, squares in sums.items():  # the same keys in the same order on every rank: parameters come in one order
        if key is not None:
            mesh, dims = key
            for d in dims:
                dist.all_reduce(squares, group=mesh.get_group(d))
        total += squares.item()
    return total


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
