"""The two out-of-place forms of the fused PAT_ch and MLP (partialnet.deploy.set_export_form):
'full_width' (OpenVINO's graphs) and 'split' (onnxruntime's) compute the model's outputs, reach the
exported graph, and each runtime gets its own."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import partialnet
from conftest import randomize_batch_norm_
from partialnet.deploy import export_onnx, fuse, set_export_form, set_forward_type
from partialnet.deploy.fusion import EXPORT_FORMS, FusedMlp, FusedPATChannel
from partialnet.errors import UserError

TOL = 1e-4


def _model(name: str = "partialnet_t0", seed: int = 0, zero_pat_sp_scale: bool = False):
    """One block per stage (every block kind), random BN statistics; optionally a PAT_sp BN weight
    of 0, which keeps that MLP's ``attn_scale`` apart from the gate."""
    torch.manual_seed(seed)
    model = partialnet.create_model(name, num_classes=10, depths=(1, 1, 1, 1))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            randomize_batch_norm_(m)
    if zero_pat_sp_scale:
        with torch.no_grad():
            model.stages[0].blocks[0].mlp.pat_sp.attn_norm.weight[3] = 0.0
    return model.eval()


@pytest.mark.parametrize("name,zero_scale", [("partialnet_t0", False), ("partialnet_t0", True),
                                             ("partialnet_t2", False), ("patnet_t0", False)],
                         ids=["scale-folded", "scale-kept", "relu-variant", "patnet"])
def test_both_forms_compute_the_model_in_eager_and_in_onnxruntime(tmp_path, name, zero_scale):
    import onnxruntime as ort

    model = _model(name, seed=1, zero_pat_sp_scale=zero_scale)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    for form in EXPORT_FORMS:
        fused = set_export_form(fuse(model, channels_last=False, forward_type="split_cat"), form)
        assert any(m.attn_scale is not None for m in fused.modules() if isinstance(m, FusedMlp)) == zero_scale
        with torch.no_grad():
            assert (fused(x) - ref).abs().max().item() <= TOL, form
        path = export_onnx(model, tmp_path / f"{form}.onnx", input_size=64, export_form=form)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (got,) = sess.run(None, {"input": x.numpy()})
        assert np.abs(got - ref.numpy()).max() <= TOL, form


def test_the_form_reaches_the_exported_graph(tmp_path):
    """'split': one Split per PAT_ch and PAT_sp's shift as a BatchNormalization per MLP; 'full_width':
    neither (its statistics read the whole map)."""
    model = _model()
    ops = {}
    for form in EXPORT_FORMS:
        graph = onnx.load(str(export_onnx(model, tmp_path / f"{form}.onnx", input_size=64, dynamic_batch=False,
                                          export_form=form))).graph
        ops[form] = [n.op_type for n in graph.node]
    pat_ch, pat_sp = 3, 4  # one block per stage: PAT_ch in stages 1-3, PAT_sp in every MLP
    assert ops["split"].count("BatchNormalization") == pat_sp and ops["full_width"].count("BatchNormalization") == 0
    assert ops["split"].count("Split") >= pat_ch
    assert ops["full_width"].count("Unsqueeze") > ops["split"].count("Unsqueeze")


def test_a_single_position_gives_the_full_width_gate():
    """A 1x1 map (variance 0 by definition) in the split form, against the full-width form."""
    torch.manual_seed(2)
    layer = _model().stages[0].blocks[0].mixer
    m = FusedPATChannel.from_layer(layer, forward_type="split_cat")
    x = torch.randn(3, m.dim, 1, 1)
    with torch.no_grad():
        full = m(x)
        m.export_form = "split"
        assert (m(x) - full).abs().max().item() <= 1e-6


def test_each_onnx_runtime_exports_its_own_form(monkeypatch):
    pytest.importorskip("openvino")
    from partialnet.deploy import onnx_export
    from partialnet.measure.runtimes import make_runner

    asked = []
    real = onnx_export.export_onnx

    def recording(*args, **kwargs):
        asked.append(kwargs.get("export_form"))
        return real(*args, **kwargs)

    monkeypatch.setattr(onnx_export, "export_onnx", recording)
    fused = fuse(_model())
    for runtime in ("onnxruntime", "openvino"):
        make_runner(runtime, fused, 32).prepare(1)
    assert asked == ["split", "full_width"]


def test_an_unknown_form_is_a_user_error():
    fused = set_forward_type(fuse(_model()), "split_cat")
    with pytest.raises(UserError, match=r"export_form='blocked' is unknown; use one of full_width, split"):
        set_export_form(fused, "blocked")
