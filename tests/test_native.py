"""gptkit's own int8 kernel (gptkit/native.py, gptkit/kernels/int8_matvec.c): built at first use, the same products as
the weights widened to float32, and torch's kernel where it cannot be built."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gptkit import native
from gptkit.weight_formats import Int8WeightLinear


@pytest.fixture
def fresh_kernel(monkeypatch, tmp_path):
    """A kernel cache of this test's own, and the library built or loaded anew."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv(native.DISABLE_ENV, raising=False)
    native.forget()
    yield tmp_path
    native.forget()


def dequantized(q, x, bias):
    return F.linear(x, q.weight_int8.float()) * q.scale + (0 if bias is None else bias)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("k, n", [(32, 1), (96, 7), (768, 2304), (3072, 768)])
def test_the_kernel_multiplies_one_row_as_the_widened_weights_do(fresh_kernel, bias, k, n):
    reason = native.why_not_buildable()
    if reason:
        pytest.skip(f"the kernel cannot be built here: {reason}")
    torch.manual_seed(0)
    linear = nn.Linear(k, n, bias=bias)
    q = Int8WeightLinear(linear)
    x = torch.randn(1, 1, k)
    y = q(x)
    assert native.int8_matvec() is not None and list(fresh_kernel.glob("gptkit/kernels/gptkit-kernels-*.so"))
    expected = dequantized(q, x, linear.bias)
    assert y.shape == (1, 1, n) and y.dtype == torch.float32
    assert torch.allclose(y, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())  # the same products, summed in another order


def test_without_the_kernel_int8_falls_back_to_torch_after_one_note(fresh_kernel, monkeypatch, capfd):
    monkeypatch.setenv("CC", str(fresh_kernel / "no-such-compiler"))
    monkeypatch.setattr(native, "why_not_buildable", lambda: None)  # even where the CPU would allow it: the build itself fails
    torch.manual_seed(0)
    q = Int8WeightLinear(nn.Linear(64, 16))
    x = torch.randn(1, 64)
    y = q(x)
    assert native.int8_matvec() is None
    err = capfd.readouterr().err
    assert err.count("note: gptkit's int8 kernel is not used (building it failed") == 1 and "Traceback" not in err
    assert torch.allclose(y, dequantized(q, x, q.bias), atol=0.05)  # torch's kernel: bfloat16 input
    assert not list(fresh_kernel.glob("gptkit/kernels/*"))  # no half-built library left


def test_the_kernel_can_be_turned_off_and_widths_it_cannot_read_use_torch(fresh_kernel, monkeypatch, capfd):
    monkeypatch.setenv(native.DISABLE_ENV, "1")
    assert native.why_not_buildable() == f"{native.DISABLE_ENV}=1" and native.int8_matvec() is None
    assert "note:" not in capfd.readouterr().err  # asked for: nothing to say
    monkeypatch.delenv(native.DISABLE_ENV)
    native.forget()
    monkeypatch.setattr(native, "int8_matvec", lambda: pytest.fail("a width of 40 is not a multiple of 32"))
    q = Int8WeightLinear(nn.Linear(40, 8))
    assert q(torch.randn(1, 40)).shape == (1, 8)
