"""ConsulSettings: configuration from the environment, with Consul's own variables understood.

Precedence, highest first, decided per field:

1. the mapping given to ``initialize()`` (or keyword arguments to ``ConsulSettings``);
2. ``CONSUL_HOST``, ``CONSUL_PORT``, ``CONSUL_SCHEME``, ``CONSUL_TOKEN`` and the other
   ``CONSUL_*`` names of the contract;
3. Consul's own ``CONSUL_HTTP_ADDR``, ``CONSUL_HTTP_TOKEN``, ``CONSUL_HTTP_TOKEN_FILE``,
   ``CONSUL_HTTP_SSL``;
4. the defaults.

A token and a token file, and a TCP address and a unix socket, are alternatives: the highest
level that gives one of a pair decides it. :mod:`handler_consul._settings_env` merges the
levels and keeps where each value came from, so a bad value is reported with the variable or
key that set it. python-consul2 reads the same variables in its constructor and lets them
win; :mod:`handler_consul._client` never runs that constructor, so what is resolved here is
what is used.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from handler_consul._check_policy import CheckPolicy
from handler_consul._errors import InfraConfigurationError
from handler_consul._settings_env import (
    canonical,
    configuration_error,
    drop_alternatives,
    initialize_origin,
    leaf_paths,
    origin_of,
    resolve,
    source_error,
    validation_error,
)
from handler_consul._settings_parts import (
    BreakerSettings,
    CacheSettings,
    CheckSettings,
    LongPollSettings,
    MaintainSettings,
    RetrySettings,
)
from handler_consul._validation import DATACENTER

__all__ = [
    "BreakerSettings",
    "CacheSettings",
    "CheckSettings",
    "ConsulSettings",
    "LongPollSettings",
    "MaintainSettings",
    "RetrySettings",
    "is_header_safe_token",
    "load_settings",
]

# A host is a DNS name or an IP literal: nothing that could carry a path, a query, user
# info or a second authority into the base URL.
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)
_TOKEN = re.compile(r"[\x21-\x7e]+")
# AF_UNIX paths are at most 107 bytes on Linux (108 with the terminating NUL).
_UNIX_PATH_MAX = 107


def is_header_safe_token(value: str) -> bool:
    """Consul's tokens are printable ASCII; anything else could not travel in a header."""
    return _TOKEN.fullmatch(value) is not None


def _plain_host(value: str) -> str:
    value = value.strip()
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _HOSTNAME.fullmatch(value):
            raise ValueError("must be a DNS name or an IP address, nothing more") from None
    return value


def _optional_text(value: object) -> object:
    """An empty value (``CONSUL_CAPATH=``) means unset."""
    if isinstance(value, str) and not value.strip():
        return None
    return value


