"""Learning rates in space and time: slices (an lr per layer group) and shapes (an lr over the
steps of training), as fastai and torch define them, and their plots. Pure values: no torch, no
config, nothing above this package."""
