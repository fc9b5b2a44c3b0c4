"""Train a GPT: python train.py [CONFIG ...] [--key=value ...]

With no arguments it runs config/default.py: prepares the built-in corpus (Python's standard library) if needed,
trains a small model, evaluates it, saves checkpoints under out/ and prints a sample.
"""
import os
import signal
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from gptkit import memory_estimate
from gptkit.checkpoint import BEST, EVAL_FIELDS, LAST, make_checkpoint, save_rotating, write_checkpoint
from gptkit.devices import autocast_for, pick_device
from gptkit.distributed import Distributed, checkpoint_activations, launched_world_size
from gptkit.errors import UsageError, run_cli
from gptkit.files import clean_temporaries
from gptkit.loading import load_any_checkpoint
from gptkit.metrics import MetricsLog, Throughput, format_seconds, peak_flops
from gptkit.model import GPT, GPTConfig
from gptkit.model_card import write_model_card
from gptkit.objectives import make_objective
from gptkit.optim import make_optimizers, train_step
from gptkit.options import parse_options
from gptkit.pipeline_parallel import check_pipeline, pipeline_micro_batches
from gptkit.plotting import plot_curves
from gptkit.resuming import checkpoint_to_resume, load_initial_weights, resume
from gptkit.run_state import RunState, seed_everything
from gptkit.sharded_checkpoint import save_sharded
from gptkit.signals import StopSignals, TrainingStopped
from gptkit.spike_guard import SpikeGuard
from gptkit.tensor_parallel import check_layout
from gptkit.train_config import TrainConfig, check_config, describe, fine_tune_config, model_config


def train(cfg):
    """Train alone, or as one rank of a torchrun job (see gptkit/distributed.py); the process group lives as long as the run."""
    check_config(cfg)
    dist, device = Distributed.setup(cfg, pick_device(cfg.device))
    try:
        model = run_training(cfg, dist, device)
        dist.barrier()  # leave together: a rank tearing down gloo while another still talks to it can make that one abort
        return model
    finally:
        dist.close()


def run_training(cfg, dist, device):
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    init = load_any_checkpoint(cfg.init_from) if cfg.init_from else None
    objective = make_objective(cfg, init, dist, device)
    config = fine_tune_config(cfg, init) if init else model_config(cfg, objective.tokenizer.n_vocab)
    if objective.score_head:  # a reward model: the fine-tuned model plus a score head
        config = replace(config, score_head=True)
    micro_steps, rows = dist.micro_steps(cfg.grad_accum), dist.micro_batch_rows(cfg.batch_size)
    piped = pipeline_micro_batches(micro_steps, rows, cfg.pp)  # a pipeline may cut each micro-batch by rows
    if reason := check_layout(config, cfg.tp) or check_pipeline(config, cfg.pp, cfg.pp_schedule, piped):
        raise UsageError(reason)  # on every rank, before any collective
    run = set_up(cfg, dist, device, config, init, objective)
    use_bf16, autocast = autocast_for(cfg.dtype, device)
    print(f"data: {objective.summary}")
    print(f"model: {describe(config)}, {run.n_params / 1e6:.2f}M parameters{f', from {init_path}' if (init_path := init and init['path']) else ''}")
    parallel = dist.describe()
    if dist.split == "rows":
        parallel += " (each with its share of every micro-batch)"
    print(f"{'fine-tuning' if objective.chat_tuned else 'training'} on {device}{' (bf16)' if use_bf16 else ''}: {cfg.max_iters} steps of "
          f"{objective.describe_batch(cfg)}, {cfg.optimizer}{parallel}")
    if objective.name in ("next_token", "chat_sft"):  # sequences of up to block_size tokens (preferences and rollouts differ)
        rows = rows * micro_steps // piped
        in_flight = dist.pipeline.in_flight(piped) if dist.pipeline else 1
        parts = memory_estimate.estimate(run.model, run.optimizers, config, cfg.activation_checkpointing, rows, dist.tp, in_flight)
        print(memory_estimate.describe(parts, rows, config.block_size, in_flight))
    loop(cfg, run, dist, device, autocast)
    return finish(cfg, run, dist, device)


