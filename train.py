"""Train a model: `python train.py [group=option ...] [key=value ...]`.

With no arguments this is the demo (PartialNet-T0 on Fashion-MNIST, CPU-friendly).
Examples:
  python train.py experiment=partialnet_t0 data.root=/data/imagenet trainer.devices=8
  python train.py -m model.split_ratio=0.5,0.25,0.125
  python train.py model=partialnet_t0 model.ratios=outputs/search/.../ratios.yaml
  python train.py data=cifar10 model.init_from=outputs/train/runs/<run>/checkpoints/last.ckpt   # fine-tune
  python train.py -m hparams_search=optuna hydra.sweeper.n_trials=20                          # Bayesian sweep
"""
import hydra
from omegaconf import DictConfig

from partialnet.utils.cli import run_cli
from partialnet.utils.rundir import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from partialnet.training.train_task import train

    metrics = train(cfg)
    return metrics.get("val/acc1")


if __name__ == "__main__":
    run_cli(main)
