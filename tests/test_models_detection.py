"""Faster R-CNN with a PartialNet-T0 + FPN backbone: one training step and one inference step on CPU."""
from __future__ import annotations

import timm
import torch

from partialnet.models.detection import PartialNetFPN, fasterrcnn_partialnet


def _images_and_targets(n: int = 2, h: int = 128, w: int = 160):
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, h, w, generator=g) for _ in range(n)]
    targets = []
    for _ in range(n):
        xy = torch.rand(3, 2, generator=g) * torch.tensor([w / 2, h / 2])
        wh = 16 + torch.rand(3, 2, generator=g) * 40
        targets.append(dict(boxes=torch.cat([xy, xy + wh], dim=1), labels=torch.randint(1, 5, (3,), generator=g)))
    return images, targets


def test_fpn_backbone_levels():
    fpn = PartialNetFPN("partialnet_t0", out_channels=64).eval()
    with torch.no_grad():
        feats = fpn(torch.randn(1, 3, 128, 160))
    assert list(feats) == ["0", "1", "2", "3", "pool"]
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(32, 40), (16, 20), (8, 10), (4, 5), (2, 3)]
    assert all(f.shape[1] == 64 for f in feats.values())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fpn.body.modules()), "batch norms frozen"
    assert not any(p.requires_grad for n, p in fpn.body.named_parameters() if n.startswith("stem.norm"))


def test_train_step_and_inference_on_cpu():
    torch.manual_seed(0)
    model = fasterrcnn_partialnet(num_classes=5, out_channels=64,
                                  detector_kwargs=dict(min_size=128, max_size=160, rpn_batch_size_per_image=64,
                                                       box_batch_size_per_image=64))
    images, targets = _images_and_targets()
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    opt.zero_grad()
    loss.backward()
    grads = [p.grad for n, p in model.backbone.body.named_parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads), "gradients reach the PartialNet backbone"
    assert model.backbone.body.stem_conv.weight.grad is not None
    opt.step()
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and set(out[0]) == {"boxes", "labels", "scores"}
    assert out[0]["boxes"].shape[-1] == 4


def test_weights_file_loads_into_the_backbone(tmp_path):
    source = timm.create_model("partialnet_t0", pat_sp=False)
    path = tmp_path / "t0.pth"
    torch.save(source.state_dict(), path)
    fpn = PartialNetFPN("partialnet_t0", weights_file=path, pat_sp=False, freeze_bn=False)
    torch.testing.assert_close(fpn.body.stem_conv.weight, source.stem.conv.weight)
