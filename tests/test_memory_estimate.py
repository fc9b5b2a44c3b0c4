"""The memory estimate train.py prints at start (gptkit/memory_estimate.py): activations measured on the meta device
match the same count on a real forward, and the layout's shares add up."""
import pytest

from gptkit.memory_estimate import activation_bytes, describe, estimate, saved_bytes
from gptkit.model import GPT, GPTConfig
from gptkit.optim import make_optimizers
from gptkit.train_config import TrainConfig


@pytest.mark.parametrize("preset", ["gpt2", "modern"])
def test_activations_measured_on_the_meta_device_match_a_real_forward(preset):
    config = GPTConfig.from_preset(preset, n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=512)
    real, estimated = saved_bytes(config, 4, device="cpu"), saved_bytes(config, 4)
    assert 0.9 * real <= estimated <= 1.1 * real
    assert saved_bytes(config, 8) == pytest.approx(2 * estimated, rel=0.01)  # linear in the rows, but for a few positions
    assert activation_bytes(config, 4, checkpointing=True) < estimated


def test_the_optimizers_states_and_checkpointing_change_the_estimate():
    config = GPTConfig.from_preset("modern", n_layer=2, n_head=2, n_embd=64, block_size=32, vocab_size=256)
    model = GPT(config)
    weights = model.num_params() * 4
    adamw = estimate(model, make_optimizers(model, TrainConfig(optimizer="adamw"), "cpu"), config, False, rows=4)
    assert (adamw["weights"], adamw["gradients"], adamw["optimizer"]) == (weights, weights, 2 * weights)
    muon = estimate(model, make_optimizers(model, TrainConfig(optimizer="muon"), "cpu"), config, False, rows=4)
    assert weights < muon["optimizer"] < 2 * weights  # one state per matrix entry, two for the rest
    assert muon["activations"] == adamw["activations"]
    checkpointed = estimate(model, [], config, True, rows=4)
    assert checkpointed["activations"] < adamw["activations"]
    line = describe(adamw, 4, 32)
    assert line.startswith("memory per device (estimate): weights ") and "(a micro-batch of 4 x 32 tokens)" in line


@pytest.mark.parametrize("preset", ["gpt2", "modern"])
def test_a_tensor_parallel_rank_keeps_the_activations_of_its_share(preset):
    """The sharded layouts' weights are counted from the real shards, in the torchrun tests (test_tensor_parallel.py)."""
    config = GPTConfig.from_preset(preset, n_layer=2, n_head=4, n_embd=128, block_size=32, vocab_size=512)
    real, estimated = saved_bytes(config, 4, device="cpu", tp=2), saved_bytes(config, 4, tp=2)
    assert 0.9 * real <= estimated <= 1.1 * real
    whole = saved_bytes(config, 4)
    assert 0.5 * whole < estimated < 0.9 * whole  # the residual stream and norms stay whole on every rank
