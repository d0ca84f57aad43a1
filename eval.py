"""Evaluate a checkpoint: `python eval.py ckpt=PATH [data=...]`.

Prints top-1/top-5, params, MACs (the papers' FLOPs), throughput and latency as a table and
writes eval.json beside the checkpoint.
"""
import hydra
from omegaconf import DictConfig

from partialnet.utils.cli import run_cli
from partialnet.utils.rundir import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    from partialnet.training.eval_task import evaluate

    evaluate(cfg)


if __name__ == "__main__":
    run_cli(main)
