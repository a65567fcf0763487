"""Subcommands of the `priorzero` CLI; each module has `register(app)`."""
