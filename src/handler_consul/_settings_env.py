"""Where each setting comes from: the precedence levels, merged, with every value's origin.

Levels, highest first:

1. the values given to ``ConsulSettings(...)``, or by ``initialize()`` (see ``load_settings``);
2. the ``CONSUL_*`` names of the contract (pydantic-settings' environment source);
3. Consul's own variables: ``CONSUL_HTTP_ADDR``, ``CONSUL_HTTP_TOKEN``,
   ``CONSUL_HTTP_TOKEN_FILE``, ``CONSUL_HTTP_SSL``;
4. the defaults (left to the model).

Fields merge one by one, higher level first, except for two pairs of alternatives: a token
or a token file, and a TCP address (host, port) or a unix socket. For those, the highest
level that gives either alternative decides, and lower levels' values of the other one are
dropped: an ``initialize({"token": ...})`` must not end up next to an exported
``CONSUL_HTTP_TOKEN_FILE``. One level giving both is a conflict the caller reports.

Every leaf value keeps its origin ("environment variable CONSUL_HTTP_ADDR", "the
initialize() key 'port'") so a configuration error can name where the bad value was set; the
errors are built here, in one shape. Nothing here reads a file: the runtime does that.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr, ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsError

from handler_consul._errors import ErrorContext, InfraConfigurationError

__all__ = [
    "ALTERNATIVES",
    "Resolved",
    "argument_origin",
    "canonical",
    "canonical_path",
    "configuration_error",
    "drop_alternatives",
    "initialize_origin",
    "leaf_paths",
    "origin_of",
    "parse_http_addr",
    "resolve",
    "source_error",
    "validation_error",
]

# Each group: alternatives of which one level may give only one.
ALTERNATIVES: tuple[tuple[tuple[str, ...], ...], ...] = (
    (("token",), ("token_file",)),
    (("host", "port"), ("unix_socket",)),
)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def initialize_origin(path: str) -> str:
    return f"the initialize() key {path!r}"


def argument_origin(path: str) -> str:
    return f"the ConsulSettings argument {path!r}"


def _env_origin(name: str) -> str:
    return f"environment variable {name}"


@dataclass(frozen=True, slots=True)
class Resolved:
    """The merged values (keys are field names) and where each leaf came from."""

    values: dict[str, Any]
    origins: dict[str, str]
    # (field, message) when one level gives both alternatives of a group.
    conflict: tuple[str, str] | None = None


def _non_empty(value: Any) -> bool:
    """Given: an empty value (``CONSUL_TOKEN=``) leaves the choice to lower levels."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    return value is not None and value != ""


