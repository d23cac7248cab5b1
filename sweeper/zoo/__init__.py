"""Built-in models and data (no downloads), how a model splits into layer groups, and what a trial
learns (the task's loss and metrics). Each module imports torch; this package's own import does
not."""
