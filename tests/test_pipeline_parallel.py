"""Pipeline parallelism (gptkit/pipeline_parallel.py) through torchrun on the CPU (gloo): every schedule, alone and with
tensor parallelism, and chat fine-tuning, train the weights one process trains on the same global batch; a pipeline's
sharded checkpoint resumes in other layouts with the saved weights and samples in one process; a stopped run resumes
exactly. (Layouts that cannot work, pipelines included: tests/test_tensor_parallel.py.)"""
import shutil
import signal

import pytest
import torch
from test_tensor_parallel import assert_same_run, memory_line_weights

from gptkit.checkpoint import LAST, load_checkpoint
from gptkit.model import GPT, GPTConfig
from gptkit.pipeline_parallel import Stage, check_pipeline, pipeline_micro_batches, prune, stage_layers
from gptkit.sharded_checkpoint import consolidated, latest_sharded, load_fields
from helpers import run_script
from test_distributed import assert_same_weights, finish, step_losses, tiny_args, torchrun
from test_resilience import tiny_run, wait_for
from train import train

# Four blocks: two stages of two, or four of one (interleaved); four micro-batches per step (1F1B needs pp of them).
MODEL = dict(n_layer=4, n_head=4, grad_accum=4, max_iters=6, eval_interval=3)


def pp_args(data_dir, out_dir, **overrides):
    return tiny_args(data_dir, out_dir, **{**MODEL, **overrides})


def one_process(out_dir, data_dir, **overrides):
    return train(tiny_run(out_dir, data_dir, **{**MODEL, "batch_size": 4, "optimizer": "adamw", "keep_last": 2, **overrides}))


@pytest.mark.parametrize("nproc, overrides", [
    (2, dict(preset="gpt2", pp_schedule="1f1b", grad_accum=1)),  # one micro-batch cut in two by rows; tied embeddings summed
    (2, dict(preset="modern", pp_schedule="interleaved_1f1b", optimizer="muon")),  # four stages of one block, two per rank
    (4, dict(preset="modern", pp_schedule="1f1b", tp=2, optimizer="muon", activation_checkpointing=True)),  # PP2 x TP2
    pytest.param(2, dict(preset="gpt2", pp_schedule="gpipe", optimizer="muon"), marks=pytest.mark.slow),
    pytest.param(2, dict(preset="modern", pp_schedule="gpipe", pos_encoding="sinusoidal"), marks=pytest.mark.slow),
    pytest.param(4, dict(preset="gpt2", pp_schedule="interleaved_1f1b", tp=2), marks=pytest.mark.slow),  # tied and split by vocabulary
    pytest.param(4, dict(preset="gpt2", pp_schedule="gpipe"), marks=pytest.mark.slow),  # PP2 x DDP2
])
def test_a_pipeline_layout_trains_the_weights_of_one_process(tmp_path, data_dir, nproc, overrides):
    one = tmp_path / "one"
    one_process(one, data_dir, **{k: v for k, v in overrides.items() if k not in ("pp_schedule", "tp")})
    piped = tmp_path / "piped"
    code, stdout, stderr = finish(torchrun(pp_args(data_dir, piped, pp=2, **overrides), nproc=nproc), timeout=180)
    assert code == 0, stderr[-3000:]
    tp = overrides.get("tp", 1)
    layout = f"{nproc} processes: pipeline 2 ({overrides['pp_schedule']}){f' x tensor parallel {tp}' if tp > 1 else ''} x ddp {nproc // 2 // tp}"
    assert layout in stdout and stdout.count("training on cpu") == 1
    assert_same_run(piped, one)  # losses within 1e-5 at every step, weights within 1e-4
    assert load_checkpoint(piped / LAST)["loader"] == load_checkpoint(one / LAST)["loader"]


