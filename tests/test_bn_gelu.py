"""batch_norm_gelu: the MLP's BatchNorm + GELU as one fused C++ kernel in training equals the two
modules (values, gradients, running statistics); anything the kernel does not cover runs the modules."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import randomize_batch_norm_

import partialnet.models.layers.bn_gelu as bn_gelu_module
from partialnet.kernels import cpu_kernels
from partialnet.models.backbone import Mlp
from partialnet.models.layers import batch_norm_gelu
from partialnet.models.layers.bn_gelu import takes_fused_kernel
from partialnet.models.layers.dense_activation import dense_activation

HAS_AVX2 = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
needs_kernels = pytest.mark.skipif(not HAS_AVX2, reason="the fused kernels need an AVX2 CPU")


def _norm(c: int, **kwargs) -> nn.BatchNorm2d:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(c, **kwargs)
    randomize_batch_norm_(bn)
    return bn.train()


def _map(b: int, c: int, hw: int, channels_last: bool = True, seed: int = 1) -> torch.Tensor:
    x = torch.randn(b, c, hw, hw, generator=torch.Generator().manual_seed(seed)) * 2 + 0.5
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _close(a: torch.Tensor, b: torch.Tensor, what: str, rel: float = 2e-5) -> None:
    err, scale = (a - b).abs().max().item(), b.abs().max().item()
    assert err <= rel * scale + 1e-6, f"{what}: max difference {err:.3g} at scale {scale:.3g}"


@needs_kernels
def test_kernels_are_built():
    assert cpu_kernels() is not None, "the C++ CPU kernels are not built: run `python -m partialnet.kernels`"


@needs_kernels
@pytest.mark.parametrize("c,hw", [(64, 6), (13, 5), (20, 3)])  # 13 and 20: channels past the last 8-wide vector
@pytest.mark.parametrize("norm_kwargs", [{}, {"momentum": None}, {"track_running_stats": False}])
def test_fused_equals_the_modules(c, hw, norm_kwargs):
    bn, act = _norm(c, **norm_kwargs), nn.GELU()
    ref = copy.deepcopy(bn)
    for step in range(2):  # the second step reads what the first wrote into the running statistics
        x = _map(4, c, hw, seed=step)
        assert takes_fused_kernel(bn, act, x)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = batch_norm_gelu(bn, act, xa), act(ref(xb))
        assert ya.is_contiguous(memory_format=torch.channels_last)
        _close(ya, yb, "output")
        g = torch.randn(ya.shape, generator=torch.Generator().manual_seed(7 + step))
        ya.backward(g)
        yb.backward(g)
        _close(xa.grad, xb.grad, "input gradient")
        _close(bn.weight.grad, ref.weight.grad, "weight gradient")
        _close(bn.bias.grad, ref.bias.grad, "bias gradient")
    for (name, buf), ref_buf in zip(bn.named_buffers(), ref.buffers()):
        _close(buf.double(), ref_buf.double(), name, rel=1e-6)


@needs_kernels
def test_gelu_of_the_kernel_is_the_exact_gelu():
    x = torch.linspace(-12, 12, 240_001).reshape(-1, 1).repeat(1, 9)  # 9 columns: vector and scalar paths
    ones, zeros = torch.ones(9), torch.zeros(9)
    a = cpu_kernels().affine_gelu(x, ones, zeros)
    exact = F.gelu(x.double())
    err = (a.double() - exact).abs()
    assert err.max().item() < 2e-6, f"max abs error {err.max().item():.3g}"
    assert (err / exact.abs().clamp_min(1.0)).max().item() < 1e-6


@pytest.mark.parametrize("case", ["eval", "nchw", "float64", "tanh", "relu", "sync_bn"])
def test_other_inputs_run_the_modules(case):
    bn, act, x = _norm(16), nn.GELU(), _map(2, 16, 4)
    if case == "eval":
        bn.eval()
    elif case == "nchw":
        x = _map(2, 16, 4, channels_last=False)
    elif case == "float64":
        bn, x = bn.double(), x.double()
    elif case == "tanh":
        act = nn.GELU(approximate="tanh")
    elif case == "relu":
        act = nn.ReLU()
    elif case == "sync_bn":
        bn = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(bn))[0]
    assert not takes_fused_kernel(bn, act, x)
    if case != "sync_bn":  # (SyncBatchNorm's forward needs a process group)
        ref = copy.deepcopy(bn)
        torch.testing.assert_close(batch_norm_gelu(bn, act, x), dense_activation(act, ref(x)), rtol=0, atol=0)


@needs_kernels
def test_mlp_trains_through_the_kernel(monkeypatch):
    """The block MLP's forward calls the kernel in training (and only there) and matches the modules."""
    calls = []
    kernels = cpu_kernels()

    class Spy:
        def affine_gelu(self, *args):
            calls.append("forward")
            return kernels.affine_gelu(*args)

        def affine_gelu_backward(self, *args):
            calls.append("backward")
            return kernels.affine_gelu_backward(*args)

    torch.manual_seed(0)
    mlp = Mlp(24, nn.GELU, pat_sp=True).train().to(memory_format=torch.channels_last)
    ref = copy.deepcopy(mlp)
    x = _map(4, 24, 6)
    monkeypatch.setattr(bn_gelu_module, "cpu_kernels", lambda: Spy())
    y = mlp(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(3))
    y.backward(g)
    assert calls == ["forward", "backward"]
    yr = ref.pat_sp(ref.fc2(dense_activation(ref.act, ref.norm(ref.fc1(x)))))
    yr.backward(g)
    _close(y, yr, "MLP output")
    for (name, p), q in zip(mlp.named_parameters(), ref.parameters()):
        _close(p.grad, q.grad, f"{name} gradient")
    calls.clear()
    with torch.no_grad():
        mlp.eval()(x)
    assert calls == []


