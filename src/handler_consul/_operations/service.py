"""consul.register, consul.deregister and consul.check_update on the local agent.

A registration with ``maintain: true`` is the handler's to keep alive: :func:`serve_register`
registers it, passes its TTL check once, and hands it to the handler's :class:`Maintainer`
(kept in the runtime's state), which passes the check every ttl/3 and restores what the agent
loses; :func:`serve_deregister` ends that upkeep before the service is removed, so a
heartbeat can never bring it back.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Protocol

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from handler_consul._check_policy import DEFAULT_CHECK_POLICY, CheckPolicy
from handler_consul._client import ConsulClient
from handler_consul._errors import InfraUnavailableError
from handler_consul._operations.effects import Effects
from handler_consul._operations.settle import settle
from handler_consul._results import CheckUpdateResult, DeregisterResult, RegisterResult
from handler_consul._validation import (
    AgentCheckId,
    CheckOutput,
    Duration,
    ServiceAddress,
    ServiceId,
    ServiceName,
    Tag,
    Text,
    check_meta,
    duration_seconds,
)

__all__ = [
    "MAINTAINED",
    "MAINTENANCE",
    "CheckUpdatePayload",
    "CheckUpdateResult",
    "DeregisterPayload",
    "DeregisterResult",
    "HealthCheck",
    "Maintainer",
    "RegisterPayload",
    "RegisterResult",
    "ServiceWeights",
    "check_update",
    "deregister",
    "read_registration",
    "register",
    "serve_deregister",
    "serve_register",
]

# Where the handler keeps its Maintainer in the runtime's state.
MAINTENANCE = "maintenance"
MIN_MAINTAINED_TTL_SECONDS = 1.0
# The output of a TTL check the handler passes.
MAINTAINED = "kept passing by handler-consul"

_STRICT = ConfigDict(
    strict=True, frozen=True, extra="forbid", validate_by_name=True, validate_by_alias=True
)
# The reference handler's payloads call the ID ``consul_service_id``; both names are accepted.
_SERVICE_ID_ALIASES = AliasChoices("service_id", "consul_service_id")


class HealthCheck(BaseModel):
    """Exactly one of ttl, http, tcp or grpc; interval is required except for ttl."""

    model_config = _STRICT

    ttl: Duration | None = None
    http: str | None = Field(None, pattern=r"^https?://[^\s]+$", max_length=2048)
    tcp: str | None = Field(None, pattern=r"^[A-Za-z0-9._\-\[\]:]+:[0-9]{1,5}$", max_length=300)
    grpc: str | None = Field(None, pattern=r"^[A-Za-z0-9._\-\[\]:/]+$", max_length=300)
    interval: Duration | None = None
    timeout: Duration | None = None
    deregister_critical_service_after: Duration | None = None
    name: Text | None = Field(None, min_length=1, max_length=128)
    notes: Text | None = Field(None, max_length=1024)
    status: Literal["passing", "warning", "critical"] | None = None
    method: Literal["GET", "HEAD", "POST", "PUT"] | None = None
    tls_skip_verify: bool | None = None
    grpc_use_tls: bool | None = None
    # Declared last so that its validator sees ``http``. Defaults to True for http checks
    # under the default policy (see _redirects_off_by_default).
    disable_redirects: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _redirects_off_by_default(cls, data: Any, info: ValidationInfo) -> Any:
        """A check URL may answer with a redirect to the agent's own API, which Consul would
        follow and whose answer (a KV secret, say) it would publish as the check's output:
        unless the policy allows the Consul API, an http check never follows redirects."""
        if (
            isinstance(data, dict)
            and data.get("http") is not None
            and "disable_redirects" not in data
            and not _policy(info).allow_consul_api
        ):
            return {**data, "disable_redirects": True}
        return data

    @field_validator("disable_redirects")
    @classmethod
    def _redirects_stay_off(cls, value: bool | None, info: ValidationInfo) -> bool | None:
        if value is False and not _policy(info).allow_consul_api:
            raise ValueError(
                "must stay true: a redirect could lead the agent to the Consul API "
                "(set checks.allow_consul_api to allow it)"
            )
        return value

    @field_validator("http")
    @classmethod
    def _http_target(cls, url: str | None, info: ValidationInfo) -> str | None:
        return None if url is None else _policy(info).check_url(url)

    @field_validator("method")
    @classmethod
    def _allowed_method(cls, method: str | None, info: ValidationInfo) -> str | None:
        return None if method is None else _policy(info).check_method(method)

    @model_validator(mode="after")
    def _one_kind(self) -> HealthCheck:
        kinds = [k for k in ("ttl", "http", "tcp", "grpc") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("exactly one of ttl, http, tcp or grpc must be set")
        if kinds == ["ttl"]:
            if self.interval is not None or self.timeout is not None:
                raise ValueError("a ttl check takes no interval or timeout")
        elif self.interval is None:
            raise ValueError(f"a {kinds[0]} check needs an interval")
        if self.method is not None and self.http is None:
            raise ValueError("method applies to http checks only")
        if self.grpc_use_tls is not None and self.grpc is None:
            raise ValueError("grpc_use_tls applies to grpc checks only")
        if self.disable_redirects is not None and self.http is None:
            raise ValueError("disable_redirects applies to http checks only")
        return self

    def definition(self) -> dict[str, Any]:
        """The check as Consul's agent API spells it."""
        names = {
            "ttl": "TTL",
            "http": "HTTP",
            "tcp": "TCP",
            "grpc": "GRPC",
            "interval": "Interval",
            "timeout": "Timeout",
            "deregister_critical_service_after": "DeregisterCriticalServiceAfter",
            "name": "Name",
            "notes": "Notes",
            "status": "Status",
            "method": "Method",
            "tls_skip_verify": "TLSSkipVerify",
            "grpc_use_tls": "GRPCUseTLS",
            "disable_redirects": "DisableRedirects",
        }
        return {names[k]: v for k, v in self.model_dump(exclude_none=True).items()}


