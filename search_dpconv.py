"""DPConv split-ratio search: `python search_dpconv.py [group=option ...] [key=value ...]`.

Same config groups as train.py plus search/ (conf/search/default.yaml). Writes ratios.yaml and
ratios.png into the run dir; retrain the searched architecture with
  python train.py model=<same model> model.ratios=<run dir>/ratios.yaml
Examples:
  python search_dpconv.py model=partialnet_t0 data=imagenet_folder data.root=/data/in1k search.flops_target=0.24
  python search_dpconv.py -m search.flops_ratio=0.95,1.0,1.2       # one ratios.yaml per job
"""
import hydra
from omegaconf import DictConfig

from partialnet.utils.cli import run_cli
from partialnet.utils.rundir import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="search")
def main(cfg: DictConfig) -> float | None:
    from partialnet.search.search_task import search

    metrics = search(cfg)
    return metrics.get("val/acc1")


if __name__ == "__main__":
    run_cli(main)
