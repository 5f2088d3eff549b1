"""The Consul-style commands (``kv``, ``services``), ``exec`` reading stdin, ``validate`` and
the exit codes, run as a user runs them: the installed ``handler-consul`` script, as a
subprocess, against a real agent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from harness import ConsulAgent

SCRIPT = Path(sys.executable).parent / "handler-consul"
# Everything that could point the CLI at a Consul or hand it a token; each test sets its own.
_SCRUBBED = ("CONSUL_", "HANDLER_CONSUL_")


def env_for(agent: ConsulAgent | None = None, *, port: int | None = None) -> dict[str, str]:
    """A clean environment aimed at ``agent``, or at a port where nothing listens."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED)}
    if agent is not None:
        env.update(CONSUL_HOST=agent.host, CONSUL_PORT=str(agent.port))
    elif port is not None:
        env.update(CONSUL_HOST="127.0.0.1", CONSUL_PORT=str(port), CONSUL_TIMEOUT="2")
    return env


def hc(
    *args: str, env: dict[str, str], stdin: bytes | str | None = None
) -> subprocess.CompletedProcess[bytes]:
    """The installed script; stdin is empty unless given (never this test's own stdin)."""
    data = stdin.encode() if isinstance(stdin, str) else stdin
    return subprocess.run(
        [str(SCRIPT), *args],
        input=data if data is not None else b"",
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )


