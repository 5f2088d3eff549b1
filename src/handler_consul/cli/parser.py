"""The ``handler-consul`` argument parser: every command, its options and its examples.

Only argparse and the version are imported here: ``--help`` and usage errors are answered
before any command module (and so pydantic, python-consul2, requests) is loaded.
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path
from typing import Any

from handler_consul._version import __version__
from handler_consul.cli.output import EXIT_STATUS_HELP, UsageError
from handler_consul.cli.safeparser import SafeParser

# The schema kinds; tests/test_cli_commands.py checks this equals handler_consul._schema.KINDS
# (importing that module here would load pydantic for every --help).
SCHEMA_KINDS = ("envelope", "result", "error", "all")

_RAW = argparse.RawDescriptionHelpFormatter  # keeps the examples' lines as written
_WIDTH = 92

_TOP_EPILOG = f"""\
examples:
  handler-consul kv put config/app/timeout 30
  handler-consul kv get config/app/timeout
  handler-consul kv get --recurse config/app/
  handler-consul services register --name web --port 8080 --tag v1
  handler-consul services list
  echo '{{"operation": "consul.kv_get", "payload": {{"key": "a"}}}}' | handler-consul exec
  handler-consul validate envelopes.jsonl && handler-consul run --file envelopes.jsonl

Consul is found through CONSUL_HOST / CONSUL_PORT (or CONSUL_HTTP_ADDR), the token through
CONSUL_TOKEN / CONSUL_HTTP_TOKEN, CONSUL_TOKEN_FILE / CONSUL_HTTP_TOKEN_FILE or --token-file.
Output is human-readable on a terminal and JSON (one document a line) with --format json or
when stdout is not a terminal; messages, logs and progress go to stderr.
`handler-consul COMMAND --help` shows each command's examples.