class ConsulSettings(BaseSettings):
    """Everything the handler needs to reach Consul; every field can come from ``CONSUL_*``."""

    model_config = SettingsConfigDict(
        env_prefix="CONSUL_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        case_sensitive=False,
        validate_by_name=True,
        validate_by_alias=True,
        # A bad value is never echoed in the error: it may be the token.
        hide_input_in_errors=True,
    )

    host: str = "localhost"
    port: int = Field(8500, ge=1, le=65535)
    scheme: Literal["http", "https"] = "http"
    unix_socket: str | None = Field(
        None, description="Path of the agent's HTTP unix socket; used instead of host and port."
    )
    token: SecretStr | None = None
    token_file: str | None = Field(
        None, description="A file holding the token, read by every initialize()."
    )
    timeout_seconds: float = Field(30.0, gt=0, le=3600, validation_alias="CONSUL_TIMEOUT")
    datacenter: str | None = None
    io: Literal["threads", "asyncio"] = Field(
        "threads",
        description="How calls run: worker threads over a blocking transport, or coroutines "
        "on the event loop over an asyncio one (docs/patterns/io_modes.md).",
    )
    max_concurrent_operations: int = Field(10, ge=1, le=100)
    max_wait_seconds: float | None = Field(
        None,
        gt=0,
        le=3600,
        description="Longest wait for a pool slot; defaults to timeout_seconds.",
    )
    max_queued_operations: int = Field(
        10_000,
        ge=1,
        description="Envelopes allowed to wait for a slot before new ones are refused.",
    )
    max_response_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        le=2**40,
        description="Largest answer body read from Consul; a larger one is refused unread.",
    )
    shutdown_grace_seconds: float = Field(5.0, ge=0, le=3600)
    cacert: str | None = None
    capath: str | None = Field(None, description="A directory of CA certificates.")
    client_cert: str | None = None
    client_key: str | None = None
    tls_server_name: str | None = Field(
        None, description="The name sent as SNI and verified in the certificate, not host."
    )
    verify_tls: bool = Field(True, validation_alias="CONSUL_HTTP_SSL_VERIFY")
    retry: RetrySettings = RetrySettings()
    breaker: BreakerSettings = BreakerSettings()
    checks: CheckSettings = CheckSettings()
    long_poll: LongPollSettings = LongPollSettings()
    cache: CacheSettings = CacheSettings()
    maintain: MaintainSettings = MaintainSettings()

    # Where each value was set ("environment variable CONSUL_PORT"), by dotted path.
    _origins: dict[str, str] = PrivateAttr(default_factory=dict)

    def __init__(self, **values: Any) -> None:
        """Bad settings raise InfraConfigurationError naming the field and where it was set.

        Not pydantic's ValidationError: for a model-level rule its ``errors()`` carry the
        whole raw input, token included. Raised outside the ``except`` so nothing is chained.
        ``load_settings`` passes the origins of its values under the private ``_origins`` key.
        """
        given: dict[str, str] | None = values.pop("_origins", None)
        error: InfraConfigurationError | None = None
        origins: dict[str, str] = {}
        try:
            resolved = resolve(type(self), values, given)
            origins = resolved.origins
            if resolved.conflict is not None:
                field, reason = resolved.conflict
                error = configuration_error(field, None, reason)
            else:
                super().__init__(**resolved.values)
        except ValidationError as exc:
            error = validation_error(exc, type(self), origins)
        except SettingsError as exc:
            error = source_error(exc)
        if error is None:
            self._origins = origins
            error = self._cross_field_error()
        if error is not None:
            raise error

    def _cross_field_error(self) -> InfraConfigurationError | None:
        if self.unix_socket is not None and self.scheme == "https":
            return configuration_error(
                "unix_socket",
                self.origin("unix_socket"),
                "a unix socket carries plain HTTP, and scheme is 'https' "
                f"(from {self.origin('scheme') or 'the default'})",
            )
        return None

    def origin(self, path: str) -> str | None:
        """Where the value of ``path`` was set (None for a default)."""
        return origin_of(self._origins, path)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment levels are read and merged by __init__ (see _settings_env), which
        # hands the result over as init values.
        return (init_settings,)

    @field_validator("host")
    @classmethod
    def _host_is_plain(cls, value: str) -> str:
        return _plain_host(value)

    @field_validator("tls_server_name", mode="before")
    @classmethod
    def _server_name_is_plain(cls, value: object) -> object:
        value = _optional_text(value)
        return _plain_host(value) if isinstance(value, str) else value

    @field_validator("token_file", "capath", mode="before")
    @classmethod
    def _empty_path_is_unset(cls, value: object) -> object:
        return _optional_text(value)

    @field_validator("unix_socket", mode="before")
    @classmethod
    def _unix_socket_path(cls, value: object) -> object:
        value = _optional_text(value)
        if not isinstance(value, str):
            return value
        path = value.strip().removeprefix("unix://")
        if not path.startswith("/") or "\x00" in path:
            raise ValueError("must be an absolute path (unix:///path/consul.sock or /path)")
        if len(os.fsencode(path)) > _UNIX_PATH_MAX:
            raise ValueError(f"is longer than a unix socket path may be ({_UNIX_PATH_MAX} bytes)")
        return path

    @field_validator("scheme", "io", mode="before")
    @classmethod
    def _scheme_lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("datacenter")
    @classmethod
    def _datacenter_name(cls, value: str | None) -> str | None:
        if value is not None and not DATACENTER.fullmatch(value):
            raise ValueError("must be 1-64 letters, digits, '-' or '_'")
        return value

    @field_validator("token")
    @classmethod
    def _token_is_header_safe(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        # Consul's tokens are printable ASCII. Anything else could not travel in a header
        # (http.client would fail in the worker, holding the token in the error) or is a
        # mistake; the message must not echo the value: it is a secret.
        if not is_header_safe_token(value.get_secret_value()):
            raise ValueError("must be printable ASCII without spaces")
        return value

    @field_validator("client_key")
    @classmethod
    def _key_needs_cert(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value and not info.data.get("client_cert"):
            raise ValueError("is set without client_cert")
        return value

    @property
    def effective_max_wait_seconds(self) -> float:
        """The bound on waiting for a pool slot."""
        return self.timeout_seconds if self.max_wait_seconds is None else self.max_wait_seconds

    @property
    def breaker_name(self) -> str:
        return f"consul.{self.datacenter or 'default'}"

    @property
    def base_url(self) -> str:
        """Where requests go: ``http://host:port``, or ``unix:///path`` for a unix socket."""
        if self.unix_socket is not None:
            return f"unix://{self.unix_socket}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def check_policy(self) -> CheckPolicy:
        """The check-target rules payload validation applies (see CheckSettings)."""
        return CheckPolicy(
            consul_host=self.host,
            consul_port=self.port,
            allowed_methods=frozenset(self.checks.allowed_methods),
            allow_consul_api=self.checks.allow_consul_api,
        )

    def public_dict(self) -> dict[str, Any]:
        """The settings without secrets, for describe() and logs."""
        data = self.model_dump(mode="json", exclude={"token"})
        # The token file's path is no secret, unless the token itself was set as the path
        # (it then has no '/'); what the file holds is never read here.
        if self.token_file is not None and "/" not in self.token_file:
            data["token_file"] = "(set)"  # noqa: S105 - a placeholder, not a password
        data["token_configured"] = self.token is not None or self.token_file is not None
        return data


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_settings(
    base: ConsulSettings | None = None, overrides: Mapping[str, Any] | None = None
) -> ConsulSettings:
    """Build settings for ``initialize()``: ``base`` (or the environment) plus ``overrides``.

    Errors name the initialize() key of a bad override; the base keeps its own origins.
    """
    overrides = canonical(ConsulSettings, dict(overrides or {}))
    origins = {path: initialize_origin(path) for path in leaf_paths(overrides)}
    if base is None:
        return ConsulSettings(**overrides, _origins=origins)
    if not overrides:
        return base
    # Unset fields are dumped with their defaults: a base on a unix socket has no address
    # of its own, and an override chooses between a pair's alternatives for both levels.
    exclude = {"host", "port"} if base.unix_socket is not None else set()
    kept = drop_alternatives(overrides, base.model_dump(exclude=exclude))
    return ConsulSettings(**_deep_merge(kept, overrides), _origins={**base._origins, **origins})
