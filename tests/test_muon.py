"""gptkit's Muon: torch.optim.Muon's update, with the Newton-Schulz iteration in float32 on a CPU."""
import pytest
import torch

from gptkit.muon import Muon, orthogonalize, orthogonalized

COEFFICIENTS = (3.4445, -4.775, 2.0315)


def test_the_iteration_in_bfloat16_is_torchs_bit_for_bit():
    muon = pytest.importorskip("torch.optim._muon")  # private: skip if a torch release moves it
    for shape in [(300, 100), (64, 200), (128, 128)]:
        g = torch.randn(shape)
        assert torch.equal(orthogonalize(g, COEFFICIENTS, 5, 1e-7, torch.bfloat16), muon._zeropower_via_newtonschulz(g, COEFFICIENTS, 5, 1e-7))


@pytest.mark.parametrize("nesterov", [True, False])
def test_steps_follow_torchs_muon_and_share_its_state(nesterov):
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(96, 32)), torch.nn.Parameter(torch.randn(32, 80))]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    a = Muon(ours, lr=0.02, weight_decay=0.1, nesterov=nesterov)
    b = torch.optim.Muon(theirs, lr=0.02, weight_decay=0.1, nesterov=nesterov)
    for _ in range(4):
        for p, q in zip(ours, theirs):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        a.step()
        b.step()
        for p, q in zip(ours, theirs):  # float32 against bfloat16: the same update up to bfloat16's rounding
            torch.testing.assert_close(p, q, rtol=0, atol=2e-3)
    a.load_state_dict(b.state_dict())  # a checkpoint written with torch's Muon resumes with ours
    assert torch.equal(a.state[ours[0]]["momentum_buffer"], b.state[theirs[0]]["momentum_buffer"])


def test_on_a_cpu_the_update_is_orthogonalized_in_float32():
    torch.manual_seed(1)
    p = torch.nn.Parameter(torch.randn(64, 16))
    before, grad = p.detach().clone(), torch.randn(64, 16)
    p.grad = grad.clone()
    Muon([p], lr=0.1, weight_decay=0.0, momentum=0.9).step()
    update = grad.lerp(grad * 0.1, 0.9)  # nesterov over a fresh momentum buffer (which became 0.1 * grad)
    expected = before - 0.1 * 2.0 * orthogonalize(update, COEFFICIENTS, 5, 1e-7, torch.float32)  # lr scaled by sqrt(64 / 16)
    torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-6)
    assert not torch.allclose(p.detach(), before - 0.2 * orthogonalize(update, COEFFICIENTS, 5, 1e-7, torch.bfloat16).float(), rtol=0, atol=1e-6)


def test_same_shaped_updates_are_orthogonalized_together_as_each_alone():
    torch.manual_seed(2)
    updates = [torch.randn(96, 32), torch.randn(32, 32), torch.randn(96, 32), torch.randn(32, 80), torch.randn(96, 32)]
    together = orthogonalized(updates, COEFFICIENTS, 5, 1e-7, torch.float32)
    for update, result in zip(updates, together, strict=True):
        torch.testing.assert_close(result, orthogonalize(update, COEFFICIENTS, 5, 1e-7, torch.float32), rtol=0, atol=1e-6)
