"""MLflow: the store and its settings, what a run records, one run's recorder and a sweep's runs
(parent and children). Hears the trial's events; knows nothing of Optuna's study or the report."""
