"""Alignment from feedback: reward models, DPO, PPO and GRPO in train.py's one loop, and align.py's feedback commands.

Tiny models on the bytes tokenizer; a "fine-tuned" checkpoint is a few steps of chat fine-tuning on the alignment
demo's conversations, enough to hold the template, not to be good.
"""
import json
import math
from pathlib import Path

import pytest
import torch

from gptkit import optim
from gptkit.alignment_demo import compare, judge, make_conversations, make_prompts
from gptkit.checkpoint import LAST, load_checkpoint, write_checkpoint
from gptkit.errors import UsageError
from gptkit.logprobs import reply_batch, sequence_logprobs
from gptkit.rl_objectives import gae, group_advantages
from gptkit.signals import TrainingStopped
from helpers import run_script, tiny_model
from test_distributed import finish, torchrun
from test_resilience import stop_at, tiny_run
from train import train


def constant_reward(reply, row):
    """A reward function (--reward_fn=test_alignment:constant_reward) that cannot tell replies apart."""
    return 1.0


def length_reward(reply, row):
    """A judge that prefers longer replies: it orders almost any two replies of an untrained model."""
    return float(len(reply))


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def sft(tmp_path_factory, data_dir):
    """A tiny chat-tuned policy: pretrained a few steps on the bytes corpus, then fine-tuned on the demo's conversations."""
    root = tmp_path_factory.mktemp("align")
    train(tiny_run(root / "base", data_dir, preset="modern", max_iters=6, eval_interval=6, block_size=32))
    chat = write_jsonl(root / "sft.jsonl", make_conversations(200, seed=0))
    train(tiny_run(root / "sft", "", init_from=str(root / "base"), chat_data=str(chat), block_size=160, batch_size=8,
                   max_iters=6, eval_interval=6, val_fraction=0.1))
    return root / "sft"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Demo prompts, and pairs that always prefer the plain answer to the chatty one."""
    root = tmp_path_factory.mktemp("align_files")
    rows = make_prompts(80, seed=1)
    pairs = [{"prompt": r["prompt"], "chosen": r["answer"], "rejected": f"Sure! {r['answer']}"} for r in rows]
    return {"prompts": write_jsonl(root / "prompts.jsonl", rows), "pairs": write_jsonl(root / "pairs.jsonl", pairs)}


def run_of(out_dir, sft, objective, files, **overrides):
    base = dict(objective=objective, init_from=str(sft), block_size=160, batch_size=8, max_iters=6, eval_interval=3, val_fraction=0.1,
                optimizer="adamw", lr=1e-3, warmup_iters=1, max_reply_tokens=16, eval_prompts=4, group_size=4)
    base.update({"pairs": str(files["pairs"])} if objective in ("reward", "dpo") else {"prompts": str(files["prompts"])})
    if objective == "grpo":
        base["reward_fn"] = "gptkit.alignment_demo:judge"
    return tiny_run(out_dir, "", **{**base, **overrides})


def records(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory, sft, files):
    out = tmp_path_factory.mktemp("rm") / "rm"
    train(run_of(out, sft, "reward", files, max_iters=12, eval_interval=12, lr=3e-3))
    return out


# -- the pieces ---------------------------------------------------------------------------------------------------------

def test_sequence_logprobs_do_not_change_with_the_padding_around_a_row():
    model = tiny_model("modern", vocab_size=64, block_size=32).eval()
    prompt, reply = [1, 5, 9, 2], [7, 7, 3]
    alone = sequence_logprobs(model, reply_batch([prompt], [reply], pad_id=0))
    with_longer = sequence_logprobs(model, reply_batch([prompt, list(range(1, 20))], [reply, [4] * 9], pad_id=0))  # padded by 16
    other_pad = sequence_logprobs(model, reply_batch([prompt, list(range(1, 20))], [reply, [4] * 9], pad_id=63))
    assert torch.allclose(alone[0], with_longer[0], atol=1e-5) and torch.allclose(alone[0], other_pad[0], atol=1e-5)
    by_hand = torch.log_softmax(model(torch.tensor([prompt + reply[:-1]])), -1)[0, 3:].gather(-1, torch.tensor(reply)[:, None]).sum()
    assert torch.allclose(alone[0], by_hand, atol=1e-5)  # the reply's tokens only, each from the position before it


def test_only_reply_tokens_are_scored():
    batch = reply_batch([[1, 2, 3], [4]], [[5, 6], [7, 8, 9]], pad_id=0)
    assert batch.reply_mask.sum(1).tolist() == [2, 3]
    assert batch.targets[0].tolist() == [-1, -1, 5, 6] and batch.targets[1].tolist() == [7, 8, 9, -1]


def test_gae_with_no_discount_and_lambda_1_is_the_reward_to_go_minus_the_value():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.2, 0.1, 0.0]])
    mask = torch.tensor([[True, True, True, False]])
    assert torch.allclose(gae(rewards, values, mask, lam=1.0), torch.tensor([[0.5, 0.8, 0.9, 0.0]]))


def test_group_advantages_are_zero_when_a_group_scores_alike():
    advantages = group_advantages(torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0]), 4)
    assert advantages[:4].abs().max() == 0
    assert advantages[4:].sum().abs() < 1e-6 and (advantages[[5, 7]] > 0).all()


def test_the_demo_judge_prefers_the_plain_answer_and_knows_a_wrong_one():
    row = {"answer": "Your name is Ivn."}
    assert judge("Your name is Ivn.", row) == 1.0 and judge("Sure! Your name is Ivn.", row) == 0.5
    assert judge("Your name is Ivan.", row) == 0.0 and judge("Sure! Your name is Ivna.", row) == 0.0
    assert compare("Your name is Ivn.", "Sure! Your name is Ivn.", row) == 1 and compare("x", "y", row) == 0


def test_held_out_demo_prompts_never_occur_in_training_data():
    heldout = {r["prompt"][-1]["content"] for r in make_prompts(300, seed=3, split="heldout")}
    trained = {r["prompt"][-1]["content"] for r in make_prompts(2000, seed=2)}
    trained |= {c["messages"][-2]["content"] for c in make_conversations(2000, seed=0)}
    assert heldout and not heldout & trained


# -- the objectives in the loop -----------------------------------------------------------------------------------------

def test_dpo_starts_at_ln2_and_learns_the_preference(tmp_path, sft, files):
    out = tmp_path / "dpo"
    train(run_of(out, sft, "dpo", files, max_iters=12, eval_interval=12, lr=3e-3))
    evals = [r for r in records(out) if "val_loss" in r]
    assert evals[0]["val_loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy = reference
    assert [r for r in records(out) if "loss" in r][0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert evals[-1]["val_loss"] < 0.6 and evals[-1]["val_accuracy"] > 0.8
    assert load_checkpoint(out / LAST)["chat_tuned"] is True
    sampled = run_script("sample.py", f"--ckpt={out}", "--max_new_tokens=5", "--device=cpu")
    chatted = run_script("chat.py", f"--ckpt={out}", "--max_new_tokens=5", "--device=cpu", "--history=", input="Repeat after me: moon\n")
    assert sampled.returncode == 0 and chatted.returncode == 0, sampled.stderr + chatted.stderr


def test_ipo_loss_starts_at_its_target_squared(tmp_path, sft, files):
    out = tmp_path / "ipo"
    train(run_of(out, sft, "dpo", files, max_iters=1, eval_interval=1, dpo_loss="ipo", beta=0.5))
    assert records(out)[0]["val_loss"] == pytest.approx(1.0, abs=1e-6)  # (0 - 1/(2 beta))^2


def test_a_reward_model_learns_the_preference_and_says_what_it_is(tmp_path, reward_model, files, capsys):
    evals = [r for r in records(reward_model) if "val_loss" in r]
    assert evals[-1]["val_accuracy"] == 1.0 and evals[-1]["val_margin"] > evals[0]["val_margin"]
    assert load_checkpoint(reward_model / LAST)["model_config"]["score_head"] is True
    card = (reward_model / "MODEL_CARD.md").read_text()
    assert "pairwise accuracy on held-out pairs" in card and "align.py score --reward_model=" in card and "python sample.py" not in card
    scored = run_script("align.py", "score", f"--reward_model={reward_model}", f"--pairs={files['pairs']}", "--device=cpu")
    assert scored.returncode == 0 and "pairwise accuracy 100.0% on 80 pairs" in scored.stdout, scored.stderr
    sampled = run_script("sample.py", f"--ckpt={reward_model}", "--device=cpu")
    assert sampled.returncode == 2 and "is a reward model" in sampled.stderr and "Traceback" not in sampled.stderr


def test_ppo_first_epoch_has_ratio_1_and_no_kl(tmp_path, sft, reward_model, files):
    out = tmp_path / "ppo"
    train(run_of(out, sft, "ppo", files, reward_model=str(reward_model), max_iters=4, eval_interval=4, log_interval=1, ppo_epochs=2))
    steps = [r for r in records(out) if "loss" in r]
    assert steps[0]["kl"] == 0.0 and steps[0]["clipfrac"] == 0.0  # the policy that sampled is the reference, unchanged
    assert abs(steps[0]["loss"]) < 1e-5  # ratio 1: the loss is minus the mean of whitened advantages
    assert all(math.isfinite(r["value_loss"]) for r in steps) and {"reward", "entropy", "reply_tokens"} <= steps[0].keys()
    ckpt = load_checkpoint(out / LAST)
    assert ckpt["objective"]["name"] == "ppo" and "critic" in ckpt["objective"]


def test_grpo_gets_no_gradient_from_a_group_that_scores_alike(tmp_path, sft, files):
    out = tmp_path / "grpo"
    before = load_checkpoint(sft / LAST)["model"]
    model = train(run_of(out, sft, "grpo", files, reward_fn="test_alignment:constant_reward", kl_coef=0.0, weight_decay=0.0, no_end_penalty=0.0,
                         max_iters=2, eval_interval=2))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_grpo_with_the_judge_runs_and_reports(tmp_path, sft, files, capsys):
    out = tmp_path / "grpo"
    train(run_of(out, sft, "grpo", files, max_iters=2, eval_interval=2, log_interval=1))
    printed = capsys.readouterr().out
    assert "prompts x 4 replies" in printed and "val reward" in printed and "| reward " in printed


@pytest.mark.parametrize("objective", ["reward", "dpo", "ppo", "grpo"])
def test_each_objective_resumes_bit_exactly_after_sigterm(tmp_path, sft, reward_model, files, monkeypatch, objective):
    extra = {"reward_model": str(reward_model)} if objective == "ppo" else {}
    straight = train(run_of(tmp_path / "straight", sft, objective, files, **extra))
    real = stop_at(monkeypatch, 2)  # mid-round for ppo and grpo (2 steps per round): the saved rollouts carry on
    with pytest.raises(TrainingStopped):
        train(run_of(tmp_path / "stopped", sft, objective, files, **extra))
    monkeypatch.setattr(optim, "lr_multiplier", real)
    resumed = train(run_of(tmp_path / "stopped", sft, objective, files, **extra))
    losses = [{r["iter"]: r["loss"] for r in records(tmp_path / name) if "loss" in r} for name in ("straight", "stopped")]
    assert losses[0] == losses[1] and len(losses[0]) == 6
    for name, tensor in straight.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name


@pytest.mark.parametrize("objective", ["reward", "dpo",  # PPO and GRPO under torchrun: 17 s more of CI's 15 minutes, so only with --runslow
                                       pytest.param("ppo", marks=pytest.mark.slow), pytest.param("grpo", marks=pytest.mark.slow)])
def test_each_objective_trains_under_torchrun_with_two_processes(tmp_path, sft, reward_model, files, objective):
    options = dict(objective=objective, init_from=sft, block_size=160, batch_size=4, grad_accum=2, max_iters=2, eval_interval=2,
                   val_fraction=0.1, optimizer="adamw", lr=1e-3, warmup_iters=1, max_reply_tokens=16, eval_prompts=4, group_size=4,
                   out_dir=tmp_path / "two", device="cpu", threads=1, seed=3)
    options.update({"pairs": files["pairs"]} if objective in ("reward", "dpo") else {"prompts": files["prompts"]})
    options.update({"reward_model": reward_model} if objective == "ppo" else {"reward_fn": "gptkit.alignment_demo:judge"} if objective == "grpo" else {})
    code, _, stderr = finish(torchrun([f"--{k}={v}" for k, v in options.items()]), timeout=120)
    assert code == 0, stderr[-2000:]
    if objective != "ppo":  # the same global batch as one process (ppo's critic steps per micro-batch alone, together under DDP)
        one = train(tiny_run(tmp_path / "one", "", **{k: str(v) if k in ("init_from", "pairs", "prompts", "reward_model") else v
                                                     for k, v in options.items() if k != "out_dir"}))
        two = load_checkpoint(tmp_path / "two" / LAST)["model"]
        for name, tensor in one.state_dict().items():
            assert torch.allclose(tensor, two[name], atol=1e-5), name


# -- what users get wrong ------------------------------------------------------------------------------------------------

def test_bad_settings_fail_in_one_line(tmp_path, sft, reward_model, files):
    with pytest.raises(UsageError, match="is a reward model"):
        train(run_of(tmp_path / "a", reward_model, "dpo", files))
    with pytest.raises(UsageError, match="not a reward model"):
        train(run_of(tmp_path / "b", sft, "ppo", files, reward_model=str(sft)))
    with pytest.raises(UsageError, match="at least 2"):
        train(run_of(tmp_path / "c", sft, "grpo", files, group_size=1))
    with pytest.raises(UsageError, match="multiple of --group_size"):
        train(run_of(tmp_path / "d", sft, "grpo", files, group_size=3))
    with pytest.raises(UsageError, match="--pairs"):
        train(run_of(tmp_path / "e", sft, "dpo", files, pairs=""))
    with pytest.raises(UsageError, match="module:function"):
        train(run_of(tmp_path / "f", sft, "grpo", files, reward_fn="judge"))
    with pytest.raises(UsageError, match="--init_from"):
        train(run_of(tmp_path / "g", sft, "reward", files, init_from=""))


def test_a_reward_model_with_another_tokenizer_is_refused(tmp_path, sft, reward_model, files, bpe_tok):
    ckpt = torch.load(reward_model / LAST, weights_only=True)
    ckpt["tokenizer"] = bpe_tok.to_json()
    write_checkpoint(tmp_path / "other_rm.pt", ckpt)
    with pytest.raises(UsageError, match="different tokenizer"):
        train(run_of(tmp_path / "ppo", sft, "ppo", files, reward_model=str(tmp_path / "other_rm.pt")))


def test_bad_preference_rows_are_named_and_the_rest_used(tmp_path, sft, files, capsys):
    lines = files["pairs"].read_text().splitlines()
    bad = tmp_path / "pairs.jsonl"
    bad.write_text("\n".join(lines[:2] + ['{"chosen": "same", "rejected": "same"}', "not json"] + lines[2:]) + "\n")
    train(run_of(tmp_path / "rm", sft, "reward", files, pairs=str(bad), max_iters=1, eval_interval=1))
    printed = capsys.readouterr().out
    assert "2 preference rows skipped" in printed and f"{bad}:3" in printed and f"{bad}:4" in printed


def test_align_py_makes_judged_pairs_and_evaluates_a_policy(tmp_path, sft, files):
    out = tmp_path / "pairs.jsonl"
    made = run_script("align.py", "pairs", f"--policy={sft}", f"--prompts={files['prompts']}", f"--out={out}", "--max_reply_tokens=24",
                      "--samples=3", "--device=cpu")
    assert made.returncode == 0, made.stderr
    rows = {json.dumps(r["prompt"]): r for r in map(json.loads, files["prompts"].read_text().splitlines())}
    pairs = [json.loads(line) for line in out.read_text().splitlines()]
    assert f"wrote {len(pairs)} pairs" in made.stdout and len({json.dumps(p) for p in pairs}) == len(pairs)
    assert all(judge(p["chosen"], rows[json.dumps(p["prompt"])]) > judge(p["rejected"], rows[json.dumps(p["prompt"])]) for p in pairs)
    evaluated = run_script("align.py", "evaluate", f"--policy={sft}", f"--prompts={files['prompts']}", f"--reference={sft}",
                           "--max_reply_tokens=8", "--device=cpu")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "exact" in evaluated.stdout and "KL 0.000 nats/reply" in evaluated.stdout and "win rate" in evaluated.stdout
    bare = run_script("align.py", "--device=cpu")
    assert bare.returncode == 2 and "give one command" in bare.stderr


@pytest.mark.slow  # 19 s of CI's 15 minutes; align.py's commands and their errors are tested above
def test_align_py_scores_conversations_and_runs_rounds(tmp_path, sft, reward_model, files, monkeypatch):
    chats = write_jsonl(tmp_path / "chats.jsonl", [{"messages": r["prompt"] + [{"role": "assistant", "content": reply}]}
                                                   for r in make_prompts(3, seed=1) for reply in (r["answer"], f"Sure! {r['answer']}")])
    scored = run_script("align.py", "score", f"--reward_model={reward_model}", f"--conversations={chats}", "--json", "--device=cpu")
    assert scored.returncode == 0, scored.stderr
    scores = [json.loads(line)["score"] for line in scored.stdout.splitlines()]
    assert len(scores) == 6 and all(plain > chatty for plain, chatty in zip(scores[::2], scores[1::2]))  # what the reward model learned
    options = ["--block_size=160", "--max_iters=2", "--eval_interval=2", "--batch_size=8", "--device=cpu", "--threads=1", "--optimizer=adamw"]
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))  # the judge below is in this file
    rounds = run_script("align.py", "rounds", "--judge=test_alignment:length_reward", f"--policy={sft}", f"--prompts={files['prompts']}",
                        "--rounds=2", "--method=dpo", "--max_reply_tokens=16",
                        f"--out_dir={tmp_path / 'rounds'}", f"--train_options={','.join(options)}", "--device=cpu", timeout=300)
    assert rounds.returncode == 0, rounds.stderr[-2000:]
    second = load_checkpoint(tmp_path / "rounds" / "round_2" / "policy" / LAST)
    assert second["train_config"]["init_from"] == str(tmp_path / "rounds" / "round_1" / "policy")  # round 2 starts from round 1's policy
    assert second["train_config"]["ref_from"] == str(sft) and second["train_config"]["objective"] == "dpo"
    assert second["train_config"]["pairs"] == str(tmp_path / "rounds" / "round_2" / "pairs.jsonl") and "== round 2" in rounds.stdout
