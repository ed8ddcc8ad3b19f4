"""One module per CLI subcommand: ``register(parser)`` adds arguments and sets ``func``."""
