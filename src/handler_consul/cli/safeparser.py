"""argparse, made safe for a command line that may hold a secret by mistake.

Two things argparse does that this CLI must not: echo an argument it did not understand (a
token pasted in the wrong place, ``--to <token>``, shows up in "invalid choice: '<token>'"),
and swallow the error of writing help into a closed pipe (with PYTHONUNBUFFERED the write
fails at once, and argparse would exit 0 instead of 141).
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any, NoReturn

from handler_consul.cli.output import write_text

__all__ = ["SafeParser"]

# Long enough to be a token (a Consul token is a 36-character UUID); command names, flags,
# ports and hosts a user mistypes are shorter, and keep being shown to help fix the typo.
_SECRET_LIKE = 16
_QUOTED = re.compile(r"'([^']*)'")


def _hide(text: str) -> str:
    return "'<hidden>'" if len(text) >= _SECRET_LIKE else f"'{text}'"


class SafeParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors never repeat a long argument, and whose help goes out
    through the CLI's writer."""

    def _print_message(self, message: str, file: Any = None) -> None:
        if message and (file is None or file is sys.stdout):
            write_text(message)
        else:
            super()._print_message(message, file)

    def error(self, message: str) -> NoReturn:
        message = _QUOTED.sub(lambda match: _hide(match.group(1)), message)
        if message.startswith("unrecognized arguments: "):
            words = message.removeprefix("unrecognized arguments: ").split()
            message = "unrecognized arguments: " + " ".join(
                "<hidden>" if len(word) >= _SECRET_LIKE else word for word in words
            )
        super().error(message)
