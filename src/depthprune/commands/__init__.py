"""CLI commands: each module has ``register(subparsers)`` that adds a parser whose ``func(args)`` runs it."""
