"""Evaluate checkpoints or models.

  python eval.py ckpt=PATH [data=...]                  # eval.json beside the checkpoint
  python eval.py ckpts=[a.ckpt,b.ckpt] plot=true        # one table, accuracy-vs-throughput plot
  python eval.py models=[partialnet_t0,fasternet_t0]    # random init: speed and MACs only
  python eval.py ckpt=PATH runtime=[eager,onnxruntime,openvino]   # the fused form on each runtime
  python eval.py ckpt=PATH weights=raw                  # the raw weights of an EMA run (default: EMA)

Prints top-1/top-5, params, MACs (the papers' FLOPs), throughput and latency of the eval form
and of the fused form (on each runtime, outputs checked against the model) as a Markdown table;
writes eval.md/.csv/.json (+ eval.png) in the eval run dir. A model that cannot be fused is an
error (fused=false skips the fused form).
"""
from pathlib import Path

import hydra
from omegaconf import DictConfig

from partialnet.utils.cli import run_cli
from partialnet.utils.rundir import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from partialnet.training.eval_task import evaluate

    evaluate(cfg, out_dir=Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    run_cli(main)