def leaf_paths(values: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    """Dotted paths of the non-mapping values: ``retry.max_attempts``, ``port``."""
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from leaf_paths(value, f"{path}.")
        else:
            yield path


def origin_of(origins: Mapping[str, str], path: str) -> str | None:
    """The origin of ``path`` or of the nearest enclosing path that has one."""
    parts = path.split(".")
    for end in range(len(parts), 0, -1):
        found = origins.get(".".join(parts[:end]))
        if found is not None:
            return found
    return None


def _aliases(settings_cls: type[BaseSettings]) -> dict[str, str]:
    """Validation alias (any case) -> field name, e.g. ``consul_timeout`` -> timeout_seconds."""
    found: dict[str, str] = {}
    for name, field in settings_cls.model_fields.items():
        if isinstance(field.validation_alias, str):
            found[field.validation_alias.lower()] = name
    return found


def canonical(settings_cls: type[BaseSettings], values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` keyed by field names (an alias such as ``CONSUL_TIMEOUT`` is renamed)."""
    aliases = _aliases(settings_cls)
    return {aliases.get(key.lower(), key): value for key, value in values.items()}


def canonical_path(settings_cls: type[BaseSettings], path: str) -> str:
    head, dot, rest = path.partition(".")
    return _aliases(settings_cls).get(head.lower(), head) + dot + rest


def drop_alternatives(higher: Mapping[str, Any], lower: Mapping[str, Any]) -> dict[str, Any]:
    """``lower`` without the alternatives that ``higher`` overrules (see the module doc)."""
    kept = dict(lower)
    for group in ALTERNATIVES:
        chosen = [alt for alt in group if any(_non_empty(higher.get(key)) for key in alt)]
        if not chosen:
            continue
        for alternative in group:
            if alternative not in chosen:
                for key in alternative:
                    kept.pop(key, None)
    return kept


def _conflict(level: Mapping[str, Any], origins: Mapping[str, str]) -> tuple[str, str] | None:
    for group in ALTERNATIVES:
        set_keys = [
            next(key for key in alt if _non_empty(level.get(key)))
            for alt in group
            if any(_non_empty(level.get(key)) for key in alt)
        ]
        if len(set_keys) > 1:
            first, second = set_keys[0], set_keys[1]
            return second, (
                f"{first} (from {origins.get(first, 'settings')}) and {second} "
                f"(from {origins.get(second, 'settings')}) are both set; set only one"
            )
    return None


def _env_level(settings_cls: type[BaseSettings]) -> tuple[dict[str, Any], dict[str, str]]:
    values = canonical(settings_cls, EnvSettingsSource(settings_cls)())
    present = {name.upper() for name in os.environ}
    prefix = str(settings_cls.model_config.get("env_prefix", "")).upper()
    fields = settings_cls.model_fields
    origins: dict[str, str] = {}
    for path in leaf_paths(values):
        head, _, rest = path.partition(".")
        alias = fields[head].validation_alias if head in fields else None
        top = alias.upper() if isinstance(alias, str) else f"{prefix}{head.upper()}"
        nested = f"{top}__{rest.upper().replace('.', '__')}" if rest else ""
        origins[path] = _env_origin(nested if nested in present else top)
    return values, origins


def _consul_level() -> tuple[dict[str, Any], dict[str, str]]:
    """Consul's own variables, as its CLI reads them."""
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}

    def put(key: str, value: Any, variable: str) -> None:
        values[key] = value
        origins[key] = _env_origin(variable)

    addr = os.environ.get("CONSUL_HTTP_ADDR", "").strip()
    if addr:
        for key, value in parse_http_addr(addr).items():
            put(key, value, "CONSUL_HTTP_ADDR")
    for key, variable in (("token", "CONSUL_HTTP_TOKEN"), ("token_file", "CONSUL_HTTP_TOKEN_FILE")):
        found = os.environ.get(variable)
        if found:
            put(key, found, variable)
    ssl = os.environ.get("CONSUL_HTTP_SSL", "").strip().lower()
    if ssl in _TRUE:
        put("scheme", "https", "CONSUL_HTTP_SSL")
    elif ssl in _FALSE and "scheme" not in values:
        put("scheme", "http", "CONSUL_HTTP_SSL")
    return values, origins


def parse_http_addr(addr: str) -> dict[str, Any]:
    """``host:port``, ``scheme://host:port`` or ``unix:///path``, as Consul's CLI accepts."""
    values: dict[str, Any] = {}
    rest = addr
    if "://" in addr:
        scheme, rest = addr.split("://", 1)
        if scheme.lower() == "unix":
            # The path as given: the settings check it (absolute, short enough). An empty one
            # is kept as written, so that it is refused naming the variable rather than
            # silently dropped (which would fall back to localhost:8500).
            return {"unix_socket": rest or addr}
        values["scheme"] = scheme.lower()
    rest = rest.rstrip("/")
    if rest.startswith("["):  # [v6]:port
        host, _, port = rest[1:].partition("]")
        port = port.removeprefix(":")
    elif rest.count(":") == 1:
        host, port = rest.split(":")
    else:
        host, port = rest, ""
    values["host"] = host
    if port:
        values["port"] = port
    elif values.get("scheme") == "https":
        values["port"] = 443
    return values


def _drop_empty(values: Mapping[str, Any]) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            kept[key] = _drop_empty(value)
        elif not (isinstance(value, str | SecretStr) and not _non_empty(value)):
            kept[key] = value
    return kept


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def resolve(
    settings_cls: type[BaseSettings],
    init_values: Mapping[str, Any],
    init_origins: Mapping[str, str] | None = None,
) -> Resolved:
    """The levels merged, highest first; a SettingsError from the environment propagates.

    ``init_origins`` names where level 1's values came from (``load_settings`` passes the
    initialize() keys and the base settings' own origins); without it they are arguments.
    """
    init = canonical(settings_cls, init_values)
    init_labels: dict[str, str] = {}
    for path in leaf_paths(init):
        # With origins given, a path they do not name is a default carried over by a dump.
        label = argument_origin(path) if init_origins is None else origin_of(init_origins, path)
        if label is not None:
            init_labels[path] = label
    levels = [(init, init_labels), _env_level(settings_cls), _consul_level()]
    # Each level loses the alternatives a higher level has chosen.
    trimmed: list[tuple[dict[str, Any], dict[str, str]]] = []
    higher: dict[str, Any] = {}
    conflict: tuple[str, str] | None = None
    for index, (values, origins) in enumerate(levels):
        if index:
            # An empty variable (CONSUL_TOKEN=) sets nothing: a lower level still decides.
            values = _drop_empty(values)
        values = drop_alternatives(higher, values)
        conflict = conflict or _conflict(values, origins)
        trimmed.append((values, origins))
        higher = _merge(values, higher)
    merged: dict[str, Any] = {}
    for values, _ in reversed(trimmed):
        merged = _merge(merged, values)
    # A leaf of the merge is a leaf of the highest level that has it.
    leaves = [(set(leaf_paths(values)), origins) for values, origins in trimmed]
    final: dict[str, str] = {}
    for path in leaf_paths(merged):
        for paths, origins in leaves:
            if path in paths:
                label = origin_of(origins, path)
                if label is not None:
                    final[path] = label
                break
    return Resolved(merged, final, conflict)


# -- errors ----------------------------------------------------------------------------------


def configuration_error(field: str, origin: str | None, reason: str) -> InfraConfigurationError:
    """The one shape of a configuration error: the setting, where it was set, and why."""
    where = f" (from {origin})" if origin else ""
    return InfraConfigurationError(
        f"invalid Consul setting {field!r}{where}: {reason}",
        context=ErrorContext(category="configuration", field=field),
    )


def validation_error(
    exc: ValidationError, settings_cls: type[BaseSettings], origins: Mapping[str, str]
) -> InfraConfigurationError:
    """Name the field, where it was set and pydantic's reason, never the value (the token?)."""
    first = exc.errors(include_input=False, include_url=False, include_context=False)[0]
    field = ".".join(str(part) for part in first["loc"]) or "settings"
    field = canonical_path(settings_cls, field)
    return configuration_error(field, origin_of(origins, field), first["msg"])


def source_error(exc: SettingsError) -> InfraConfigurationError:
    """A variable pydantic-settings could not parse (CONSUL_RETRY='{not json'): name it.

    pydantic-settings says 'error parsing value for field "retry" from source ...'; the raw
    value is in the chained cause and is not carried along.
    """
    match = re.search(r'field "([^"]+)"', str(exc))
    field = match.group(1) if match else "settings"
    return configuration_error(
        field, _env_origin(f"CONSUL_{field.upper()}"), "could not be parsed (it must be JSON)"
    )
