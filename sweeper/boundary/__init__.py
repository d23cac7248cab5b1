"""The one reader of anything recorded (a study's attributes, MLflow params, tags and artifacts,
checkpoints): parse with limits, resolve once, check, and build exactly what was checked."""
