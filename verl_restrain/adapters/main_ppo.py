"""``python -m verl_restrain.adapters.main_ppo``: verl's ``main_ppo`` with ``restrain_trainer.yaml`` as its config.

It is the stock command with the config path filled in,

    python -m verl.trainer.main_ppo --config-path=<verl_restrain/config> --config-name=restrain_trainer ...

plus the RESTRAIN startup checks run once more in the driver, before Ray starts (the ``restrain``
trainer runs them again in its own process). Everything else is verl's ``main``.
"""

from __future__ import annotations

import hydra
from verl.trainer import main_ppo as verl_main_ppo

from verl_restrain.adapters.checks import validate_training_config
from verl_restrain.adapters.settings import ESTIMATOR_NAME
from verl_restrain.config import CONFIG_DIR


@hydra.main(config_path=CONFIG_DIR, config_name="restrain_trainer", version_base=None)
def main(config) -> None:
    if config.algorithm.adv_estimator == ESTIMATOR_NAME:
        validate_training_config(config)
    verl_main_ppo.main(config)


if __name__ == "__main__":
    main()
