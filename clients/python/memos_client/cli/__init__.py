"""memosctl, the command line: `main` is the console script; each command group is a module of this package."""

from memos_client.cli.app import COMMANDS, build_parser, main

__all__ = ["COMMANDS", "build_parser", "main"]
