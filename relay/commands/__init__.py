"""Subcommands of the `relay` CLI.

Each module here defines ``register(subparsers)``, which adds one or more subcommands and sets
``func`` (taking the parsed ``argparse.Namespace`` and returning an exit code) on each parser.
`relay.cli` discovers the modules, so adding a command never edits a shared file.
"""
