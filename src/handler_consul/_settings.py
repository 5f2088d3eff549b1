"""ConsulSettings: configuration from the environment, with Consul's own variables understood.

Precedence, highest first, decided per field:

1. the mapping given to ``initialize()`` (or keyword arguments to ``ConsulSettings``);
2. ``CONSUL_HOST``, ``CONSUL_PORT``, ``CONSUL_SCHEME``, ``CONSUL_TOKEN`` and the other
   ``CONSUL_*`` names of the contract;
3. Consul's own ``CONSUL_HTTP_ADDR``, ``CONSUL_HTTP_TOKEN``, ``CONSUL_HTTP_SSL``;
4. the defaults.

Level 3 is a settings source of its own placed below the environment source, so pydantic's
merge gives that order without any special-casing. python-consul2 reads the same variables
in its constructor and lets them win; :mod:`handler_consul._client` never runs that
constructor, so what is resolved here is what is used.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from handler_consul._errors import ErrorContext, InfraConfigurationError
from handler_consul._validation import CheckPolicy

__all__ = [
    "BreakerSettings",
    "CheckSettings",
    "ConsulSettings",
    "RetrySettings",
    "load_settings",
]

# A host is a DNS name or an IP literal: nothing that could carry a path, a query, user
# info or a second authority into the base URL.
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)
_TOKEN = re.compile(r"[\x21-\x7e]+")
_DATACENTER = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class RetrySettings(BaseModel):
    """Backoff for transient failures; every attempt stays inside the envelope deadline."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_attempts: int = Field(3, ge=1, le=10, description="Total attempts, the first included.")
    initial_delay_seconds: float = Field(0.1, ge=0, le=60)
    max_delay_seconds: float = Field(5.0, ge=0, le=300)
    exponential_base: float = Field(2.0, ge=1, le=10)
    budget_ratio: float = Field(
        0.2, ge=0, le=1, description="Retries allowed per first attempt, over a sliding window."
    )
    budget_min_per_second: float = Field(
        1.0, ge=0, description="Retries always allowed per second, so a quiet handler can retry."
    )


class BreakerSettings(BaseModel):
    """The circuit breaker per datacenter (see docs/patterns/circuit_breaker.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    failure_threshold: int = Field(5, ge=1, le=1000)
    reset_timeout_seconds: float = Field(30.0, gt=0, le=3600)
    half_open_max_calls: int = Field(1, ge=1, le=100)
    slow_call_duration_seconds: float | None = Field(
        None, gt=0, description="Calls slower than this count as failures; off when unset."
    )
    reset_timeout_multiplier: float = Field(
        1.0, ge=1, le=10, description="Each consecutive re-open multiplies the wait by this."
    )
    max_reset_timeout_seconds: float = Field(300.0, gt=0, le=86400)


class CheckSettings(BaseModel):
    """What a registered health check may make the agent do (docs/patterns/security_patterns.md).

    The agent runs HTTP checks itself: a check aimed at the Consul API with PUT could
    deregister services or write keys. The defaults allow neither.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    allowed_methods: frozenset[Literal["GET", "HEAD", "POST", "PUT"]] = Field(
        frozenset({"GET", "HEAD"}), min_length=1, description="HTTP methods a check may use."
    )
    allow_consul_api: bool = Field(
        False, description="Let checks target /v1/... paths or the Consul agent's own address."
    )


class _ConsulHttpEnvSource(PydanticBaseSettingsSource):
    """Consul's own variables, below the ``CONSUL_*`` names of the contract."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        # Unused: __call__ builds the whole mapping at once.
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        addr = os.environ.get("CONSUL_HTTP_ADDR", "").strip()
        if addr:
            values.update(_parse_http_addr(addr))
        token = os.environ.get("CONSUL_HTTP_TOKEN")
        if token:
            values["token"] = token
        ssl = os.environ.get("CONSUL_HTTP_SSL", "").strip().lower()
        if ssl in {"1", "true", "yes", "on"}:
            values["scheme"] = "https"
        elif ssl in {"0", "false", "no", "off"} and "scheme" not in values:
            values["scheme"] = "http"
        return values


def _parse_http_addr(addr: str) -> dict[str, Any]:
    """``host:port``, ``scheme://host:port`` or ``unix://`` (refused) as Consul's CLI accepts."""
    values: dict[str, Any] = {}
    rest = addr
    if "://" in addr:
        scheme, rest = addr.split("://", 1)
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
    token: SecretStr | None = None
    timeout_seconds: float = Field(30.0, gt=0, le=3600, validation_alias="CONSUL_TIMEOUT")
    datacenter: str | None = None
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
    client_cert: str | None = None
    client_key: str | None = None
    verify_tls: bool = Field(True, validation_alias="CONSUL_HTTP_SSL_VERIFY")
    retry: RetrySettings = RetrySettings()
    breaker: BreakerSettings = BreakerSettings()
    checks: CheckSettings = CheckSettings()

    def __init__(self, **values: Any) -> None:
        """Bad settings raise InfraConfigurationError naming the field.

        Not pydantic's ValidationError: for a model-level rule its ``errors()`` carry the
        whole raw input, token included. Raised outside the ``except`` so nothing is chained.
        """
        try:
            super().__init__(**values)
        except ValidationError as exc:
            error = _configuration_error(exc)
        except SettingsError as exc:
            error = _source_error(exc)
        else:
            return
        raise error

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _ConsulHttpEnvSource(settings_cls))

    @field_validator("host")
    @classmethod
    def _host_is_plain(cls, value: str) -> str:
        value = value.strip()
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if not _HOSTNAME.fullmatch(value):
                raise ValueError("must be a DNS name or an IP address, nothing more") from None
        return value

    @field_validator("scheme", mode="before")
    @classmethod
    def _scheme_lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("datacenter")
    @classmethod
    def _datacenter_name(cls, value: str | None) -> str | None:
        if value is not None and not _DATACENTER.fullmatch(value):
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
        if not _TOKEN.fullmatch(value.get_secret_value()):
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
        data["token_configured"] = self.token is not None
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
    """Build settings for ``initialize()``: ``base`` (or the environment) plus ``overrides``."""
    overrides = dict(overrides or {})
    if base is None:
        return ConsulSettings(**overrides)
    if not overrides:
        return base
    return ConsulSettings(**_deep_merge(base.model_dump(), overrides))


_ALIASES = {"CONSUL_TIMEOUT": "timeout_seconds", "CONSUL_HTTP_SSL_VERIFY": "verify_tls"}


def _source_error(exc: SettingsError) -> InfraConfigurationError:
    """A variable pydantic-settings could not parse (CONSUL_RETRY='{not json'): name it.

    pydantic-settings says 'error parsing value for field "retry" from source ...'; the raw
    value is in the chained cause and is not carried along.
    """
    match = re.search(r'field "([^"]+)"', str(exc))
    field = match.group(1) if match else "settings"
    variable = f"CONSUL_{field.upper()}"
    return InfraConfigurationError(
        f"invalid Consul setting {field!r}: environment variable {variable} "
        "could not be parsed (it must be JSON)",
        context=ErrorContext(category="configuration", field=field),
    )


def _configuration_error(exc: ValidationError) -> InfraConfigurationError:
    """Name the field and pydantic's reason, never the value: it may be the token."""
    first = exc.errors(include_input=False, include_url=False, include_context=False)[0]
    field = ".".join(str(part) for part in first["loc"]) or "settings"
    field = _ALIASES.get(field, field)
    message = f"invalid Consul setting {field!r}: {first['msg']}"
    return InfraConfigurationError(
        message, context=ErrorContext(category="configuration", field=field)
    )