# -- set-up -----------------------------------------------------------------------------------------------------------

@dataclass
class Run:
    """What set_up builds and the loop works on."""
    config: GPTConfig
    model: GPT  # the plain model (sharded in place under FSDP)
    train_model: torch.nn.Module  # the model as trained: wrapped by DDP, compiled
    eval_model: torch.nn.Module
    optimizers: list
    train_batches: object  # this rank's micro-batches of the objective's data
    objective: object  # see gptkit/objectives.py
    state: RunState
    resumed_from: Path | None  # the checkpoint (file, or sharded folder) this run continues, if any
    n_params: int
    flops_per_token: int
    chat_tuned: bool  # what the checkpoints say: fine-tuned for chat now, or started from a model that was
    best: dict = field(default_factory=dict)  # this process's best evaluation (step, val_loss, val_bpb), for the model card


def set_up(cfg, dist, device, config, init, objective):
    """The model and everything around it, in the one order that works:
    1. activation checkpointing wraps each block's forward, before FSDP sees the blocks;
    2. sharding (FSDP) replaces the parameters in place, so it comes before
    3. the optimizers, which hold on to the parameters they are given;
    4. resuming loads weights, optimizer states and the run state into those (sharded) objects;
    5. wrapping (DDP, torch.compile) comes last, around the final parameters.
    """
    model = GPT(config).to(device)
    if init:
        load_initial_weights(model, init)
    n_params, flops_per_token = model.num_params(), model.flops_per_token()  # counted before sharding
    if cfg.activation_checkpointing:
        checkpoint_activations(model)
    if dist.pp > 1:  # before the stages prune the model
        dist.keep_optimizer_order(model, make_optimizers(model, cfg, device))
    dist.shard(model)
    optimizers = make_optimizers(model, cfg, device)
    state = RunState(spikes=SpikeGuard(cfg.loss_spike))
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if dist.is_main and (removed := clean_temporaries(out_dir)):
        print(f"note: removed {removed} temporary file(s) an interrupted save left in {out_dir}/")
    if resumed_from := checkpoint_to_resume(cfg.resume, out_dir):
        resume(resumed_from, cfg, config, model, optimizers, objective, state, dist)
    train_model, eval_model = dist.wrap(model, cfg.compile, find_unused=objective.score_head)  # a reward model leaves the output layer unused
    return Run(config, model, train_model, eval_model, optimizers, dist.train_batches(objective.train_batches), objective, state, resumed_from,
               n_params, flops_per_token, chat_tuned=objective.chat_tuned or bool(init and init["chat_tuned"]))


# -- the loop ---------------------------------------------------------------------------------------------------------

GAP_STEPS = 20  # enough steps to average out one batch's luck, few enough that the model barely changed over them


def gap_line(train_loss, steps, val_loss, units):
    """How far validation sits above training at the end: a large gap is overfitting; validation well below
    training, a held-out text unlike the rest (easier)."""
    return f"train {train_loss:.4f} (mean of the last {steps} steps) / val {val_loss:.4f} {units}: gap {val_loss - train_loss:+.4f}"


