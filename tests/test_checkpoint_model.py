"""A checkpoint back to a model: ClassificationModule.load_from_checkpoint (also for checkpoints
written before the module recorded its hyper-parameters), partialnet.load_checkpoint(weights=...),
and `import partialnet` giving partialnet.deploy / partialnet.measure."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from conftest import FAST_TRAIN, REPO, run_task
from partialnet.errors import UserError


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    run_task("train", FAST_TRAIN + ["ema=default", "ema.decay=0.5",
                                    "trainer.limit_val_batches=1"], out)
    return out / "checkpoints" / "last.ckpt"


def _sub(sd, prefix):
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def test_load_from_checkpoint_rebuilds_the_module(ckpt, tmp_path):
    from partialnet.training.classifier import ClassificationModule

    saved = torch.load(ckpt, weights_only=False)
    module = ClassificationModule.load_from_checkpoint(ckpt)
    assert module.hparams["model"]["name"] == "partialnet_t0" and module.num_classes == 10
    assert module.ema is not None and module.config["data"]["batch_size"] == 32
    for k, v in module.state_dict().items():
        assert torch.equal(v, saved["state_dict"][k]), k

    del saved["hyper_parameters"]  # as written before the module recorded them
    old = tmp_path / "old.ckpt"
    torch.save(saved, old)
    again = ClassificationModule.load_from_checkpoint(old)
    for k, v in again.state_dict().items():
        assert torch.equal(v, saved["state_dict"][k]), k
    del saved["partialnet"]["config"]
    torch.save(saved, old)
    with pytest.raises(UserError, match="not written by partialnet's train.py"):
        ClassificationModule.load_from_checkpoint(old)


def test_load_checkpoint_picks_the_weights(ckpt):
    import partialnet

    sd = torch.load(ckpt, weights_only=False)["state_dict"]
    raw, ema = partialnet.load_checkpoint(ckpt, weights="raw"), partialnet.load_checkpoint(ckpt, weights="ema")
    assert not raw.training
    for model, prefix in ((raw, "model."), (ema, "ema.module.")):
        want = _sub(sd, prefix)
        assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())
    assert any(not torch.equal(a, b) for a, b in zip(raw.state_dict().values(), ema.state_dict().values()))
    auto = partialnet.load_checkpoint(ckpt)
    assert all(torch.equal(a, b) for a, b in zip(auto.state_dict().values(), ema.state_dict().values()))
    with pytest.raises(UserError, match="weights='best'"):
        partialnet.load_checkpoint(ckpt, weights="best")


_FRESH_PROCESS = """
import sys
import torch
import partialnet

m = partialnet.create_model("partialnet_t0", num_classes=10).eval()
f = partialnet.deploy.fuse(m)
x = torch.randn(1, 3, 64, 64)
assert (f(x) - m(x)).abs().max() < 1e-4
meta = {"model_spec": {"name": "partialnet_t0", "kwargs": {"num_classes": 10}}, "num_classes": 10}
torch.save({"state_dict": {"model." + k: v for k, v in m.state_dict().items()}, "partialnet": meta}, sys.argv[1])
back = partialnet.load_checkpoint(sys.argv[1])
assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), m.state_dict().values()))
print(partialnet.measure.count(m, 64)["macs"] > 0, sorted(k for k in sys.modules if "lightning" in k))
"""


def test_import_partialnet_exposes_deploy_and_measure(tmp_path):
    """In a fresh interpreter: ``import partialnet`` gives partialnet.deploy and partialnet.measure on
    first use, and a checkpoint goes back to a model without importing Lightning (1.6 s of imports)."""
    proc = subprocess.run([sys.executable, "-c", _FRESH_PROCESS, str(tmp_path / "m.ckpt")], cwd=str(REPO),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "True []", (proc.stdout, proc.stderr[-2000:])
