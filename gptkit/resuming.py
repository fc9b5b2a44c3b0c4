"""Where a training run starts from: another model's weights (fine-tuning), or its own last checkpoint (resuming)."""
from gptkit.checkpoint import BEST, LAST, load_checkpoint
from gptkit.distributed import Distributed
from gptkit.errors import UsageError, first_line
from gptkit.sharded_checkpoint import FIELDS_FILE, latest_sharded, load_fields, load_sharded


def load_initial_weights(model, init):
    """Start from a saved model's weights; only a new score head (reward models) may be missing from them."""
    state = dict(init["model"])
    if "transformer.wpe.weight" in state:  # a shorter context keeps the first positions
        state["transformer.wpe.weight"] = state["transformer.wpe.weight"][:model.config.block_size]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not name.startswith("score_head.") for name in missing):  # only a new score head may start fresh
        model.load_state_dict(state)  # raises, naming the keys


def resume_point(out_dir):
    """The newest checkpoint to resume from: last.pt, or the latest sharded one when that was written after it."""
    last, sharded = out_dir / LAST, latest_sharded(out_dir)
    if sharded is None:
        return last if last.is_file() else None
    return last if last.is_file() and last.stat().st_mtime > (sharded / FIELDS_FILE).stat().st_mtime else sharded


def checkpoint_to_resume(resume_option, out_dir):
    """What --resume=auto|true|false picks in out_dir: the newest checkpoint, or None to start over (refused when that would
    overwrite a finished run's checkpoints)."""
    newest = resume_point(out_dir)
    if resume_option == "true" or (resume_option == "auto" and newest is not None):
        return newest or out_dir / LAST  # --resume=true with nothing saved fails in resume(), naming the file
    if resume_option == "auto" and (saved := sorted(p.name for p in (out_dir / BEST, *out_dir.glob("ckpt_*.pt")) if p.is_file())):
        raise UsageError(f"{out_dir}/ holds {', '.join(saved)} but no {LAST} to resume from, and starting over would replace them; "
                         f"start over anyway with --resume=false, or use another --out_dir")
    return None


def resume(path, cfg, config, model, optimizers, objective, state, dist=Distributed()):
    """Load a checkpoint (file, or sharded folder) into this run, refusing in one line one that does not fit it."""
    ckpt = load_fields(path) if path.is_dir() else load_checkpoint(path)
    ways_out = "resume with the same settings, start over with --resume=false, or use another --out_dir"
    if ckpt["model_config"] != vars(config):
        changed = sorted(k for k in vars(config) if ckpt["model_config"].get(k) != vars(config)[k])
        raise UsageError(f"{path} was trained with a different model ({', '.join(changed)} differ); {ways_out}")
    if ckpt["tokenizer"] != objective.tokenizer.to_json():
        raise UsageError(f"{path} was trained with a different tokenizer than the data's; {ways_out}")
    saved_optimizer = (ckpt["train_config"] or {}).get("optimizer", cfg.optimizer)
    if saved_optimizer != cfg.optimizer or len(ckpt["optimizers"]) != len(optimizers):
        raise UsageError(f"{path} was trained with --optimizer={saved_optimizer}, this run asks for --optimizer={cfg.optimizer}; {ways_out}")
    if ckpt["step"] > cfg.max_iters:
        raise UsageError(f"{path} is at step {ckpt['step']}, past --max_iters={cfg.max_iters}: nothing to train; raise --max_iters to "
                         "train further, or start over with --resume=false")
    try:
        if path.is_dir():  # each rank reads its shares
            load_sharded(path, model, optimizers, dist)
        else:
            dist.load_state(model, optimizers, ckpt["model"], ckpt["optimizers"])  # every rank reads the file: a filesystem they share
    except (ValueError, KeyError, RuntimeError) as e:  # optimizer states that do not fit these parameter groups
        raise UsageError(f"{path}: its optimizer state does not fit this run ({first_line(e)}); {ways_out}") from None
    state.load_state_dict(ckpt, objective)
    print(f"resuming from {path} at step {ckpt['step']} (--resume=false starts over)")
