"""The CUDA-only switches doing their job for a few steps: AMP (bf16), channels_last,
torch.compile, sync-BN. Skipped cleanly without a CUDA GPU (their CPU fallbacks, a one-line
warning each, are tested in test_callbacks_loggers.py)."""
from __future__ import annotations

import pytest
import torch

from conftest import FAST_TRAIN, run_task

pytestmark = [
    pytest.mark.requires_cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
GPU = [a for a in FAST_TRAIN if not a.startswith("trainer.accelerator")] + [
    "trainer.accelerator=gpu", "trainer.devices=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1",
]


def _last(run_dir):
    return torch.load(run_dir / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)


def test_bf16_amp_channels_last_and_compile_train(tmp_path, monkeypatch):
    from partialnet.training.classifier import ClassificationModule

    seen = {}
    fit_end = ClassificationModule.on_fit_end

    def spy(self):
        seen["compiled"] = self._compiled is not None
        conv = next(p for p in self.model.parameters() if p.dim() == 4 and p.shape[-1] > 1)
        seen["channels_last"] = conv.is_contiguous(memory_format=torch.channels_last)
        seen["precision"] = self.trainer.precision
        return fit_end(self)

    monkeypatch.setattr(ClassificationModule, "on_fit_end", spy)
    run = run_task("train", GPU + ["trainer.precision=bf16-mixed", "channels_last=true", "compile=true"], tmp_path)
    assert seen == {"compiled": True, "channels_last": True, "precision": "bf16-mixed"}, seen
    assert torch.isfinite(torch.tensor(run.result["train/loss_epoch"]))
    ck = _last(tmp_path)
    assert ck["global_step"] == 3 and all(k.startswith(("model.", "ema.")) for k in ck["state_dict"])


def test_sync_batchnorm_under_ddp(tmp_path, monkeypatch):
    import torch.distributed as dist

    from partialnet.training.classifier import ClassificationModule

    seen = {}
    fit_end = ClassificationModule.on_fit_end

    def spy(self):
        seen["sync_bn"] = sum(isinstance(m, torch.nn.SyncBatchNorm) for m in self.model.modules())
        seen["bn"] = sum(type(m) is torch.nn.BatchNorm2d for m in self.model.modules())
        return fit_end(self)

    monkeypatch.setattr(ClassificationModule, "on_fit_end", spy)
    monkeypatch.setenv("MASTER_PORT", "29533")
    try:
        run_task("train", GPU + ["trainer.strategy=ddp", "trainer.sync_batchnorm=true"], tmp_path)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    assert seen["sync_bn"] > 0 and seen["bn"] == 0, seen
    assert _last(tmp_path)["global_step"] == 3


@pytest.mark.parametrize("name", ["partialnet_t0", "fasternet_t0"])
def test_fused_model_on_cuda_matches_cpu(name, monkeypatch):
    """The fused deploy form on the GPU (one image, which takes the token-matrix forms, and a
    batch) gives the CPU eval model's outputs (TF32 off, so that fp32 means fp32)."""
    import partialnet
    from partialnet.deploy import fuse

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)

    torch.manual_seed(0)
    model = partialnet.create_model(name).eval()
    fused = fuse(model).cuda()
    for batch in (1, 4):
        x = torch.randn(batch, 3, 96, 96)
        with torch.inference_mode():
            ref = model(x)
            out = fused(x.cuda()).cpu()
        assert (out - ref).abs().max().item() <= 1e-3, batch
