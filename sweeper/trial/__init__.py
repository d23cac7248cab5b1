"""The trial boundary: what a trainer is given (a trial spec, its schedule of lrs and momenta) and what
it says back (events, a result), with the hooks and listeners that hear it. No torch, no Optuna,
no MLflow: the sweep, the records and the trainer all meet here."""
