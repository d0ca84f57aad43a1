"""The search's proof in the split+mlp space: ``bench/search_quality.py --space split+mlp``.

    python bench/search_quality_mlp.py            # full default (about 2 h on 2 quiet cores)
    python bench/search_quality_mlp.py --quick    # smoke mode

Same protocol as ``bench/search_quality.py`` (CIFAR-10, PartialNet-T0 small-input stem,
flops_ratio=1.0, a hold-out the search never sees, uniform r=1/4 vs searched vs random arms of
the same MACs, each retrained from scratch over the same seeds), with each block's MLP
expansion ratio searched too (``search.space=split+mlp``, candidates 1, 1.5, 2, 2.5; the
uniform arm keeps the model's own 2). Two searches by default: joint (one batch trains the
weights and the logits) and bilevel with the constraint on the argmax from the first step.
Any other argument goes to ``search_quality.py`` (e.g. ``--search NAME=OVERRIDES``); its own
section in ``bench/RESULTS.md`` comes from ``bench/run_all.py``.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import search_quality  # noqa: E402

SEARCHES = (
    "joint=search.arch_split=0",
    "bilevel 0.2 argmax-only=search.arch_split=0.2 search.argmax_ramp=false",
)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    searches = [] if any(a == "--search" or a.startswith("--search=") for a in argv) else \
        [x for s in SEARCHES for x in ("--search", s)]
    return search_quality.main(["--space", "split+mlp", *searches, *argv])


if __name__ == "__main__":
    sys.exit(main())
