"""``handler-consul kv get | put | delete``: Consul's ``consul kv`` commands over the handler.

They run the ``consul.kv_get`` / ``consul.kv_put`` / ``consul.kv_delete`` operations through
``HandlerConsul.execute`` (validation, breaker, retries, deadline). Output follows ``consul
kv``: the value as stored, ``Success! ...`` lines, ``Error! ...`` on stderr.
"""

from __future__ import annotations

import argparse
import base64
import sys
from collections.abc import Mapping
from typing import Any

from handler_consul.cli.common import (
    Failure,
    execute_once,
)
from handler_consul.cli.output import (
    EXIT_FAILED,
    EXIT_OK,
    UsageError,
    emit,
    say,
    wants_json,
    warn,
    write_bytes,
)


def _stored(value: str | None, encoding: str | None) -> bytes:
    """The bytes Consul holds: kv_get gives text, or base64 when they are not UTF-8."""
    if value is None:
        return b""
    return base64.b64decode(value) if encoding == "base64" else value.encode("utf-8")


# -- get -------------------------------------------------------------------------------------


def _get_payload(args: argparse.Namespace) -> dict[str, Any]:
    payload: dict[str, Any] = {"key": args.key}
    if args.separator is not None and not args.keys:
        raise UsageError("--separator goes with --keys")
    if args.recurse:
        payload["recurse"] = True
    if args.keys:
        payload["keys_only"] = True
        separator = "/" if args.separator is None else args.separator
        if separator:  # '' lists every key: no separator at all
            payload["separator"] = separator
    return payload


async def cmd_kv_get(args: argparse.Namespace, config: Mapping[str, Any]) -> int:
    # The value itself unless --format json, also in a pipe: see the parser.
    as_json = args.format == "json"
    outcome = await execute_once(
        config, {"operation": "consul.kv_get", "payload": _get_payload(args)}
    )
    if isinstance(outcome, Failure):
        return outcome.report(as_json=as_json)
    result = outcome.result
    missing = not args.recurse and not args.keys and not result["found"]
    if as_json:
        emit(result)
    elif args.keys:
        for key in result["keys"]:
            say(key)
    elif args.recurse:
        for item in result["items"]:
            write_bytes(
                item["key"].encode("utf-8")
                + b":"
                + _stored(item["value"], item["encoding"])
                + b"\n"
            )
    elif not missing:
        write_bytes(_stored(result["value"], result["encoding"]) + b"\n")
    if missing:
        warn(f"Error! No key exists at: {args.key}")  # consul kv get's words, and its exit 1
        return EXIT_FAILED
    return EXIT_OK


# -- put -------------------------------------------------------------------------------------


def _put_payload(args: argparse.Namespace) -> dict[str, Any]:
    payload: dict[str, Any] = {"key": args.key}
    if args.value == "-":
        data = sys.stdin.buffer.read()
        try:
            payload["value"] = data.decode("utf-8")
        except UnicodeDecodeError:
            # Stored as read: the handler decodes base64 back into these bytes.
            payload["value"] = base64.b64encode(data).decode("ascii")
            payload["encoding"] = "base64"
    else:
        payload["value"] = args.value
    if args.cas is not None:
        payload["cas"] = args.cas
    if args.flags is not None:
        payload["flags"] = args.flags
    return payload


async def cmd_kv_put(args: argparse.Namespace, config: Mapping[str, Any]) -> int:
    as_json = wants_json(args.format)
    outcome = await execute_once(
        config, {"operation": "consul.kv_put", "payload": _put_payload(args)}
    )
    if isinstance(outcome, Failure):
        return outcome.report(as_json=as_json)
    result = outcome.result
    if as_json:
        emit(result)
    elif result["applied"]:
        say(f"Success! Data written to: {args.key}")
    if not result["applied"]:
        warn(f"Error! Did not write to {args.key}: CAS failed")
        return EXIT_FAILED
    return EXIT_OK


# -- delete ----------------------------------------------------------------------------------


async def cmd_kv_delete(args: argparse.Namespace, config: Mapping[str, Any]) -> int:
    """``consul.kv_delete`` through ``HandlerConsul.execute``, like ``get`` and ``put``."""
    as_json = wants_json(args.format)
    key, recurse = args.key, bool(args.recurse)
    if not key:
        # With --recurse an empty prefix is every key in the datacenter: not from a shell.
        raise UsageError("kv delete needs a KEY")
    payload: dict[str, Any] = {"key": key, "recurse": recurse}
    if args.cas is not None:
        payload["cas"] = args.cas
    outcome = await execute_once(config, {"operation": "consul.kv_delete", "payload": payload})
    if isinstance(outcome, Failure):
        return outcome.report(as_json=as_json)
    deleted = outcome.result["deleted"] is True
    if as_json:
        emit({"key": key, "recurse": recurse, "deleted": deleted})
    elif deleted:
        say(f"Success! Deleted {'keys with prefix' if recurse else 'key'}: {key}")
    if not deleted:
        warn(f"Error! Did not delete {key}: CAS failed")
        return EXIT_FAILED
    return EXIT_OK
