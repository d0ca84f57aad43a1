"""The benchmarks' argument check: every bad value and unknown model in one line on stderr, exit 2,
before anything is measured (bench/models.py, runtimes.py and train_step.py call it)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import runtimes  # noqa: E402  (bench/runtimes.py; imports bench/models.py)
from models import exit_on_bad_args  # noqa: E402


def test_bad_values_and_models_are_one_line_exit_2(capsys):
    args = argparse.Namespace(runs=0, token_runs=5, threads=None, size=16)
    with pytest.raises(SystemExit) as e:
        exit_on_bad_args(args, {"runs": 1, "token_runs": 1, "threads": 1, "size": 32}, ["partialnet_t0", "nope_t9"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "--runs 0 must be at least 1" in err and "--size 16 must be at least 32" in err
    assert "unknown model(s) nope_t9" in err and "token-runs" not in err and "threads" not in err


def test_good_values_pass():
    exit_on_bad_args(argparse.Namespace(runs=1, threads=None), {"runs": 1, "threads": 1}, ["fasternet_t0"])


def test_runtimes_rejects_bad_input_before_measuring(capsys):
    with pytest.raises(SystemExit) as e:
        runtimes.main(["--token-runs", "0", "--no-compile"])
    assert e.value.code == 2
    captured = capsys.readouterr()
    assert captured.err == "error: --token-runs 0 must be at least 1\n" and captured.out == ""


def test_token_forms_off_switch_restores_the_fused_path():
    import torch

    from partialnet.deploy import fusion

    real = fusion.token_matrix
    x = torch.randn(1, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    with runtimes.token_forms_off():
        assert fusion.token_matrix(x) is None
    assert fusion.token_matrix is real and fusion.token_matrix(x) is not None
