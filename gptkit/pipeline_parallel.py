"""Pipeline parallelism, a transform of a built GPT: its blocks split into consecutive stages across the `pp` ranks of
a device mesh, the embedding with the first stage and the final norm and output layer with the last; the micro-batches
of a step (gradient accumulation) flow through them on torch.distributed.pipelining's schedules:

- gpipe: every micro-batch forward, then every one backward (keeps all micro-batches' activations);
- 1f1b: one forward, one backward in the steady state (keeps at most pp micro-batches' activations);
- interleaved_1f1b: 1F1B over two stages per rank (stage s on rank s mod pp): a smaller bubble, more messages.

Each rank builds the whole model (so initialisation matches one process), then keeps only its stages' modules
(`prune`): parameter names stay those of the whole model ("transformer.h.5.attn.c_attn.weight"), so optimizers,
checkpoints and tensor parallelism treat the rank's part as they treat a whole model. With tied embeddings, the last
stage keeps its own copy of the embedding matrix as the output layer; their gradients are summed between the first
and the last stage's ranks every step (gptkit/distributed.py), so the two copies stay equal.
"""
import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from gptkit.model import token_loss

SCHEDULES = ("gpipe", "1f1b", "interleaved_1f1b")


class Layers(nn.ModuleDict):
    """A rank's blocks keyed by their layer index (so names stay the whole model's), iterated as the blocks themselves,
    like the nn.ModuleList it replaces."""

    def __iter__(self):
        return iter(self.values())


def stages_per_rank(schedule):
    return 2 if schedule == "interleaved_1f1b" else 1


def stage_layers(n_layer, n_stages):
    """The layer indices of each stage: consecutive, as even as can be, the earlier stages one more when uneven."""
    base, extra = divmod(n_layer, n_stages)
    starts = [s * base + min(s, extra) for s in range(n_stages + 1)]
    return [list(range(starts[s], starts[s + 1])) for s in range(n_stages)]


