"""Typed results: each operation's result is an exported TypedDict that pydantic validates,
``HandlerResponse.as_<operation>()`` hands it back typed (a response of anything else is a
TypeError naming the accessor that fits), and mypy catches a misspelt key through it."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import typing
import uuid
from pathlib import Path
from typing import Any

import pytest
import typing_extensions
from pydantic import TypeAdapter, ValidationError
from support import envelope, kv_get, kv_put, uniq

import handler_consul
from handler_consul import (
    CheckUpdateResult,
    DeregisterResult,
    DiscoverResult,
    EndpointResult,
    HandlerConsul,
    HandlerResponse,
    KvDeleteResult,
    KvEntry,
    KvGetKeysResult,
    KvGetRecurseResult,
    KvGetResult,
    KvPutResult,
    RegisterResult,
    ServiceInstance,
    ServicesResult,
    SessionCreateResult,
    SessionDestroyResult,
    SessionRenewResult,
    TxnAppliedResult,
    TxnError,
    TxnRolledBackResult,
)
from handler_consul._operations import OPERATIONS
from handler_consul._schema import result_type

RESULTS = [
    KvEntry,
    KvGetResult,
    KvGetRecurseResult,
    KvGetKeysResult,
    KvPutResult,
    RegisterResult,
    DeregisterResult,
    DiscoverResult,
    ServiceInstance,
    EndpointResult,
    ServicesResult,
    CheckUpdateResult,
    KvDeleteResult,
    TxnAppliedResult,
    TxnError,
    TxnRolledBackResult,
    SessionCreateResult,
    SessionRenewResult,
    SessionDestroyResult,
]
ACCESSORS = [
    "as_kv_get",
    "as_kv_get_recurse",
    "as_kv_get_keys",
    "as_kv_put",
    "as_register",
    "as_deregister",
    "as_discover",
    "as_endpoint",
    "as_services",
    "as_check_update",
    "as_kv_delete",
    "as_txn",
    "as_session_create",
    "as_session_renew",
    "as_session_destroy",
]


def response(operation: str, result: dict[str, Any]) -> HandlerResponse:
    return HandlerResponse.trusted(operation, uuid.uuid4(), None, result, 1, 1.0)


# -- the types -------------------------------------------------------------------------------


@pytest.mark.parametrize("tp", RESULTS, ids=lambda tp: tp.__name__)
def test_each_result_type_is_a_typing_extensions_typeddict(tp: Any) -> None:
    # pydantic takes a TypedDict on Python < 3.12 only from typing_extensions.
    assert typing_extensions.is_typeddict(tp)
    assert type(tp) is type(typing_extensions.TypedDict("Probe", {"x": int}))
    assert tp.__module__ == "handler_consul._results"
    assert getattr(handler_consul, tp.__name__) is tp
    assert tp.__doc__


@pytest.mark.parametrize("tp", RESULTS, ids=lambda tp: tp.__name__)
def test_pydantic_validates_and_describes_each_result(tp: Any) -> None:
    adapter = TypeAdapter(tp)
    schema = adapter.json_schema()
    assert schema["type"] == "object"
    hints = typing.get_type_hints(tp, include_extras=True)
    optional = {
        k for k, v in hints.items() if typing.get_origin(v) is typing_extensions.NotRequired
    }
    assert set(schema["required"]) == set(hints) - optional
    assert set(schema["properties"]) == set(hints)
    with pytest.raises(ValidationError):
        adapter.validate_python({})


def test_the_dispatch_table_returns_the_exported_types() -> None:
    kv_get_shapes = typing.get_args(result_type(OPERATIONS["consul.kv_get"]))
    assert set(kv_get_shapes) == {KvGetResult, KvGetRecurseResult, KvGetKeysResult}
    assert result_type(OPERATIONS["consul.kv_put"]) is KvPutResult
    assert result_type(OPERATIONS["consul.register"]) is RegisterResult
    assert result_type(OPERATIONS["consul.deregister"]) is DeregisterResult
    assert result_type(OPERATIONS["consul.discover"]) is DiscoverResult
    assert result_type(OPERATIONS["consul.services"]) is ServicesResult
    assert result_type(OPERATIONS["consul.endpoint"]) is EndpointResult
    assert result_type(OPERATIONS["consul.check_update"]) is CheckUpdateResult
    assert result_type(OPERATIONS["consul.kv_delete"]) is KvDeleteResult
    txn_shapes = typing.get_args(result_type(OPERATIONS["consul.txn"]))
    assert set(txn_shapes) == {TxnAppliedResult, TxnRolledBackResult}
    assert result_type(OPERATIONS["consul.session_create"]) is SessionCreateResult
    assert result_type(OPERATIONS["consul.session_renew"]) is SessionRenewResult
    assert result_type(OPERATIONS["consul.session_destroy"]) is SessionDestroyResult


# -- real results through the accessors --------------------------------------------------------


async def test_every_real_result_validates_and_comes_back_typed(handler: HandlerConsul) -> None:
    prefix = uniq("typed")
    service = uniq("svc")

    put = await handler.execute(kv_put(f"{prefix}/a", "1"))
    one = await handler.execute(kv_get(f"{prefix}/a"))
    missing = await handler.execute(kv_get(f"{prefix}/missing"))
    tree = await handler.execute(kv_get(prefix, recurse=True))
    keys = await handler.execute(kv_get(prefix, keys_only=True))
    registered = await handler.execute(
        envelope("register", service_id=service, name=service, check={"ttl": "1m"})
    )
    updated = await handler.execute(
        envelope("check_update", check_id=f"service:{service}", status="passing")
    )
    found = await handler.execute(envelope("discover", service=service, cache=False))
    catalog = await handler.execute(envelope("services"))
    picked = await handler.execute(envelope("endpoint", service=service))
    deregistered = await handler.execute(envelope("deregister", service_id=service))

    checks: list[tuple[Any, Any]] = [
        (put.as_kv_put(), KvPutResult),
        (one.as_kv_get(), KvGetResult),
        (missing.as_kv_get(), KvGetResult),
        (tree.as_kv_get_recurse(), KvGetRecurseResult),
        (keys.as_kv_get_keys(), KvGetKeysResult),
        (registered.as_register(), RegisterResult),
        (deregistered.as_deregister(), DeregisterResult),
        (updated.as_check_update(), CheckUpdateResult),
        (found.as_discover(), DiscoverResult),
        (catalog.as_services(), ServicesResult),
        (picked.as_endpoint(), EndpointResult),
    ]
    for result, tp in checks:
        assert TypeAdapter(tp).validate_python(result, strict=True) == result
    # The accessors hand back the result itself: no copy, no validation on the way.
    assert one.as_kv_get() is one.result
    assert one.as_kv_get()["value"] == "1"
    assert missing.as_kv_get()["found"] is False
    assert [e["key"] for e in tree.as_kv_get_recurse()["items"]] == [f"{prefix}/a"]
    assert keys.as_kv_get_keys()["keys"] == [f"{prefix}/a"]
    assert put.as_kv_put()["applied"] is True
    assert registered.as_register()["service_id"] == service
    assert deregistered.as_deregister()["deregistered"] is True
    assert updated.as_check_update()["updated"] is True
    assert [i["id"] for i in found.as_discover()["instances"]] == [service]
    assert service in catalog.as_services()["services"]
    assert picked.as_endpoint()["instance_id"] == service


async def test_every_real_coordination_result_validates_and_comes_back_typed(
    handler: HandlerConsul,
) -> None:
    key = f"{uniq('typed')}/k"
    created = await handler.execute(envelope("session_create", ttl="10s"))
    session = created.as_session_create()["session_id"]
    renewed = await handler.execute(envelope("session_renew", session_id=session))
    applied = await handler.execute(
        envelope("txn", operations=[{"verb": "set", "key": key, "value": "v"}])
    )
    rolled_back = await handler.execute(
        envelope("txn", operations=[{"verb": "check-index", "key": key, "index": 1}])
    )
    deleted = await handler.execute(envelope("kv_delete", key=key))
    destroyed = await handler.execute(envelope("session_destroy", session_id=session))

    checks: list[tuple[Any, Any]] = [
        (created.as_session_create(), SessionCreateResult),
        (renewed.as_session_renew(), SessionRenewResult),
        (applied.as_txn(), TxnAppliedResult),
        (rolled_back.as_txn(), TxnRolledBackResult),
        (deleted.as_kv_delete(), KvDeleteResult),
        (destroyed.as_session_destroy(), SessionDestroyResult),
    ]
    for result, tp in checks:
        assert TypeAdapter(tp).validate_python(result, strict=True) == result
    assert applied.as_txn()["applied"] is True
    assert rolled_back.as_txn()["applied"] is False


RESULTS_BY_ACCESSOR: dict[str, tuple[str, dict[str, Any]]] = {
    "as_kv_get": ("consul.kv_get", {"key": "k", "found": False, "index": 1}),
    "as_kv_get_recurse": ("consul.kv_get", {"prefix": "p", "found": False, "items": []}),
    "as_kv_get_keys": ("consul.kv_get", {"prefix": "p", "keys": [], "index": 1}),
    "as_kv_put": ("consul.kv_put", {"key": "k", "applied": True}),
    "as_register": ("consul.register", {"service_id": "s", "name": "s", "registered": True}),
    "as_deregister": ("consul.deregister", {"service_id": "s", "deregistered": True}),
    "as_discover": ("consul.discover", {"service": "s", "instances": [], "index": 1}),
    "as_endpoint": ("consul.endpoint", {"service": "s", "address": "h", "port": 1}),
    "as_services": ("consul.services", {"services": {}, "index": 1}),
    "as_check_update": ("consul.check_update", {"check_id": "c", "updated": True}),
    "as_kv_delete": ("consul.kv_delete", {"key": "k", "deleted": True}),
    "as_txn": ("consul.txn", {"applied": False, "errors": []}),
    "as_session_create": ("consul.session_create", {"session_id": "s"}),
    "as_session_renew": ("consul.session_renew", {"session_id": "s", "renewed": True}),
    "as_session_destroy": ("consul.session_destroy", {"session_id": "s", "destroyed": True}),
}


@pytest.mark.parametrize("fits", ACCESSORS)
@pytest.mark.parametrize("asked", ACCESSORS)
def test_an_accessor_refuses_a_response_it_does_not_fit(asked: str, fits: str) -> None:
    operation, result = RESULTS_BY_ACCESSOR[fits]
    got = response(operation, result)
    if asked == fits:
        assert getattr(got, asked)() is result
        return
    with pytest.raises(TypeError) as caught:
        getattr(got, asked)()
    message = str(caught.value)
    assert message.startswith(f"{asked}() on a response of ")
    assert message.endswith(f"; use {fits}()")


def test_the_refusal_says_which_kind_of_kv_get_it_was() -> None:
    tree = response("consul.kv_get", RESULTS_BY_ACCESSOR["as_kv_get_recurse"][1])
    with pytest.raises(TypeError, match=r"a consul\.kv_get with recurse; use as_kv_get_recurse"):
        tree.as_kv_get()
    put = response("consul.kv_put", {"key": "k", "applied": True})
    with pytest.raises(TypeError, match=r"as_register\(\) on a response of consul\.kv_put"):
        put.as_register()


def test_an_unknown_operation_fits_no_accessor() -> None:
    odd = response("consul.no_such_operation", {"id": "x"})
    with pytest.raises(TypeError) as caught:
        odd.as_kv_put()
    assert str(caught.value) == "as_kv_put() on a response of consul.no_such_operation"


def test_a_validated_response_from_json_has_the_accessors_too() -> None:
    data = {
        "status": "success",
        "operation": "consul.kv_put",
        "correlation_id": str(uuid.uuid4()),
        "result": {"key": "k", "applied": False},
        "attempts": 1,
        "duration_ms": 2.5,
    }
    parsed = HandlerResponse.model_validate(data)
    assert parsed.as_kv_put() == {"key": "k", "applied": False}


# -- mypy ------------------------------------------------------------------------------------

_SNIPPET_HEADER = """\
from handler_consul import HandlerResponse, KvEntry, KvGetResult