def out(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stdout.decode()


def err(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stderr.decode()


def doc(result: subprocess.CompletedProcess[bytes]) -> Any:
    return json.loads(result.stdout)


def uniq(prefix: str = "clicmd") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def test_the_installed_script_is_what_these_tests_run() -> None:
    assert SCRIPT.is_file(), f"{SCRIPT}: install the package into this venv (scripts/test does)"


# -- kv --------------------------------------------------------------------------------------


def test_kv_put_get_delete_round_trip(consul_agent: ConsulAgent) -> None:
    env = env_for(consul_agent)
    key = f"{uniq()}/timeout"

    put_text = hc("kv", "put", "--format", "text", key, "30", env=env)
    got = hc("kv", "get", key, env=env)
    put_json = hc("kv", "put", key, "45", env=env)  # stdout is a pipe: JSON
    got_again = hc("kv", "get", "--format", "json", key, env=env)
    deleted = hc("kv", "delete", key, env=env)
    gone = hc("kv", "get", key, env=env)

    assert put_text.returncode == 0, err(put_text)
    assert out(put_text) == f"Success! Data written to: {key}\n"
    assert got.returncode == 0, err(got)
    assert got.stdout == b"30\n"  # the value itself, as `consul kv get` prints it
    assert doc(put_json) == {"key": key, "applied": True}
    entry = doc(got_again)
    assert (entry["found"], entry["value"], entry["flags"]) == (True, "45", 0)
    assert entry["modify_index"] > 0
    assert deleted.returncode == 0, err(deleted)
    assert doc(deleted) == {"key": key, "recurse": False, "deleted": True}
    assert consul_agent.request("GET", f"/v1/kv/{key}").status == 404
    assert gone.returncode == 1


def test_kv_get_of_a_missing_key_exits_1_with_the_message_on_stderr(
    consul_agent: ConsulAgent,
) -> None:
    env = env_for(consul_agent)
    key = f"{uniq()}/missing"

    text = hc("kv", "get", key, env=env)
    as_json = hc("kv", "get", "--format", "json", key, env=env)

    assert text.returncode == 1
    assert text.stdout == b""
    assert err(text).strip() == f"Error! No key exists at: {key}"
    assert as_json.returncode == 1
    assert doc(as_json)["found"] is False
    assert f"No key exists at: {key}" in err(as_json)


def test_kv_put_value_from_stdin_byte_for_byte_with_cas_and_flags(
    consul_agent: ConsulAgent,
) -> None:
    env = env_for(consul_agent)
    key = f"{uniq()}/blob"
    blob = bytes(range(256)) * 4  # not UTF-8: stored as the bytes read

    first = hc("kv", "put", "--flags", "7", "--cas", "0", key, "-", env=env, stdin=blob)
    again = hc("kv", "put", "--cas", "0", key, "other", env=env)  # exists now: not applied
    back = hc("kv", "get", key, env=env)
    index = doc(hc("kv", "get", "--format", "json", key, env=env))["modify_index"]
    with_index = hc("kv", "put", "--cas", str(index), key, "-", env=env, stdin="text\n")

    assert first.returncode == 0, err(first)
    assert again.returncode == 1
    assert doc(again) == {"key": key, "applied": False}
    assert f"Error! Did not write to {key}: CAS failed" in err(again)
    assert back.stdout == blob + b"\n"
    assert with_index.returncode == 0, err(with_index)
    entry = doc(hc("kv", "get", "--format", "json", key, env=env))
    assert (entry["value"], entry["flags"]) == ("text\n", 0)


def test_kv_delete_with_cas_deletes_only_at_that_index(consul_agent: ConsulAgent) -> None:
    env = env_for(consul_agent)
    key = f"{uniq()}/cas"
    assert hc("kv", "put", key, "1", env=env).returncode == 0
    index = doc(hc("kv", "get", "--format", "json", key, env=env))["modify_index"]

    stale = hc("kv", "delete", "--cas", str(index + 1000), key, env=env)
    kept = consul_agent.request("GET", f"/v1/kv/{key}").status
    exact = hc("kv", "delete", "--format", "text", "--cas", str(index), key, env=env)

    assert stale.returncode == 1
    assert doc(stale) == {"key": key, "recurse": False, "deleted": False}
    assert f"Error! Did not delete {key}: CAS failed" in err(stale)
    assert kept == 200
    assert exact.returncode == 0, err(exact)
    assert out(exact) == f"Success! Deleted key: {key}\n"
    assert consul_agent.request("GET", f"/v1/kv/{key}").status == 404


def test_kv_get_recurse_and_keys(consul_agent: ConsulAgent) -> None:
    env = env_for(consul_agent)
    prefix = uniq()
    for key, value in ((f"{prefix}/a", "1"), (f"{prefix}/dir/b", "2"), (f"{prefix}/dir/c", "3")):
        assert hc("kv", "put", key, value, env=env).returncode == 0

    recurse = hc("kv", "get", "--recurse", f"{prefix}/", env=env)
    keys = hc("kv", "get", "--keys", f"{prefix}/", env=env)
    every_key = hc("kv", "get", "--keys", "--separator", "", f"{prefix}/", env=env)
    deleted = hc("kv", "delete", "--recurse", f"{prefix}/", env=env)

    assert out(recurse).splitlines() == [f"{prefix}/a:1", f"{prefix}/dir/b:2", f"{prefix}/dir/c:3"]
    assert out(keys).splitlines() == [f"{prefix}/a", f"{prefix}/dir/"]
    assert out(every_key).splitlines() == [f"{prefix}/a", f"{prefix}/dir/b", f"{prefix}/dir/c"]
    assert deleted.returncode == 0, err(deleted)
    assert consul_agent.request("GET", f"/v1/kv/{prefix}/?keys").status == 404


@pytest.mark.parametrize(
    "args",
    [
        ("kv", "get", "../agent/self"),
        ("kv", "put", "../agent/service/deregister/payments", "x"),
        ("kv", "delete", "../agent/service/deregister/payments"),
        ("kv", "delete", "--recurse", "a/../../agent"),
    ],
)
def test_kv_refuses_a_traversal_key_before_anything_connects(
    args: tuple[str, ...], dead_port: int
) -> None:
    # Nothing listens on the port: exit 2 (not 3) proves the key was checked first.
    result = hc(*args, "--format", "json", env=env_for(port=dead_port))

    assert result.returncode == 2, out(result) + err(result)
    error = doc(result)
    assert error["error"] == "InfraValidationError"
    assert error["context"]["field"] == "payload.key"
    assert error["context"]["request_sent"] is False


def test_kv_against_an_unreachable_consul_exits_3(dead_port: int) -> None:
    env = env_for(port=dead_port)

    results = [
        hc("kv", "get", "a", env=env),
        hc("kv", "put", "a", "1", env=env),
        hc("kv", "delete", "a", env=env),
        hc("services", "list", env=env),
    ]

    for result in results:
        assert result.returncode == 3, out(result) + err(result)
        assert "Traceback" not in err(result)
        assert "InfraConnectionError" in out(result) + err(result)


# -- services --------------------------------------------------------------------------------


def test_services_register_list_deregister_round_trip(
    consul_agent: ConsulAgent, dead_port: int
) -> None:
    # The environment names a dead port: Consul's address comes before the command, where
    # --port is Consul's; after `services register`, --port is the service's.
    env = env_for(port=dead_port)
    where = ["--host", consul_agent.host, "--port", str(consul_agent.port)]
    name, service_id = uniq("web"), uniq("web-1")

    registered = hc(
        *where,
        "services",
        "register",
        *("--name", name, "--id", service_id, "--address", "10.0.0.5", "--port", "8080"),
        *("--tag", "v1", "--tag", "primary", "--meta", "version=1.4.2"),
        env=env,
    )
    listed = hc(*where, "services", "list", env=env)
    table = hc(*where, "services", "list", "--format", "text", env=env)
    deregistered = hc(*where, "services", "deregister", "--format", "text", service_id, env=env)
    again = hc(*where, "services", "deregister", service_id, env=env)
    after = hc(*where, "services", "list", env=env)

    assert registered.returncode == 0, out(registered) + err(registered)
    assert doc(registered) == {"service_id": service_id, "name": name, "registered": True}
    entry = next(s for s in doc(listed) if s["id"] == service_id)
    assert entry == {
        "id": service_id,
        "name": name,
        "address": "10.0.0.5",
        "port": 8080,
        "tags": ["v1", "primary"],
        "meta": {"version": "1.4.2"},
    }
    assert out(table).splitlines()[0].split() == ["ID", "NAME", "ADDRESS", "PORT", "TAGS"]
    row = next(line for line in out(table).splitlines() if line.startswith(service_id))
    assert row.split() == [service_id, name, "10.0.0.5", "8080", "v1,primary"]
    assert deregistered.returncode == 0, err(deregistered)
    assert out(deregistered) == f"Deregistered service: {service_id}\n"
    assert service_id not in consul_agent.request("GET", "/v1/agent/services").json()
    assert again.returncode == 1
    assert f"Unknown service ID: {service_id}" in err(again)
    assert service_id not in {s["id"] for s in doc(after)}


def test_services_register_refuses_bad_input_with_exit_2(dead_port: int) -> None:
    env = env_for(port=dead_port)

    bad_meta = hc("services", "register", "--name", "web", "--meta", "novalue", env=env)
    bad_name = hc("services", "register", "--name", "../web", "--format", "json", env=env)

    assert bad_meta.returncode == 2
    assert "--meta takes KEY=VALUE" in err(bad_meta)
    assert bad_name.returncode == 2
    assert doc(bad_name)["context"]["field"] == "payload.name"


# -- exec ------------------------------------------------------------------------------------


def test_exec_reads_a_piped_envelope_without_a_dash(consul_agent: ConsulAgent) -> None:
    env = env_for(consul_agent)
    key = f"{uniq()}/piped"
    envelope = {"operation": "consul.kv_put", "payload": {"key": key, "value": "v"}}

    piped = hc("exec", env=env, stdin=json.dumps(envelope))
    empty = hc("exec", env=env, stdin="")

    assert piped.returncode == 0, out(piped) + err(piped)
    assert doc(piped)["result"] == {"key": key, "applied": True}
    assert empty.returncode == 2
    assert "exec needs an envelope" in err(empty)


def test_an_operation_typo_is_invalid_input_even_when_consul_is_down(dead_port: int) -> None:
    env = env_for(port=dead_port)

    typo = hc("exec", '{"operation": "consul.kv_gte", "payload": {"key": "a"}}', env=env)
    valid = hc("exec", '{"operation": "consul.kv_get", "payload": {"key": "a"}}', env=env)

    assert typo.returncode == 2
    error = doc(typo)
    assert error["error"] == "InfraValidationError"
    assert error["context"]["field"] == "operation"
    assert "consul.kv_get" in error["message"]  # the supported names, to spot the typo
    assert valid.returncode == 3  # a valid envelope does get as far as connecting
    assert doc(valid)["error"] == "InfraConnectionError"


# -- validate --------------------------------------------------------------------------------

_LINES = [
    '{"operation": "consul.kv_get", "payload": {"key": "config/a"}}',  # 1 ok
    "{not json",  # 2
    "",  # 3 blank: skipped
    '{"operation": "consul.kv_gte", "payload": {"key": "a"}}',  # 4 unknown operation
    '{"operation": "consul.kv_put", "payload": {"key": "../agent/x", "value": "1"}}',  # 5
    '{"operation": "consul.kv_put", "payload": {"key": "a"}}',  # 6 no value
    '{"operation": "consul.register", "payload": {"name": "web", "port": 8080}}',  # 7 ok
    '{"operation": "consul.kv_get", "payload": {"key": "a"}, "timeout_seconds": -1}',  # 8
]
_BAD = {2: "envelope", 4: "operation", 5: "payload.key", 6: "payload.value", 8: "timeout_seconds"}


def test_validate_reports_each_bad_line_with_its_number_and_field(
    tmp_path: Path, dead_port: int
) -> None:
    # Nothing listens: validation needs no Consul.
    env = env_for(port=dead_port)
    path = tmp_path / "envelopes.jsonl"
    path.write_text("\n".join(_LINES) + "\n")

    text = hc("validate", "--format", "text", str(path), env=env)
    as_json = hc("validate", str(path), env=env)
    from_stdin = hc("validate", "-", env=env, stdin=path.read_text())
    dry_run = hc("run", "--dry-run", "--file", str(path), env=env)

    assert text.returncode == 2
    lines = out(text).splitlines()
    reported = {int(line.split(":")[0].removeprefix("line ")): line for line in lines}
    assert sorted(reported) == sorted(_BAD)
    for number, field in _BAD.items():
        assert reported[number].startswith(f"line {number}: {field}: "), reported[number]
    assert "7 envelopes, 2 valid, 5 invalid" in err(text)
    for result in (as_json, from_stdin, dry_run):
        assert result.returncode == 2
        lines = [json.loads(line) for line in out(result).splitlines()]
        assert {item["line"]: item["context"]["field"] for item in lines} == _BAD
        assert all(item["error"] == "InfraValidationError" for item in lines)


def test_validate_exits_0_when_every_envelope_is_valid(tmp_path: Path, dead_port: int) -> None:
    path = tmp_path / "good.jsonl"
    path.write_text(_LINES[0] + "\n\n" + _LINES[6])  # no newline at the end

    result = hc("validate", str(path), env=env_for(port=dead_port))
    missing = hc("validate", str(tmp_path / "nope.jsonl"), env=env_for(port=dead_port))

    assert result.returncode == 0, out(result) + err(result)
    assert out(result) == ""
    assert "2 envelopes, 2 valid, 0 invalid" in err(result)
    assert missing.returncode == 2
    assert "cannot read" in err(missing)


def test_validate_applies_the_configured_check_rules(tmp_path: Path, dead_port: int) -> None:
    # A health check may not aim at Consul's own address: which address that is comes from
    # the settings, as it would for the handler.
    check = {"http": f"http://127.0.0.1:{dead_port}/health", "interval": "10s"}
    path = tmp_path / "check.jsonl"
    path.write_text(
        json.dumps({"operation": "consul.register", "payload": {"name": "w", "check": check}})
    )

    aimed_at_consul = hc("validate", str(path), env=env_for(port=dead_port))
    elsewhere = hc("--port", "1", "validate", str(path), env=env_for(port=dead_port))

    assert aimed_at_consul.returncode == 2
    assert json.loads(out(aimed_at_consul))["context"]["field"] == "payload.check.http"
    assert elsewhere.returncode == 0, out(elsewhere)
