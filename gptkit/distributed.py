"""Training on several processes, composed around the plain model: torchrun's environment, the process group and
device mesh, tensor parallelism (gptkit/tensor_parallel.py), DDP or FSDP2 over the data-parallel ranks, activation
checkpointing, rank helpers, and full (consolidated) state dicts for checkpoints.

Layout: W processes form a (pp, dp, tp) mesh, W = pp x dp x tp. The pp x tp ranks of a data-parallel group hold one
copy of the model split between them (its stages over pp: gptkit/pipeline_parallel.py; each stage's matrices over tp)
and see the same batches; the dp groups share the global batch as below.

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

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.checkpoint import checkpoint

from gptkit.errors import UsageError
from gptkit.pipeline_parallel import Pipeline, PipelineForward, pad_to, pipeline_micro_batches
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
    pipeline stages `pp` and tensor-parallel ranks `tp` each copy of the model is split over."""

    def __init__(self, mode="none", rank=0, world_size=1, local_rank=0, split="batches", tp=1, mesh=None, pp=1, pp_schedule="1f1b"):
        self.mode, self.rank, self.world_size, self.local_rank = mode, rank, world_size, local_rank
        self.split = split  # how the data-parallel groups share a step's micro-batches: "batches" or "rows" (batch_split)
        self.tp, self.pp, self.pp_schedule, self.mesh = tp, pp, pp_schedule, mesh  # mesh: the (pp, dp, tp) DeviceMesh, its dims > 1 and dp
        self.data_ranks = world_size // (tp * pp)  # dp: copies of the model, each fed its share of the batch
        self.data_rank = mesh.get_local_rank("dp") if mesh is not None else rank
        self.pipeline = None  # this rank's stages (shard), when pp > 1
        self._tied_pairs = None  # the process group of a tied embedding's two copies (first and last stage)
        self.optimizer_names = None  # the whole model's parameter names of each optimizer, in order (what checkpoints index by)
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
        split_ways = " ".join(f"--{name}={ways}" for name, ways in (("pp", cfg.pp), ("tp", cfg.tp)) if ways > 1)
        model_ranks = cfg.tp * cfg.pp  # the processes one copy of the model is split over
        if mode == "none":
            if model_ranks > 1:
                raise UsageError(f"{split_ways} splits the model across processes: run it under torchrun "
                                 f"(torchrun --standalone --nproc_per_node={model_ranks} train.py {split_ways} ...)")
            return cls(), device
        rank, world_size, local_rank = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
        if world_size % model_ranks:
            raise UsageError(f"{split_ways} splits each copy of the model over {model_ranks} processes, which does not divide the "
                             f"{world_size} torchrun started: start a multiple of {model_ranks} (--nproc_per_node x --nnodes), or change them")
        if cfg.pp > 1 and mode == "fsdp":
            raise UsageError(f"--pp={cfg.pp} composes with --parallel=ddp (or none of it: --pp x --tp processes); FSDP within "
                             "pipeline stages is not built yet: use --parallel=ddp, or --tp with --parallel=fsdp")
        split = batch_split(cfg, world_size // model_ranks)
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
        if model_ranks > 1:
            from torch.distributed.device_mesh import init_device_mesh

            # Gathering a (dp, tp)-split tensor whole (Muon, checkpoints) is correct; torch warns that it takes two steps
            logging.getLogger("torch.distributed.tensor._redistribute").setLevel(logging.ERROR)

            # tp innermost (a model copy's tp ranks on one node), then dp, then pp: the pipeline's stages across nodes
            dims = [(name, ways) for name, ways in (("pp", cfg.pp), ("dp", world_size // model_ranks), ("tp", cfg.tp)) if ways > 1 or name == "dp"]
            mesh = init_device_mesh(device.split(":")[0], tuple(ways for _, ways in dims), mesh_dim_names=tuple(name for name, _ in dims))
        self = cls(mode, rank, world_size, local_rank, split, cfg.tp, mesh, cfg.pp, cfg.pp_schedule)
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
        """Whether this rank holds only part of the model: its stages (pipeline), or DTensor shares (FSDP, tensor parallel)."""
        return self.mode == "fsdp" or self.tp > 1 or self.pp > 1

    def describe(self):
        """The layout, for the line train.py prints: ", ddp over 2 processes" (nothing when alone)."""
        if not self.active:
            return ""
        if self.tp == self.pp == 1:
            return f", {self.mode} over {self.world_size} processes"
        splits = [f"pipeline {self.pp} ({self.pp_schedule})" if self.pp > 1 else "", f"tensor parallel {self.tp}" if self.tp > 1 else ""]
        return f", {self.world_size} processes: {' x '.join(filter(None, splits))} x {self.mode} {self.data_ranks}"

    def shard(self, model):
        """Split the model in place (the optimizer is built afterwards): its stages kept (pipeline parallel, pruning the
        rest), then tensor parallel over the tp ranks, then FSDP2 over the data-parallel ones, each transformer block and
        then the root."""
        if self.pp > 1:
            self.pipeline = Pipeline(model, self.mesh.get_local_rank("pp"), self.pp, self.pp_schedule, self.mesh.get_group("pp"),
                                     self._comm_device())
            ranks = self.mesh.mesh.reshape(self.pp, -1)  # [stage rank, (dp, tp) coordinate] -> global rank
            self._tied_pairs = dist.new_subgroups_by_enumeration([[int(ranks[0, j]), int(ranks[-1, j])] for j in range(ranks.shape[1])])[0]
        if self.tp > 1:
            parallelize(model, self.mesh["tp"], split_logits=self.pp == 1)
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
        if self.pipeline is not None:  # the schedule drives the stages; gradients are averaged after it (finish_gradients)
            if compile:
                self.pipeline.compile()
            return self.pipeline, PipelineForward(self.pipeline)
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
        return loss_context(self.tp if self.pp == 1 else 1)  # a pipeline's last stage gathers its logits

    def pipeline_step(self, batches, micro_steps, device, autocast):
        """A pipeline's forwards and backwards over this step's micro-batches, their gradients then summed between the
        tied embedding's copies and averaged over the data-parallel ranks; returns (mean loss here, input tokens)."""
        drawn = [batches.next_batch() for _ in range(micro_steps)]
        width = self.pipeline.model.config.block_size  # the stages exchange one shape: shorter (chat) batches padded, unscored
        x, y = (torch.from_numpy(np.concatenate([pad_to(batch[i], width, fill) for batch in drawn])).to(device) for i, fill in ((0, 0), (1, -1)))
        with autocast:
            loss = self.pipeline.train_step(x, y, pipeline_micro_batches(micro_steps, len(x) // micro_steps, self.pp))
        self.pipeline.sum_tied_gradients(self._tied_pairs)
        if self.data_ranks > 1:
            self.average_gradients(self.pipeline.model)
        return loss, sum(batch[0].size for batch in drawn)

    def clip_gradients(self, model, max_norm):
        """Scale the gradients down to a total norm of at most max_norm; returns the norm before, a float, the same on
        every rank."""
        if self.tp == self.pp == 1:
            return self.full_value(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)).item()
        # torch's clip_grad_norm_ refuses a mix of DTensors and plain tensors, and knows nothing of a pipeline's other stages
        grads = [p.grad for name, p in model.named_parameters() if p.grad is not None and not (self.pipeline and self.pipeline.duplicate(name))]
        squares = torch.tensor(_squared_norm(grads), dtype=torch.float64, device=self._comm_device())
        if self.pp > 1:
            dist.all_reduce(squares, group=self.mesh.get_group("pp"))
        norm = math.sqrt(squares.item())
        grads = [p.grad for p in model.parameters() if p.grad is not None]
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

        Every rank must call it: under FSDP or tensor parallelism it gathers the shards (to the CPU), under pipeline
        parallelism each stage's part."""
        if not self.sharded:
            return (model.state_dict(), [o.state_dict() for o in optimizers]) if self.is_main else (None, None)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

        # With pipeline stages, whole tensors on every rank (rank 0 has only its stages'), gathered to rank 0 below
        options = StateDictOptions(full_state_dict=True, cpu_offload=self.pp == 1)
        weights = get_model_state_dict(model, options=options)
        states = [get_optimizer_state_dict(model, o, options=options) for o in optimizers]  # name-keyed
        names = [_names(model, o) for o in optimizers]
        if self.pp > 1:
            weights, states = _to_cpu(weights), _to_cpu(states)
            speaks = self.data_rank == 0 and (self.tp == 1 or self.mesh.get_local_rank("tp") == 0)  # one rank per stage
            parts = [None] * self.world_size if self.is_main else None
            dist.gather_object((weights, states) if speaks else None, parts, dst=0)
            if self.is_main:
                parts = [part for part in parts if part is not None]
                weights = {name: tensor for part_weights, _ in parts for name, tensor in part_weights.items()}
                states = [_merged([part_states[i] for _, part_states in parts]) for i in range(len(optimizers))]
                names = self.optimizer_names
        if not self.is_main:
            return None, None
        states = [{**state, "state": {name: self._stored(values, name) for name, values in state["state"].items()}} for state in states]
        return self._stored(weights), [_indexed(state, order) for state, order in zip(states, names)]

    def _stored(self, tensors, name=None, convert=to_stored):
        """A whole state dict ({name: tensor}, or one parameter's optimizer state with `name`) in the checkpoint's order
        (convert=from_stored: in the tensor-parallel model's)."""
        return {key: convert(name or key, tensor, self.tp) for key, tensor in tensors.items()}

    def full_weights(self, model):
        return self.full_state(model, [])[0]

    def keep_optimizer_order(self, model, optimizers):
        """Note the whole model's optimizer parameter order (before pipeline stages prune it): checkpoints number the
        optimizer states of every stage's parameters in it."""
        self.optimizer_names = [_names(model, o) for o in optimizers]

    def load_state(self, model, optimizers, weights, optimizer_states):
        """Load a full (single-process format) state into the model and optimizers, split as they are (pipeline stages
        take their part)."""
        if not self.sharded:
            model.load_state_dict(weights)
            for opt, state in zip(optimizers, optimizer_states):
                opt.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True)
        if self.pp > 1:
            held = model.state_dict().keys()
            weights = {name: tensor for name, tensor in weights.items() if name in held}
        set_model_state_dict(model, self._stored(weights, convert=from_stored), options=options)
        for i, (opt, state) in enumerate(zip(optimizers, optimizer_states)):
            state = _named(state, self.optimizer_names[i] if self.pp > 1 else _names(model, opt))
            if self.pp > 1:
                state = _restricted(state, set(_names(model, opt)))
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
            "param_groups": [{**g, "params": sorted(index[k] for k in g["params"])} for g in state["param_groups"]]}


def _named(state, names):
    return {"state": {names[k]: v for k, v in state["state"].items()},
            "param_groups": [{**g, "params": [names[k] for k in g["params"]]} for g in state["param_groups"]]}


def _merged(states):
    """One name-keyed optimizer state dict from those of the pipeline stages (each holding some of every group's parameters)."""
    groups = [{**group, "params": list(dict.fromkeys(name for state in states for name in state["param_groups"][j]["params"]))}  # a tied embedding's twice
              for j, group in enumerate(states[0]["param_groups"])]
    return {"state": {name: values for state in states for name, values in state["state"].items()}, "param_groups": groups}


def _restricted(state, names):
    """A name-keyed optimizer state dict cut down to the parameters `names` (a pipeline stage's)."""
    return {"state": {k: v for k, v in state["state"].items() if k in names},
            "param_groups": [{**g, "params": [k for k in g["params"] if k in names]} for g in state["param_groups"]]}


def _to_cpu(tree):
    """Every tensor in nested dicts and lists moved to the CPU (to be pickled to rank 0)."""
    if torch.is_tensor(tree):
        return tree.cpu()
    if isinstance(tree, dict):
        return {k: _to_cpu(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_to_cpu(v) for v in tree)
    return tree
