"""sweeper: sweeps over fastai-style learning-rate slices and one-cycle shapes."""

__version__ = "0.1.0"
