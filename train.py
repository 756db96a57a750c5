"""Train one model from Hydra config: `python train.py [group=option ...] [key=value ...]`."""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import warmup_lab  # noqa: F401  (registers config resolvers)
from warmup_lab.run import run
from warmup_lab.validate import ConfigError


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    run_dir = HydraConfig.get().runtime.output_dir
    try:
        metrics = run(cfg, run_dir)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    acc = metrics.get("final_val_acc")
    print(f"{metrics['status']}: {metrics['steps']} steps, val loss {metrics.get('final_val_loss')}"
          + (f", val acc {acc:.4f}" if acc is not None else "") + f"\nlogs: {run_dir}"
          + f"\nview: tensorboard --logdir {cfg.paths.output_root}")


if __name__ == "__main__":
    main()
