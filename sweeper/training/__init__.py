"""Training: the one-trial trainer, fused trials, checkpoints, the weights a run keeps, lr_find.
The modules that import torch at their top; `engine` is the default `sweep.trainer`. This
package's own import loads nothing, so the sweep's process can read a checkpoint setting
without torch."""
