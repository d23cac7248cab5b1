"""Configs: where they are, how they are composed (Hydra), the rules of single settings, and the
one error a mistake raises. The rules of single settings are one table (values.py), checked
wherever a config enters. Imports the schedules (an lr typed the fastai way, a shape's node);
nothing above it."""

from sweeper.config.compose import (
    build_shape,
    check_arguments,
    check_results_dir,
    compose_config,
    config_dir,
    hydra_overrides,
    instantiate_node,
    lr_given,
    parse_override,
    user_config_dirs,
)
from sweeper.config.errors import ConfigError, error_line
from sweeper.config.nodes import plain
from sweeper.config.values import check_values

__all__ = [
    "ConfigError",
    "build_shape",
    "check_arguments",
    "check_results_dir",
    "check_values",
    "compose_config",
    "config_dir",
    "error_line",
    "hydra_overrides",
    "instantiate_node",
    "lr_given",
    "parse_override",
    "plain",
    "user_config_dirs",
]
