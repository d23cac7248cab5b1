"""A sweep: its search space, its study (Optuna), its identity, its worker processes and the
launchers that start them. The sweep's own process imports no torch."""
