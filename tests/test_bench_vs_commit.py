"""bench/train_step_vs_commit.py: an unknown commit is a one-line error (exit 2), a tree without the
default commit is skipped (exit 0), and the earlier side really imports the extracted commit."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import train_step_vs_commit as vs  # noqa: E402  (bench/train_step_vs_commit.py)

HAS_HISTORY = subprocess.run(["git", "-C", str(BENCH), "rev-parse", "HEAD"], capture_output=True).returncode == 0


@pytest.mark.skipif(not HAS_HISTORY, reason="needs the repository's git history")
def test_unknown_commit_is_one_line_exit_2(capsys):
    assert vs.main(["--commit", "no-such-commit-123"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("error: no commit 'no-such-commit-123'") and "git log" in captured.err


def test_bad_values_exit_2_before_anything_runs(capsys):
    with pytest.raises(SystemExit) as e:
        vs.main(["--runs", "0", "--model", "nope_t9"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--runs 0 must be at least 1" in err and "unknown model(s) nope_t9" in err


def test_without_the_default_commit_it_says_skipped(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(vs, "ROOT", tmp_path)  # not a git repository
    assert vs.main([]) == 0
    assert "skipped" in capsys.readouterr().out
    assert vs.main(["--commit", "HEAD"]) == 2  # an explicit commit that is not there is an error


@pytest.mark.slow
@pytest.mark.skipif(not HAS_HISTORY, reason="needs the repository's git history")
def test_earlier_side_imports_the_extracted_commit(capsys):
    rc = vs.main(["--commit", "HEAD", "--then-recipe", "project", "--size", "32", "--batch", "2",
                  "--runs", "2", "--warmup", "0"])
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = [ln for ln in out.splitlines() if ln.startswith("| ") and "---" not in ln and "side" not in ln]
    assert len(rows) == 2
    then, now = rows
    # the earlier side's package is the temporary checkout, this tree's the repository's own
    assert "| temporary checkout |" in then and "| this repository |" in now
    assert "Speed-up of this tree over" in out
