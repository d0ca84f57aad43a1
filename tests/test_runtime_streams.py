"""Throughput mode of the inference runtimes (make_runner(..., streams=N), eval.py streams=N): the
batch as N concurrent chunks gives the model's outputs, in order, and leaves torch's threads as
they were; bad requests are one-line errors."""
from __future__ import annotations

import pytest
import torch

import partialnet
from conftest import assert_user_error, run_cli
from partialnet.deploy import fuse
from partialnet.errors import UserError
from partialnet.measure.runtimes import check_runner, make_runner


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _model():
    """PartialNet-T0 with one block per stage: every block kind (PAT_ch, PAT_sp, PAT_sf), at a
    fraction of the full model's export and compile time per batch size."""
    torch.manual_seed(0)
    return partialnet.create_model("partialnet_t0", num_classes=10, depths=(1, 1, 1, 1)).eval()


@pytest.mark.parametrize("runtime", ["eager", "onnxruntime", "openvino"])
def test_streams_reproduce_the_model_in_order(runtime, two_threads):
    model = _model()
    runner = make_runner(runtime, fuse(model), 32, streams=2)
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))  # chunks of 3 and 2
    assert check_runner(runner, model, x, runtime) <= 1e-4
    with torch.inference_mode():
        ref = model(x)
    got = runner(x)
    # each image's row where it belongs: a swapped chunk would put image 3's logits first
    assert torch.equal(got.argmax(1), ref.argmax(1)) and (got - ref).abs().max() <= 1e-4
    assert runner(x[:1]).shape == (1, 10)  # one image: the whole-batch path
    assert torch.get_num_threads() == 2


def test_stream_requests_that_cannot_work_are_one_line_errors(two_threads):
    fused = fuse(_model())
    for kwargs, needle in (({"streams": 0}, "streams=0 must be a whole number"),
                           ({"streams": "2"}, "streams='2' must be a whole number"),
                           ({"streams": 3}, "more than the 2 thread(s)")):
        with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            make_runner("eager", fused, 32, **kwargs)
    with pytest.raises(UserError, match="not available for runtime=compile"):
        make_runner("compile", fused, 32, streams=2)


def test_eval_cli_names_the_streams_in_its_table(tmp_path, two_threads):
    proc = run_cli("eval.py", ["models=[partialnet_t0]", "input_size=32", "runtime=eager", "streams=2",
                               "speed.runs=1", "speed.warmup=0", f"paths.log_dir={tmp_path}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| eager x2 streams |" in proc.stdout
    bad = run_cli("eval.py", ["models=[partialnet_t0]", "input_size=32", "streams=0", f"paths.log_dir={tmp_path}"])
    assert_user_error(bad, "streams=0")