def _policy(info: ValidationInfo) -> CheckPolicy:
    """The handler passes its policy (built from the settings) as the validation context."""
    context = info.context
    return context if isinstance(context, CheckPolicy) else DEFAULT_CHECK_POLICY


class ServiceWeights(BaseModel):
    model_config = _STRICT

    passing: int = Field(1, ge=1, le=65535)
    warning: int = Field(1, ge=0, le=65535)


def _meta(value: dict[str, str]) -> dict[str, str]:
    return check_meta(value)


class RegisterPayload(BaseModel):
    """A service definition for the local agent."""

    model_config = _STRICT

    service_id: ServiceId | None = Field(None, validation_alias=_SERVICE_ID_ALIASES)
    name: ServiceName
    address: ServiceAddress | None = None
    port: int | None = Field(None, ge=0, le=65535)
    tags: list[Tag] = Field(default_factory=list, max_length=256)
    meta: Annotated[dict[str, str], AfterValidator(_meta)] = Field(default_factory=dict)
    check: HealthCheck | None = None
    weights: ServiceWeights | None = None
    enable_tag_override: bool = False
    # The handler keeps it registered (and its TTL check passing) until deregister/shutdown.
    # Declared after ``check`` so its validator can see it.
    maintain: bool = False

    @field_validator("maintain")
    @classmethod
    def _heartbeat_is_sane(cls, maintain: bool, info: ValidationInfo) -> bool:
        check = info.data.get("check")
        ttl = check.ttl if maintain and check is not None else None
        if ttl is not None and duration_seconds(ttl) < MIN_MAINTAINED_TTL_SECONDS:
            raise ValueError(
                f"needs a ttl of at least {MIN_MAINTAINED_TTL_SECONDS:g}s: the check is "
                "passed every ttl/3"
            )
        return maintain

    @property
    def effective_id(self) -> str:
        """Consul uses the name as the ID when none is given."""
        return self.service_id or self.name

    @property
    def ttl_check_id(self) -> str | None:
        """The ID Consul gives the service's TTL check, if it has one."""
        if self.check is None or self.check.ttl is None:
            return None
        return f"service:{self.effective_id}"

    def definition(self) -> dict[str, Any]:
        body: dict[str, Any] = {"ID": self.effective_id, "Name": self.name}
        if self.address is not None:
            body["Address"] = self.address
        if self.port is not None:
            body["Port"] = self.port
        if self.tags:
            body["Tags"] = list(self.tags)
        if self.meta:
            body["Meta"] = dict(self.meta)
        if self.check is not None:
            body["Check"] = self.check.definition()
        if self.weights is not None:
            body["Weights"] = {"Passing": self.weights.passing, "Warning": self.weights.warning}
        body["EnableTagOverride"] = self.enable_tag_override
        return body


class DeregisterPayload(BaseModel):
    model_config = _STRICT

    service_id: ServiceId = Field(validation_alias=_SERVICE_ID_ALIASES)


