"""One module per `sweeper` subcommand: `add_arguments(parser)` and `run(args) -> exit code`."""