{EXIT_STATUS_HELP}
"""


class _RefuseToken(argparse.Action):
    """``--token`` exists only to refuse it without echoing the value."""

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        parser.error(
            "there is no --token option (a token on the command line shows in ps): "
            "set CONSUL_HTTP_TOKEN(_FILE) or CONSUL_TOKEN(_FILE), or use --token-file"
        )


def _add_global_options(
    parser: argparse.ArgumentParser, *, suppress: bool, consul_port: bool = True
) -> None:
    """Connection and logging options, on the main parser and on each command that talks to
    Consul, so they go before or after the command.

    On commands the defaults are SUPPRESS so a value given before the command is not reset by
    the command's default. ``consul_port=False`` leaves out ``--port`` for a command whose own
    ``--port`` means something else (``services register``).
    """

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("connection (override the environment)")
    group.add_argument("--host", default=default(None), help="Consul host (CONSUL_HOST)")
    if consul_port:
        group.add_argument(
            "--port", type=int, default=default(None), help="HTTP port (CONSUL_PORT)"
        )
    group.add_argument(
        "--scheme", choices=("http", "https"), default=default(None), help="(CONSUL_SCHEME)"
    )
    group.add_argument(
        "--timeout",
        type=float,
        default=default(None),
        metavar="SECONDS",
        help="per request and default envelope deadline (CONSUL_TIMEOUT)",
    )
    group.add_argument("--datacenter", default=default(None), help="(CONSUL_DATACENTER)")
    group.add_argument(
        "--token-file",
        type=Path,
        default=default(None),
        metavar="PATH",
        help="read the ACL token from this file; otherwise the CONSUL_(HTTP_)TOKEN(_FILE) "
        "variables. "
        "There is no --token: it would show in ps.",
    )
    group.add_argument("--token", action=_RefuseToken, nargs="?", help=argparse.SUPPRESS)
    logs = parser.add_argument_group("logging (to stderr)")
    logs.add_argument(
        "--log-level",
        default=default("WARNING"),
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
    )
    logs.add_argument("--log-format", default=default("text"), choices=("text", "json"))


def _add_format(parser: argparse.ArgumentParser, default_text: str | None = None) -> None:
    parser.add_argument(
        "--format",
        choices=("text", "json"),
        default=None,
        help=default_text
        or "text (human-readable) or json; default: text on a terminal, json otherwise",
    )


class _Commands:
    """Adds commands to one subparsers action, each with a description and examples."""

    def __init__(self, parent: argparse.ArgumentParser, dest: str, metavar: str) -> None:
        self._sub = parent.add_subparsers(dest=dest, required=True, metavar=metavar)

    def add(
        self,
        name: str,
        help_text: str,
        examples: str,
        *,
        connects: bool = True,
        consul_port: bool = True,
    ) -> argparse.ArgumentParser:
        parser = self._sub.add_parser(
            name,
            help=help_text,
            description=textwrap.fill(help_text, _WIDTH),
            epilog=f"examples:\n{examples.rstrip()}\n",
            formatter_class=_RAW,
            allow_abbrev=False,
        )
        if connects:
            _add_global_options(parser, suppress=True, consul_port=consul_port)
        return parser


def _kv(commands: _Commands) -> None:
    kv = commands.add(
        "kv",
        "read, write and delete keys (Consul's `consul kv`)",
        "  handler-consul kv put config/app/timeout 30\n"
        "  handler-consul kv get config/app/timeout\n"
        "  handler-consul kv delete config/app/timeout",
        connects=False,
    )
    sub = _Commands(kv, "kv_command", "KV_COMMAND")

    p = sub.add(
        "get",
        "print a key's value (exit 1 when the key does not exist), or with --recurse every "
        "key:value under a prefix, or with --keys the key names",
        "  handler-consul kv get config/app/timeout             # the value, as stored\n"
        "  handler-consul kv get --recurse config/app/          # key:value lines\n"
        "  handler-consul kv get --keys config/                 # names, up to the next /\n"
        "  handler-consul kv get --keys --separator '' config/  # every key name\n"
        "  handler-consul kv get --format json config/app/timeout  # value, flags, indexes\n"
        "  timeout=$(handler-consul kv get config/app/timeout) || echo missing",
    )
    p.add_argument("key", metavar="KEY", nargs="?", default="", help="the key or prefix")
    modes = p.add_mutually_exclusive_group()
    modes.add_argument("--recurse", action="store_true", help="every key under the prefix KEY")
    modes.add_argument("--keys", action="store_true", help="key names only, under KEY")
    p.add_argument(
        "--separator",
        default=None,
        metavar="SEP",
        help="with --keys: list names only up to the next SEP (default '/'; '' for all keys)",
    )
    # Unlike the other commands, the value itself is the default even in a pipe, as with
    # `consul kv get`: `x=$(handler-consul kv get k)` is the common script.
    _add_format(p, "text (the value as stored, the default also in a pipe) or json")

    p = sub.add(
        "put",
        "write a key (VALUE - reads stdin); exit 1 when a --cas write was not applied",
        "  handler-consul kv put config/app/timeout 30\n"
        "  handler-consul kv put config/app/cert - < cert.pem\n"
        "  handler-consul kv put --cas 0 locks/leader node-1   # only if the key is absent\n"
        "  handler-consul kv put --cas 42 config/app/timeout 45  # only if modify_index is 42\n"
        "  handler-consul kv put config/app/args -- --verbose  # a value that starts with -",
    )
    p.add_argument("key", metavar="KEY")
    p.add_argument("value", metavar="VALUE", help="the value; - to read it from stdin")
    p.add_argument(
        "--cas", type=int, metavar="N", help="write only if the key's modify_index is N (0: new)"
    )
    p.add_argument("--flags", type=int, metavar="N", help="opaque unsigned integer to store")
    _add_format(p)

    p = sub.add(
        "delete",
        "delete a key, or with --recurse every key under a prefix",
        "  handler-consul kv delete config/app/timeout\n"
        "  handler-consul kv delete --recurse config/app/",
    )
    p.add_argument("key", metavar="KEY")
    p.add_argument("--recurse", action="store_true", help="every key under the prefix KEY")
    p.add_argument(
        "--cas", type=int, metavar="N", help="delete only if the key's modify_index is N (>= 1)"
    )
    _add_format(p)


def _services(commands: _Commands) -> None:
    services = commands.add(
        "services",
        "register, deregister and list services on the local agent (`consul services`)",
        "  handler-consul services register --name web --port 8080\n"
        "  handler-consul services list\n"
        "  handler-consul services deregister web",
        connects=False,
    )
    sub = _Commands(services, "services_command", "SERVICES_COMMAND")

    p = sub.add(
        "register",
        "register a service with the local agent",
        "  handler-consul services register --name web --port 8080\n"
        "  handler-consul services register --name web --id web-1 --address 10.0.0.5 \\\n"
        "      --port 8080 --tag v1 --tag primary --meta version=1.4.2\n"
        "  handler-consul --port 8501 services register --name web --port 8080\n"
        "      # Consul's own port goes before the command (or in CONSUL_PORT): here --port\n"
        "      # is the service's",
        consul_port=False,
    )
    p.add_argument("--name", required=True, help="the service name")
    p.add_argument("--id", dest="service_id", metavar="ID", help="the service ID (default: NAME)")
    p.add_argument("--address", help="an IP address or DNS name (default: the agent's)")
    p.add_argument("--port", dest="service_port", type=int, metavar="PORT", help="the service's")
    p.add_argument(
        "--tag", dest="tags", action="append", default=[], metavar="TAG", help="repeatable"
    )
    p.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE", help="repeatable")
    _add_format(p)

    p = sub.add(
        "deregister",
        "deregister a service by ID; exit 1 when the agent does not know it",
        "  handler-consul services deregister web-1",
    )
    p.add_argument("service_id", metavar="ID")
    _add_format(p)

    p = sub.add(
        "list",
        "list the services registered with the local agent",
        "  handler-consul services list\n"
        "  handler-consul services list --format json | jq -r '.[].id'",
    )
    _add_format(p)


def _envelope_commands(commands: _Commands) -> None:
    p = commands.add(
        "exec",
        "run one envelope; print the response (exit 0) or the error (1; 2 when invalid)",
        '  handler-consul exec \'{"operation": "consul.kv_get", "payload": {"key": "a"}}\'\n'
        '  echo \'{"operation": "consul.kv_get", "payload": {"key": "a"}}\' '
        "| handler-consul exec\n"
        "  handler-consul exec --file envelope.json",
    )
    p.add_argument(
        "envelope",
        nargs="?",
        help="the envelope as JSON; - or nothing reads stdin (when it is not a terminal)",
    )
    p.add_argument("--file", type=Path, help="read the envelope from this file")
    _add_format(p)

    p = commands.add(
        "run",
        "run JSON Lines envelopes; one JSON line out per envelope, in completion order, "
        "each with its input line number; progress on stderr",
        "  handler-consul run --file envelopes.jsonl > results.jsonl\n"
        "  producer | handler-consul run --concurrency 20 | jq -c 'select(.status == \"error\")'\n"
        "  handler-consul run --dry-run --file envelopes.jsonl   # = validate",
    )
    p.add_argument("--file", type=Path, help="read envelopes from this file (default: stdin)")
    p.add_argument(
        "--concurrency",
        type=int,
        default=None,
        metavar="N",
        help="envelopes in flight at once (default: max_concurrent_operations)",
    )
    p.add_argument(
        "--progress-interval",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="off a terminal, a progress line on stderr this often and always at the end "
        "(0: only at the end); on a terminal, a progress bar",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="only validate the envelopes, as `validate` does; nothing is sent",
    )
    _add_format(
        p, "text (one line per envelope) or json; default: text on a terminal, json otherwise"
    )

    p = commands.add(
        "validate",
        "check JSON Lines envelopes without contacting Consul: every invalid line is reported "
        "with its number and field; exit 2 when any is invalid",
        "  handler-consul validate envelopes.jsonl\n"
        "  producer | handler-consul validate -\n"
        "  handler-consul validate --format json envelopes.jsonl | jq '.line'",
    )
    p.add_argument("path", metavar="FILE", help="the JSON Lines file, or - for stdin")
    _add_format(p)


def _other_commands(commands: _Commands) -> None:
    p = commands.add(
        "describe",
        "print the handler's describe() (settings without the token, operations, breakers)",
        "  handler-consul describe\n  handler-consul describe --no-connect",
    )
    p.add_argument(
        "--no-connect", action="store_true", help="do not initialize (no request to Consul)"
    )
    _add_format(p, "how an error is shown: text or json (describe itself is indented JSON)")

    p = commands.add(
        "health",
        "check Consul's leader through the handler; exit 1 when unhealthy",
        "  handler-consul health\n  handler-consul health --format json | jq .latency_ms",
    )
    _add_format(p)

    p = commands.add(
        "schema",
        "print the JSON Schema of envelopes, results and errors (no Consul needed)",
        "  handler-consul schema\n  handler-consul schema --kind envelope > envelope.schema.json",
        connects=False,
    )
    p.add_argument("--kind", choices=SCHEMA_KINDS, default="all")

    commands.add(
        "demo",
        "register, kv_put, kv_get, a refused key, deregister; against the configured Consul, "
        "or a throwaway local agent when none is configured",
        "  handler-consul demo\n  CONSUL_HTTP_ADDR=127.0.0.1:8500 handler-consul demo",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = SafeParser(
        prog="handler-consul",
        # No prefix matching: `--token SECRET` must be an error, not `--token-file SECRET`.
        allow_abbrev=False,
        description=textwrap.fill(
            "Run Consul operations through HandlerConsul from the command line: short "
            "commands in Consul's style (kv, services) and envelopes (exec, run, validate).",
            _WIDTH,
        ),
        epilog=_TOP_EPILOG,
        formatter_class=_RAW,
    )
    parser.add_argument("--version", action="version", version=f"handler-consul {__version__}")
    _add_global_options(parser, suppress=False)
    commands = _Commands(parser, "command", "COMMAND")
    _kv(commands)
    _services(commands)
    _envelope_commands(commands)
    _other_commands(commands)
    return parser


def _read_token(path: Path) -> str:
    # The library's reader: regular files only, opened without blocking, read up to a cap
    # (a FIFO or /dev/zero would hang or exhaust memory), and the same token rules.
    from handler_consul._runtime import read_token_file

    token, problem = read_token_file(str(path))
    if problem is not None or token is None:
        raise UsageError(f"cannot use the --token-file: {problem}")
    return token


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The ``initialize()`` mapping from the command line (only what was given)."""
    config: dict[str, Any] = {}
    for option, key in (
        ("host", "host"),
        ("port", "port"),
        ("scheme", "scheme"),
        ("timeout", "timeout_seconds"),
        ("datacenter", "datacenter"),
    ):
        value = getattr(args, option, None)
        if value is not None:
            config[key] = value
    token_file = getattr(args, "token_file", None)
    if token_file is not None:
        config["token"] = _read_token(token_file)
    return config
