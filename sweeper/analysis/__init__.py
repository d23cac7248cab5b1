"""What a sweep's records say: the report, confirmations and ablations, reruns, the MLflow UI
link. Reads the study and the runs; nothing below imports it."""
