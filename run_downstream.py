"""Train and test one SUPERB downstream task on an upstream through an interface.

    python run_downstream.py                                   # the offline demo (tiny upstream, mini corpus, PR)
    python run_downstream.py upstream=s3prl upstream.name=hubert task=pr \
        task.data_root=/data/LibriSpeech interface=hconv       # the SUPERB PR recipe
    python run_downstream.py -m interface=weighted_sum,hconv,cls_pooling   # a sweep, one job per interface

See README.md for every config group and option.
"""

from __future__ import annotations

import os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

os.environ.setdefault("SSL_BENCH_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(config_path="configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from downstream.runner import run_experiment

    hydra_config = HydraConfig.get()
    run_experiment(cfg, hydra_config.runtime.output_dir, overrides=list(hydra_config.overrides.task))


if __name__ == "__main__":
    main()