def loop(cfg, run, dist, device, autocast):
    """Evaluate and save every eval_interval steps; step; log every log_interval steps; stop cleanly when signalled."""
    state, out_dir = run.state, Path(cfg.out_dir)
    log = MetricsLog(cfg, fresh=run.resumed_from is None, enabled=dist.is_main)
    peak = peak_flops(device)
    started = time.time()
    start_step = state.step
    throughput = Throughput(state.step)
    bad_in_a_row = 0
    recent_losses = deque(maxlen=GAP_STEPS)  # the training loss the end compares with validation
    with StopSignals() as stop:
        while True:
            # 1. evaluate, and save what improved
            if state.step % cfg.eval_interval == 0 or state.step == cfg.max_iters:
                metrics = run.objective.evaluate(run.eval_model, device, autocast, dist)
                improved = metrics["val_loss"] < state.best_val_loss
                state.best_val_loss = min(state.best_val_loss, metrics["val_loss"])
                print(f"step {state.step}: {run.objective.eval_line(metrics)}{' (best)' if improved else ''}", flush=True)
                log.write({"iter": state.step, "tokens": state.tokens_seen, "elapsed_s": time.time() - started, **metrics})
                if state.step > start_step:  # not the state just loaded (or the untrained one)
                    save_last(cfg, run, dist)
                    if improved:
                        save_best(cfg, run, dist, metrics)
                        run.best = {"step": state.step, **metrics}
                    write_card(cfg, run, dist, metrics)
                elif state.step == cfg.max_iters and run.resumed_from is not None and run.resumed_from.is_dir():
                    save_last(cfg, run, dist)  # a finished run's sharded shares: the single file that sample.py reads
                throughput.restart(state.step)  # keep evaluation time out of the throughput figure
            if state.step == cfg.max_iters:
                break

            # 2. one optimizer step
            loss, grad_norm, step_tokens, why = train_step(run.train_model, run.model, run.optimizers, run.objective, run.train_batches,
                                                           cfg, state.step, device, autocast, state.spikes, dist)
            state.step += 1
            state.tokens_seen += step_tokens
            throughput.add(step_tokens)
            if why is None:
                bad_in_a_row = 0
                recent_losses.append(loss)
            else:
                state.skipped_steps += 1
                bad_in_a_row += 1
                print(f"step {state.step}: {why}; update skipped ({state.skipped_steps} so far)", flush=True)
                if bad_in_a_row >= cfg.max_bad_steps:
                    raise UsageError(f"training diverged: {bad_in_a_row} steps in a row were skipped ({why}); "
                                     f"the last good checkpoint is {out_dir / LAST}; lower --lr or raise --warmup_iters")

            # 3. report progress
            if state.step % cfg.log_interval == 0 or state.step == cfg.max_iters:
                tokens_per_s, eta = throughput.measure(state.step, cfg.max_iters)
                record = {"iter": state.step, "tokens": state.tokens_seen, "loss": loss, "lr": run.optimizers[-1].param_groups[0]["lr"],
                          "tokens_per_s": tokens_per_s, "skipped_steps": state.skipped_steps}
                figures = run.objective.step_metrics()  # an objective's own: reward, KL, accuracy...
                record.update(figures)
                mfu = ""
                if peak:
                    record["mfu"] = run.flops_per_token * tokens_per_s / (peak * dist.world_size)  # tokens of all ranks, over all GPUs
                    mfu = f" | mfu {100 * record['mfu']:.1f}%"
                print(f"step {state.step}/{cfg.max_iters} ({100 * state.step / cfg.max_iters:.0f}%) | loss {loss:.4f} | lr {record['lr']:.2e} | "
                      f"{tokens_per_s:,.0f} tok/s{mfu}{''.join(f' | {k} {v:.4g}' for k, v in figures.items())} | eta {format_seconds(eta)}", flush=True)
                log.write(record)
                throughput.restart(state.step)

            # 4. stop when asked, every rank at the same step
            if dist.any(stop.requested):
                save_last(cfg, run, dist)
                write_card(cfg, run, dist, None)  # no evaluation at this step
                log.close()
                dist.barrier()  # no rank exits while rank 0 is still saving
                raise TrainingStopped(stop.requested or "SIGTERM", state.step)
    log.close()
    dist.barrier()  # rank 0's last checkpoint is written before any rank leaves
    if run.objective.loss_units and recent_losses:
        print(gap_line(sum(recent_losses) / len(recent_losses), len(recent_losses), metrics["val_loss"], run.objective.loss_units))
    print(f"done in {format_seconds(time.time() - started)}; best val loss {state.best_val_loss:.4f}; checkpoints in {out_dir}/")


