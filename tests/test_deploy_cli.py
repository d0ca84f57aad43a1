"""`python -m partialnet.deploy ckpt=PATH onnx=OUT.onnx`: a checkpoint to a fused ONNX model,
checked with onnxruntime; bad input is one line and exit 2."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from conftest import REPO, assert_user_error, run_module

pytest.importorskip("onnxruntime")


def _deploy(*args, subprocess_only=False):
    """``python -m partialnet.deploy ARGS``: a real process for one happy path (the interpreter's
    exit code), in this process otherwise (no interpreter start-up)."""
    if not subprocess_only:
        return run_module("partialnet.deploy", list(args))
    return subprocess.run([sys.executable, "-m", "partialnet.deploy", *args], cwd=str(REPO), capture_output=True,
                          text=True, timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture
def checkpoint(tmp_path):
    from partialnet.models import create_model

    torch.manual_seed(0)
    raw, ema = create_model("partialnet_t0", num_classes=10), create_model("partialnet_t0", num_classes=10)
    for m in (raw, ema):  # non-trivial BN statistics, so folding them matters
        for bn in m.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
    sd = {**{f"model.{k}": v for k, v in raw.state_dict().items()},
          **{f"ema.module.{k}": v for k, v in ema.state_dict().items()}}
    meta = {"model_spec": {"name": "partialnet_t0", "kwargs": {"num_classes": 10}}, "num_classes": 10, "image_size": 64}
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": sd, "partialnet": meta}, path)
    return path, raw.eval(), ema.eval()


@pytest.mark.parametrize("weights", ["raw", "ema"])
def test_checkpoint_to_fused_onnx(tmp_path, checkpoint, weights):
    import onnxruntime as ort

    path, raw, ema = checkpoint
    out = tmp_path / f"{weights}.onnx"
    form = "full_width" if weights == "raw" else "split"  # the default form, and onnxruntime's on request
    extra = [] if weights == "raw" else ["export_form=split"]
    proc = _deploy(f"ckpt={path}", f"onnx={out}", f"weights={weights}", *extra, subprocess_only=weights == "raw")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert ("BatchNormalization" in ops) == (form == "split")  # PAT_sp's shift in the split form
    assert f"wrote {out} (fused, {weights} weights" in proc.stdout and "input 64x64" in proc.stdout
    x = torch.randn(3, 3, 64, 64)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = (ema if weights == "ema" else raw)(x).numpy()
        other = (raw if weights == "ema" else ema)(x).numpy()
    assert np.abs(got - want).max() < 1e-4
    assert np.abs(got - other).max() > 1e-3  # the requested weight set, not the other one


def test_deploy_cli_errors(tmp_path, checkpoint):
    """A missing checkpoint as a real process (exit 2, one line); the argument errors through the
    CLI's own parser, which runs before anything is loaded or written."""
    from partialnet.deploy.__main__ import _parse
    from partialnet.errors import UserError

    path, _, _ = checkpoint
    assert_user_error(_deploy(f"ckpt={tmp_path}/none.ckpt", f"onnx={tmp_path}/a.onnx"), "none.ckpt")
    for args, needle in (([f"ckpt={path}", f"onnx={tmp_path}/a.onnx", "weigths=ema"], "unknown argument 'weigths=ema'"),
                         ([f"ckpt={path}"], "onnx= is required"),
                         ([f"ckpt={path}", f"onnx={tmp_path}/a.onnx", "opset=x"], "opset='x' is not a number"),
                         ([f"ckpt={path}", f"onnx={tmp_path}/a.onnx", "fuse=maybe"], "fuse='maybe'; use true or false"),
                         ([f"ckpt={path}", f"onnx={tmp_path}/a.onnx", "export_form=blocked"],
                          "export_form='blocked' is unknown; use one of full_width, split")):
        with pytest.raises(UserError) as e:
            _parse(args)
        assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not list(tmp_path.glob("*.onnx"))