def pipeline_micro_batches(micro_steps, rows, pp):
    """How many micro-batches a pipeline sends through its stages per step: the step's own (gradient accumulation, each
    of `rows` sequences), each cut by rows into as many pieces as make at least pp when the rows divide: with fewer than
    pp in flight some stages idle, and 1F1B needs pp. Equal pieces keep the step's mean loss one process's when every
    token is scored (pretraining)."""
    if micro_steps >= pp:
        return micro_steps
    pieces = -(-pp // micro_steps)
    return micro_steps * pieces if rows % pieces == 0 else micro_steps


def pad_to(rows, width, fill):
    """A (B, T) array of token ids or targets padded on the right to `width` positions with `fill` (a target of -1 is
    not scored, and causal attention keeps the padding out of the real positions)."""
    if rows.shape[1] == width:  # pretraining's windows: already whole, no copy
        return rows
    return np.pad(rows, ((0, 0), (0, width - rows.shape[1])), constant_values=fill)


def check_pipeline(config, pp, schedule, micro_batches):
    """A one-line reason this model and step cannot be pipelined pp ways with `schedule`, or None; micro_batches is
    the number each pipeline runs per step (pipeline_micro_batches)."""
    if pp == 1:
        return None
    stages = pp * stages_per_rank(schedule)
    if config.n_layer < stages:
        return (f"--pp={pp} with --pp_schedule={schedule} makes {stages} stages, more than the model's n_layer={config.n_layer} blocks: "
                f"lower --pp{', use --pp_schedule=1f1b' if stages > pp else ''} or raise --n_layer")
    if schedule == "1f1b" and micro_batches < pp:
        return (f"--pp_schedule=1f1b needs at least --pp={pp} micro-batches per step in each pipeline, and this step has {micro_batches}: "
                f"raise --grad_accum (to {pp} x the data-parallel processes), make --batch_size split {pp} ways on each, "
                f"or use --pp_schedule=gpipe")
    rounds = max(1, micro_batches // pp)
    if schedule == "interleaved_1f1b" and micro_batches % rounds:
        return (f"--pp_schedule=interleaved_1f1b runs micro-batches in rounds of --pp={pp}, and this step's {micro_batches} per pipeline "
                f"are not a whole number of rounds: make --grad_accum a multiple of {pp} x the data-parallel processes")
    return None


def prune(model, layers, first, last):
    """Keep in `model` (in place) only the blocks numbered `layers`, the embeddings when it holds the first stage, and the
    final norm and output layer when it holds the last (with tied embeddings, the embedding module too, whose matrix
    the output layer shares); returns it. Its forward is then the stages' (Stage), not GPT.forward."""
    blocks = model.transformer.h
    model.transformer.h = Layers({str(i): blocks[i] for i in layers})
    if not first:
        del model.transformer["drop"]
        if "wpe" in model.transformer:
            del model.transformer["wpe"]
        if not (last and model.config.tie_embeddings):
            del model.transformer["wte"]
    if not last:
        del model.transformer["ln_f"]
        del model.lm_head
    return model


class Stage(nn.Module):
    """One stage's forward over a pruned model's modules: token ids (first stage) or the residual stream in, the
    residual stream or logits (last stage) out. Registers only its own modules, so that pipelining's gradient
    scaling touches each parameter once when a rank holds two stages."""

    def __init__(self, model, layers, first, last):
        super().__init__()
        self.first, self.last = first, last
        self.blocks = nn.ModuleList(model.transformer.h[str(i)] for i in layers)
        self.embedding = nn.ModuleList([model.transformer[name] for name in ("wte", "wpe", "drop") if name in model.transformer]) if first else None
        self.head = nn.ModuleList([model.transformer.ln_f, model.lm_head]) if last else None
        self._model = [model]  # for its embed/rotary methods and position table, not registered

    def forward(self, x):
        model = self._model[0]
        positions = torch.arange(x.shape[1], device=x.device)
        if self.first:
            x = model.embed(x, positions)
        rope = model.rotary(positions, x.dtype)
        for block in self.blocks:
            x = block(x, rope, None)
        if self.last:
            x = model.lm_head(model.transformer.ln_f(x))
        return x


def build_stages(model, pp_rank, pp, schedule):
    """This rank's stages of a whole model, pruning it to them: [(stage index, Stage)], and the number of stages."""
    n_stages = pp * stages_per_rank(schedule)
    layers = stage_layers(model.config.n_layer, n_stages)
    mine = list(range(pp_rank, n_stages, pp))  # interleaved: stage s on rank s mod pp
    prune(model, [i for s in mine for i in layers[s]], first=0 in mine, last=n_stages - 1 in mine)
    return [(s, Stage(model, layers[s], s == 0, s == n_stages - 1)) for s in mine], n_stages


def make_schedule(stages, n_stages, schedule, micro_batches, device, group):
    """torch's schedule over this rank's stages: its step() runs one optimizer step's forwards and backwards, the
    gradients of each micro-batch's mean loss accumulated and divided by their number (as gradient accumulation does)."""
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B

    piped = [PipelineStage(stage, index, n_stages, torch.device(device), group=group) for index, stage in stages]
    kind = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B, "interleaved_1f1b": ScheduleInterleaved1F1B}[schedule]
    if schedule == "interleaved_1f1b":
        return kind(piped, micro_batches, loss_fn=token_loss, scale_grads=True)
    return kind(piped[0], micro_batches, loss_fn=token_loss, scale_grads=True)


class Pipeline:
    """A rank's share of a pipeline: its stages and the schedule that trains them, and a plain forward through all the
    stages for evaluation. Every rank of the pipeline (its pp group) takes part in each call."""

    def __init__(self, model, pp_rank, pp, schedule, group, device):
        self.pp, self.pp_rank, self.schedule_name, self.group, self.device = pp, pp_rank, schedule, group, device
        self.stages, self.n_stages = build_stages(model, pp_rank, pp, schedule)
        self.model = model  # pruned
        self.first = any(stage.first for _, stage in self.stages)
        self.last = any(stage.last for _, stage in self.stages)
        self.schedule = None

    def compile(self):
        """torch.compile each stage's forward (the schedule calls the stages as modules)."""
        self.stages = [(index, torch.compile(stage)) for index, stage in self.stages]

    def train_step(self, x, y, micro_batches):
        """Forwards and backwards of one step's micro-batches (stacked in x and y, rows in micro-batch order); returns the
        mean of their losses, a float, the same on every rank of the pipeline."""
        if self.schedule is None:  # built at the first step, when the number of micro-batches is known
            self.schedule = make_schedule(self.stages, self.n_stages, self.schedule_name, micro_batches, self.device, self.group)
        losses = []
        self.schedule.step(x, target=y, losses=losses)
        mean = torch.stack(losses).detach().float().mean() if self.last else torch.zeros((), device=x.device)
        dist.all_reduce(mean, group=self.group)  # from the last stage to every rank of the pipeline
        return mean.item()

    def in_flight(self, micro_batches):
        """About the micro-batches whose activations (of all its blocks) this rank keeps at once: all of them with gpipe,
        up to pp with 1F1B on the first stage (interleaved 1F1B keeps about as much: more micro-batches, each over half
        the rank's blocks)."""
        return micro_batches if self.schedule_name == "gpipe" else min(micro_batches, self.pp)

    def duplicate(self, name):
        """Whether parameter `name` here is the last stage's copy of the tied embedding (its gradient equals the first's)."""
        return self.model.config.tie_embeddings and self.last and not self.first and name == "transformer.wte.weight"

    def sum_tied_gradients(self, pairs):
        """Add up the gradients of the tied embedding's two copies (first and last stage) over `pairs` (their ranks)."""
        if not self.model.config.tie_embeddings or not (self.first or self.last):
            return
        weight = self.model.transformer.wte.weight
        if hasattr(weight, "placements") and weight.grad.placements != weight.placements:  # an embedding alone gets a whole gradient
            weight.grad = weight.grad.redistribute(weight.device_mesh, weight.placements)
        grad = weight.grad.to_local() if hasattr(weight.grad, "to_local") else weight.grad
        dist.all_reduce(grad, group=pairs)


class PipelineForward(nn.Module):
    """The whole model's forward run stage by stage through the pipeline's ranks, without the schedule (evaluation):
    model(idx, targets, reduction) on every rank of a pipeline returns the losses there, each stage's output passed
    on point to point, the losses broadcast from the last stage."""

    def __init__(self, pipeline):
        super().__init__()
        self.pipeline = pipeline
        self.stages = nn.ModuleList(stage for _, stage in pipeline.stages)  # for train() and eval()

    def forward(self, idx, targets, reduction="mean"):
        p = self.pipeline
        owner = {index: stage for index, stage in p.stages}
        B, T = idx.shape
        x = idx
        for s in range(p.n_stages):
            here, sender = s in owner, (s - 1) % p.pp
            if s > 0 and here:  # the previous stage's output, from its rank
                x = torch.empty(B, T, p.model.config.n_embd, device=idx.device)
                dist.recv(x, group=p.group, group_src=sender)
            if here:
                x = owner[s](x)
                if s < p.n_stages - 1:
                    dist.send(x.float().contiguous(), group=p.group, group_dst=(s + 1) % p.pp)
        last_rank = (p.n_stages - 1) % p.pp
        losses = token_loss(x, targets, reduction).float() if p.pp_rank == last_rank else None
        if losses is None:
            losses = torch.empty(B * T if reduction == "none" else (), device=idx.device)
        dist.broadcast(losses, group=p.group, group_src=last_rank)
        return losses