async def register(client: ConsulClient, payload: RegisterPayload) -> RegisterResult:
    await settle(client.register_service(payload.definition()))
    return {"service_id": payload.effective_id, "name": payload.name, "registered": True}


async def deregister(client: ConsulClient, payload: DeregisterPayload) -> DeregisterResult:
    # python-consul2 answers False on 404 ("Unknown service ID"): it was not registered.
    removed = await settle(client.agent.service.deregister(payload.service_id))
    return {"service_id": payload.service_id, "deregistered": removed is True}


class CheckUpdatePayload(BaseModel):
    """Set a TTL check's status (what passing it, warning it or failing it means)."""

    model_config = _STRICT

    check_id: AgentCheckId
    status: Literal["passing", "warning", "critical"]
    output: CheckOutput = ""


async def check_update(client: ConsulClient, payload: CheckUpdatePayload) -> CheckUpdateResult:
    # A check the agent does not know is python-consul2's NotFound: a typed 404 that names it.
    await settle(client.update_check(payload.check_id, payload.status, payload.output))
    return {"check_id": payload.check_id, "status": payload.status, "updated": True}


async def read_registration(client: ConsulClient, service_id: str) -> dict[str, Any] | None:
    """The agent's copy of a service, None when it has none.

    Read from the whole list (GET /v1/agent/services), not /v1/agent/service/<id>: an ID such
    as ``register`` or ``deregister`` makes that path another endpoint (Consul answers 405).
    """
    services = await settle(client.agent.services())
    found = (services or {}).get(service_id)
    return dict(found) if isinstance(found, dict) else None


class Maintainer(Protocol):
    """The handler's upkeep of maintained registrations (see handler_consul._maintain).

    Every register and deregister of an ID takes a ticket first; only the holder of the
    newest ticket may start, or bring back, that ID's upkeep. So concurrent registers leave
    exactly one upkeep, and a deregister that overlaps a register in flight stays done.
    """

    def ticket(self, service_id: str) -> int:
        """A new ticket for ``service_id``: older ones can no longer start its upkeep."""

    async def suspend(self, service_id: str) -> None:
        """End the current upkeep of ``service_id`` (kept aside for :meth:`resume`);
        returns once none of its requests is in flight."""

    def resume(self, service_id: str, ticket: int) -> None:
        """The register holding ``ticket`` failed: bring the suspended upkeep back, if
        ``ticket`` is still the newest."""

    async def maintain(self, payload: RegisterPayload, ticket: int) -> None:
        """Keep ``payload`` (registered just now) registered and its TTL check passing, if
        ``ticket`` is still the newest."""

    async def forget(self, service_id: str) -> bool:
        """Stop keeping ``service_id`` alive for good (a deregister): takes a ticket, ends
        any upkeep, suspended or running; returns once no upkeep request is in flight."""

    async def forget_suspended(self, service_id: str, ticket: int) -> None:
        """A register without ``maintain`` replaced the definition: drop the suspended
        upkeep, if ``ticket`` is still the newest."""


async def serve_register(effects: Effects, payload: RegisterPayload) -> RegisterResult:
    maintainer: Maintainer | None = effects.state.get(MAINTENANCE)
    if maintainer is None:
        if payload.maintain:
            raise effects.error(InfraUnavailableError, "consul.register: no maintenance available")
        return await effects.call(register, payload)
    service_id = payload.effective_id
    ticket = maintainer.ticket(service_id)
    # Registered again, maintained or not: the old upkeep is suspended before the new
    # definition lands, so it can never restore the old one over it; if this register fails
    # or is cancelled, the old upkeep comes back (unless something newer happened since).
    await maintainer.suspend(service_id)
    try:
        result = await effects.call(register, payload)
        check_id = payload.ttl_check_id
        if payload.maintain and check_id is not None:
            # Passing when this returns: the caller need not wait for the first heartbeat.
            passing = CheckUpdatePayload(check_id=check_id, status="passing", output=MAINTAINED)
            await effects.call(check_update, passing)
    except BaseException:
        maintainer.resume(service_id, ticket)
        raise
    if payload.maintain:
        await maintainer.maintain(payload, ticket)
    else:
        await maintainer.forget_suspended(service_id, ticket)
    return result


async def serve_deregister(effects: Effects, payload: DeregisterPayload) -> DeregisterResult:
    maintainer: Maintainer | None = effects.state.get(MAINTENANCE)
    if maintainer is not None:
        await maintainer.forget(payload.service_id)
    # Not re-sent after an unknown outcome: see the dispatch table.
    return await effects.call(deregister, payload, idempotent=False)