def test_without_a_build_nothing_is_compiled(monkeypatch, tmp_path, caplog):
    """cpu_kernels() only loads a finished build: with an empty build directory it returns None at
    once (no compiler run, one warning naming the build command), and batch_norm_gelu runs the modules."""
    monkeypatch.setenv("PARTIALNET_KERNELS_DIR", str(tmp_path))
    cpu_kernels.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="partialnet.kernels.loader"):
            assert cpu_kernels() is None
        assert list(tmp_path.iterdir()) == []
        assert "python -m partialnet.kernels" in caplog.text
        bn, act, x = _norm(8), nn.GELU(), _map(2, 8, 4)
        assert not takes_fused_kernel(bn, act, x)
    finally:
        cpu_kernels.cache_clear()


@needs_kernels
def test_a_damaged_build_is_skipped_with_a_warning(monkeypatch, tmp_path, caplog):
    """A build that does not load (damaged, or for another machine) is not used: one warning naming
    the fix, and PyTorch's operators run."""
    from partialnet.kernels import build_dir
    from partialnet.kernels.loader import NAME

    monkeypatch.setenv("PARTIALNET_KERNELS_DIR", str(tmp_path))
    so = build_dir() / f"{NAME}.so"
    so.parent.mkdir(parents=True)
    so.write_bytes(b"not a shared object")
    cpu_kernels.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="partialnet.kernels.loader"):
            assert cpu_kernels() is None
        assert "python -m partialnet.kernels" in caplog.text
        bn, act, x = _norm(8), nn.GELU(), _map(2, 8, 4)
        assert not takes_fused_kernel(bn, act, x)
    finally:
        cpu_kernels.cache_clear()


def test_a_failed_build_is_one_line_and_exit_2(monkeypatch, tmp_path):
    """``python -m partialnet.kernels`` where the compiler fails: one line naming the cause and the
    fix, exit code 2, no traceback."""
    import partialnet.kernels.loader as loader
    from conftest import run_module

    def failing_build(verbose=False):
        raise RuntimeError("Error building extension 'partialnet_cpu_kernels'\nc++: not found")

    monkeypatch.setenv("PARTIALNET_KERNELS_DIR", str(tmp_path))
    monkeypatch.setattr(loader, "build", failing_build)
    proc = run_module("partialnet.kernels", [])
    assert proc.returncode == 2
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: could not build the CPU kernels"), proc.stderr
    assert "Error building extension" in err[0] and "apt-get install g++" in err[0]
    assert "Traceback" not in proc.stderr


@needs_kernels
def test_kernels_refuse_arguments_they_would_misread():
    """Each kernel checks its tensors (float32, contiguous, CPU, shape) and the attention half's size
    before it reads their memory: a refusal, not a read past a buffer."""
    k = cpu_kernels()
    h, s, t = torch.randn(6, 4), torch.randn(4), torch.randn(4)
    assert torch.isfinite(k.affine_gelu(h, s, t)).all()
    for args, needle in (((h.double(), s, t), "h must be a contiguous float32 CPU matrix"),
                         ((h.t(), s, t), "h must be a contiguous float32 CPU matrix"),
                         ((h, s[:3], t), "s must be a contiguous float32 CPU vector of 4 values"),
                         ((h, s, t.double()), "t must be a contiguous float32 CPU vector of 4 values")):
        with pytest.raises(RuntimeError, match=needle):
            k.affine_gelu(*args)
    with pytest.raises(RuntimeError, match="the attention half has 5 of 4 channels; it needs between 1 and 4"):
        k.pat_sp_attention_out(h, torch.rand(6), torch.ones(5), torch.zeros(5), torch.empty(6, 4))
    with pytest.raises(RuntimeError, match="out has the wrong shape"):
        k.pat_sp_attention_out(h, torch.rand(6), torch.ones(2), torch.zeros(2), torch.empty(6, 3))
