"""The baseline of bench_end_to_end.py: a Hydra app whose trials only sleep (sleep_trials), swept
by the real hydra-optuna-sweeper with Hydra's joblib launcher. It runs in its own virtual
environment (optuna<3, which that sweeper needs), made by bench_end_to_end.py:

    VENV/bin/python scripts/hydra_sleep_app.py --multirun hydra/sweeper=optuna hydra/launcher=joblib \
        hydra.sweeper.n_trials=16 hydra.sweeper.n_jobs=4 hydra.launcher.n_jobs=4 \
        'lr=tag(log, interval(1e-5, 1e-1))' 'shape=choice(one_cycle, flat_cos)'

The sweeper asks n_jobs trials, the launcher runs them as one batch and the sweeper waits for the
slowest before it tells Optuna and asks the next batch. BENCH_E2E_WORK names the work folder.
"""

from __future__ import annotations

from dataclasses import dataclass

import hydra
from hydra.core.config_store import ConfigStore
from sleep_trials import objective, sleep_trial


@dataclass
class SleepConfig:
    lr: float = 1e-3
    shape: str = "one_cycle"
    pct_start: float = 0.25
    epochs: int = 6


ConfigStore.instance().store(name="sleep", node=SleepConfig)


@hydra.main(version_base="1.3", config_path=None, config_name="sleep")
def main(cfg: SleepConfig) -> float:
    sleep_trial(cfg.epochs)
    return objective(cfg.lr)


if __name__ == "__main__":
    main()