@pytest.mark.parametrize("layout", [dict(pp=2), pytest.param(dict(tp=2), marks=pytest.mark.slow)])
def test_chat_fine_tuning_split_across_processes_trains_the_weights_of_one_process(tmp_path, data_dir, layout):
    """Conversations come in batches as long as their longest: a pipeline pads them to one shape, unscored."""
    base = tmp_path / "base"
    one_process(base, data_dir, preset="modern", max_iters=2, eval_interval=2)
    chat = dict(preset="modern", init_from=str(base), chat_data="demo", demo_conversations=64, block_size=256, batch_size=2,
                max_iters=4, eval_interval=4)
    one = tmp_path / "one"
    one_process(one, data_dir, **chat)
    split = tmp_path / "split"
    code, stdout, stderr = finish(torchrun(pp_args(data_dir, split, **chat, **layout)), timeout=180)
    assert code == 0, stderr[-3000:]
    assert "fine-tuning on cpu" in stdout
    assert_same_run(split, one)


def test_a_pipeline_s_sharded_checkpoint_resumes_in_other_layouts_and_samples(tmp_path, data_dir, capsys):
    one = tmp_path / "one"
    one_process(one, data_dir, preset="gpt2")
    alone = capsys.readouterr().out
    piped = tmp_path / "piped"
    code, stdout, stderr = finish(torchrun(pp_args(data_dir, piped, pp=2, preset="gpt2", keep_last=2)))
    assert code == 0, stderr[-3000:]
    assert memory_line_weights(stdout) < 0.8 * memory_line_weights(alone)  # rank 0 holds half of the blocks
    assert "(2 micro-batches of 4 x 32 tokens in flight)" in stdout  # 1F1B keeps pp of the step's 4 micro-batches
    sharded = piped / "sharded" / "step_0000003"
    assert (sharded / "checkpoint.pt").is_file() and len(list(sharded.glob("*.distcp"))) == 2  # each rank wrote its stage
    assert (piped / LAST).is_file()  # the end writes the single file too

    # the sharded checkpoint of step 3, resumed in one process and at tp=2: steps 4-6 as the straight run
    for layout, nproc, args in (("to_one", 1, {}), ("to_tp", 2, dict(tp=2))):
        resumed = tmp_path / layout
        shutil.copytree(piped / "sharded", resumed / "sharded")
        if nproc == 1:
            one_process(resumed, data_dir, preset="gpt2")
        else:
            code, stdout, stderr = finish(torchrun(pp_args(data_dir, resumed, preset="gpt2", **args)))
            assert code == 0, stderr[-3000:]
            assert f"resuming from {resumed / 'sharded' / 'step_0000003'} at step 3" in stdout
        assert_same_run(resumed, one)

    # loaded at tp=2, the weights are the saved ones exactly: with nothing left to train, the run writes them back whole
    at_3 = tmp_path / "tp_at_step_3"
    shutil.copytree(piped / "sharded", at_3 / "sharded")
    code, stdout, stderr = finish(torchrun(pp_args(data_dir, at_3, preset="gpt2", tp=2, max_iters=3)))
    assert code == 0, stderr[-3000:]
    assert_same_weights(load_checkpoint(at_3 / LAST)["model"], consolidated(sharded)["model"], atol=0)

    only_sharded = tmp_path / "only_sharded"
    shutil.copytree(piped / "sharded", only_sharded / "sharded")
    for ckpt in (piped, only_sharded):  # the single file; else the newest sharded checkpoint
        result = run_script("sample.py", f"--ckpt={ckpt}", "--max_new_tokens=20", "--prompt=the cat", "--device=cpu")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("the cat") and len(result.stdout.strip()) > len("the cat")


@pytest.mark.slow  # 15 s of CI's 15 minutes; a pipeline resumes from a sharded checkpoint above
def test_a_single_file_checkpoint_of_one_process_resumes_in_a_pipeline(tmp_path, data_dir):
    one = tmp_path / "one"
    one_process(one, data_dir, preset="gpt2", optimizer="muon")
    to_piped = tmp_path / "to_piped"
    to_piped.mkdir()
    shutil.copy(one / "ckpt_0000003.pt", to_piped / LAST)
    code, stdout, stderr = finish(torchrun(pp_args(data_dir, to_piped, pp=2, preset="gpt2", pp_schedule="gpipe", optimizer="muon")))
    assert code == 0, stderr[-3000:]
    assert f"resuming from {to_piped / LAST} at step 3" in stdout
    assert_same_run(to_piped, one)