"""


def _mypy(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    """mypy --strict on ``body``, as a user's project checks its own code against the
    installed package (its own config, not the repository's)."""
    (tmp_path / "mypy.ini").write_text("[mypy]\nstrict = True\n")
    (tmp_path / "snippet.py").write_text(_SNIPPET_HEADER + textwrap.dedent(body))
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache"), "snippet.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_mypy_catches_a_misspelt_key_through_an_accessor(tmp_path: Path) -> None:
    result = _mypy(
        tmp_path,
        """\
        def timeout(response: HandlerResponse) -> str | None:
            return response.as_kv_get()["valeu"]


        def flags(response: HandlerResponse) -> str:
            return response.as_kv_get_recurse()["items"][0]["flags"]
        """,
    )
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert 'snippet.py:5: error: TypedDict "KvGetResult" has no key "valeu"' in out
    assert 'Did you mean "value"?' in out
    assert 'snippet.py:9: error: Incompatible return value type (got "int"' in out


def test_mypy_accepts_the_right_keys_and_knows_their_types(tmp_path: Path) -> None:
    result = _mypy(
        tmp_path,
        """\
        def timeout(response: HandlerResponse) -> str | None:
            result: KvGetResult = response.as_kv_get()
            return result["value"] if result["found"] else None


        def entries(response: HandlerResponse) -> list[KvEntry]:
            reveal_type(response.as_kv_put()["applied"])
            return response.as_kv_get_recurse()["items"]
        """,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"Revealed type is \"(builtins\.)?bool\"", result.stdout), result.stdout


def test_the_untyped_result_is_why_the_accessors_exist(tmp_path: Path) -> None:
    # ``response.result`` stays dict[str, Any]: mypy lets the typo through there.
    result = _mypy(
        tmp_path,
        """\
        def timeout(response: HandlerResponse) -> object:
            return response.result["valeu"]
        """,
    )
    assert result.returncode == 0, result.stdout + result.stderr