# -- saving (rank 0 writes; under FSDP every rank helps gather the weights first) ------------------------------------------

def save_last(cfg, run, dist):
    """The checkpoint to resume from: each rank's shares (sharded) during a run whose model is split, else (and at the
    end) the single file of the whole model, gathered on rank 0."""
    if sharded_saves(cfg, dist) and run.state.step < cfg.max_iters:
        fields = checkpoint_of(cfg, run, {}, optimizers=[{} for _ in run.optimizers], **run.state.state_dict(run.objective))
        save_sharded(cfg.out_dir, cfg.keep_last, run.model, run.optimizers, fields, dist)
        return
    weights, optimizer_states = dist.full_state(run.model, run.optimizers)
    if dist.is_main:
        save_rotating(cfg.out_dir, cfg.keep_last, checkpoint_of(cfg, run, weights, optimizers=optimizer_states,
                                                                          **run.state.state_dict(run.objective)))


def sharded_saves(cfg, dist):
    return cfg.checkpoint_format == "sharded" or (cfg.checkpoint_format == "auto" and dist.sharded)


def save_best(cfg, run, dist, metrics):
    weights = dist.full_weights(run.model)
    if dist.is_main:
        scored = {k: metrics[k] for k in EVAL_FIELDS if k in metrics}  # an objective's other figures stay in metrics.jsonl
        write_checkpoint(Path(cfg.out_dir) / BEST, checkpoint_of(cfg, run, weights, step=run.state.step, **scored))


def checkpoint_of(cfg, run, weights, **fields):
    return make_checkpoint(run.config, weights, run.objective.tokenizer, chat_tuned=run.chat_tuned, train_config=asdict(cfg), **fields)


def write_card(cfg, run, dist, latest):
    if dist.is_main:
        state, tokenizer = run.state, run.objective.tokenizer
        write_model_card(cfg.out_dir, model_config=vars(run.config), train_config=asdict(cfg), n_params=run.n_params, step=state.step,
                         tokens_seen=state.tokens_seen, tokenizer_kind=tokenizer.kind, n_vocab=tokenizer.n_vocab, latest=latest,
                         best=run.best or {"val_loss": state.best_val_loss}, chat_tuned=run.chat_tuned)


# -- the end ----------------------------------------------------------------------------------------------------------

def finish(cfg, run, dist, device):
    """On rank 0: the training curves, then the objective's report (a sample, or the chat accuracy); returns the model."""
    model = run.model
    if dist.sharded:  # generation below runs on rank 0 alone: a plain model with the gathered weights
        weights = dist.full_weights(model)
        model = GPT(run.config).to(device) if dist.is_main else None
        if model is not None:
            model.load_state_dict(weights)
    if not dist.is_main:
        return None
    plot_curves(Path(cfg.out_dir))
    run.objective.report(model, cfg)
    return model


def main():
    cfg = parse_options(TrainConfig, description=__doc__, default_config="default")
    try:
        train(cfg)
    except TrainingStopped as stopped:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"stopped by {stopped.signal_name} at step {stopped.step}; the checkpoint is in {cfg.out_dir}/. "
                  f"Run the same command again to resume.", file=sys.stderr)
        leave(128 + signal.Signals[stopped.signal_name].value)
    leave(0)


def leave(code):
    """Exit with `code`. A torchrun worker skips the interpreter's teardown, where gloo's threads, still joinable after
    destroy_process_group, occasionally abort the process ("terminate called without an active exception")."""
    if launched_world_size() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def cli():
    """The gptkit-train command, and `python train.py`."""
    run_cli(main)


if __name__ == "__main__":
    cli()