@pytest.mark.slow  # three pipeline runs, 40 s of CI's 15 minutes; stopping a two-process run is tested in test_distributed.py
def test_a_stopped_pipeline_run_resumes_exactly(tmp_path, data_dir):
    STEPS = 60  # enough that SIGTERM, sent once the first checkpoint is there, lands mid-run
    args = dict(pp=2, max_iters=STEPS, eval_interval=5, eval_tokens=256)
    straight = tmp_path / "straight"
    code, _, stderr = finish(torchrun(pp_args(data_dir, straight, **args)), timeout=180)
    assert code == 0, stderr[-2000:]

    stopped = tmp_path / "stopped"
    proc = torchrun(pp_args(data_dir, stopped, **args))
    wait_for(lambda: latest_sharded(stopped) is not None)  # a pipeline saves sharded checkpoints during the run
    proc.send_signal(signal.SIGTERM)
    code, _, stderr = finish(proc)
    assert code != 0 and stderr.count("stopped by SIGTERM") == 1, stderr[-2000:]
    saved = load_fields(latest_sharded(stopped))["step"]
    assert 5 <= saved < STEPS

    code, stdout, stderr = finish(torchrun(pp_args(data_dir, stopped, **args)), timeout=180)
    assert code == 0, stderr[-2000:]
    assert f"resuming from {latest_sharded(stopped).with_name(f'step_{saved:07d}')} at step {saved}" in stdout
    expected, got = step_losses(straight), step_losses(stopped)
    assert [got[i] for i in range(1, STEPS + 1)] == [expected[i] for i in range(1, STEPS + 1)]  # exactly, step for step
    assert_same_weights(load_checkpoint(stopped / LAST)["model"], load_checkpoint(straight / LAST)["model"], atol=0)


def test_stages_split_the_blocks_evenly_and_schedules_get_the_micro_batches_they_need():
    assert stage_layers(5, 2) == [[0, 1, 2], [3, 4]]
    assert stage_layers(4, 4) == [[0], [1], [2], [3]]
    config = GPTConfig(n_layer=4, n_head=2, n_embd=16, vocab_size=64, block_size=8)
    assert check_pipeline(config, 2, "1f1b", 2) is None and check_pipeline(config, 2, "gpipe", 1) is None
    assert "needs at least --pp=2 micro-batches per step" in check_pipeline(config, 2, "1f1b", 1)
    # a step with fewer micro-batches than stages has each cut by rows, when they divide
    assert pipeline_micro_batches(4, 8, 2) == 4 and pipeline_micro_batches(1, 8, 2) == 2 and pipeline_micro_batches(3, 8, 4) == 6
    assert pipeline_micro_batches(1, 3, 2) == 1  # 3 rows do not split in two: check_pipeline then says what to change
    assert "makes 8 stages, more than the model's n_layer=4 blocks" in check_pipeline(config, 4, "interleaved_1f1b", 4)
    assert "not a whole number of rounds" in check_pipeline(config, 2, "interleaved_1f1b", 5)


@pytest.mark.parametrize("preset", ["gpt2", "modern"])
def test_stages_of_a_pruned_model_compute_its_forward_under_the_whole_model_s_names(preset):
    config = GPTConfig.from_preset(preset, n_layer=3, n_head=2, n_embd=16, vocab_size=64, block_size=8)
    torch.manual_seed(0)
    whole = GPT(config)
    idx = torch.randint(0, 64, (2, 8))
    expected = whole(idx)
    names = dict(whole.state_dict())
    parts = [GPT(config) for _ in range(2)]
    for part in parts:
        part.load_state_dict(names)
    first, last = prune(parts[0], [0, 1], first=True, last=False), prune(parts[1], [2], first=False, last=True)
    x = Stage(first, [0, 1], True, False)(idx)
    torch.testing.assert_close(Stage(last, [2], False, True)(x), expected)
    held = set(first.state_dict()) | set(last.state_dict())
    assert held == set(names)  # every name of the whole model, nothing else
    assert not any(name.startswith("transformer.h.2.") for name in first.state_dict())
    assert ("transformer.wte.weight" in last.state_dict()) == config.tie_embeddings  # the output layer's copy of a tied embedding
