"""``handler-consul``: the command-line front end (see main.py for the usage)."""

from handler_consul.cli.main import main

__all__ = ["main"]
