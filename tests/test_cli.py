"""``handler-consul`` as a user runs it: a subprocess against real agents (``demo`` is in
tests/test_cli_demo.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from harness import AclConsulAgent, ConsulAgent
from support import CLI, agent_env, clean_env, cli, kv_get, kv_put, uniq

from handler_consul._schema import envelope_adapter, response_adapter

# -- exec ------------------------------------------------------------------------------------


def test_exec_prints_the_response_and_exits_0(consul_agent: ConsulAgent) -> None:
    env = agent_env(consul_agent)
    key = f"{uniq('cli')}/greeting"
    correlation_id = str(uuid.uuid4())

    put = cli("exec", json.dumps({**kv_put(key, "hi"), "correlation_id": correlation_id}), env=env)
    got = cli("exec", json.dumps(kv_get(key)), env=env)

    assert put.returncode == 0, put.stderr
    response = json.loads(put.stdout)
    assert response["status"] == "success"
    assert response["correlation_id"] == correlation_id
    assert response["result"] == {"key": key, "applied": True}
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["result"]["value"] == "hi"


def test_exec_reads_the_envelope_from_stdin_or_a_file(
    consul_agent: ConsulAgent, tmp_path: Path
) -> None:
    env = agent_env(consul_agent)
    key = f"{uniq('cli')}/k"
    path = tmp_path / "envelope.json"
    path.write_text(json.dumps(kv_put(key, "from-file")))

    from_file = cli("exec", "--file", str(path), env=env)
    from_stdin = cli("exec", "-", stdin=json.dumps(kv_get(key)), env=env)

    assert from_file.returncode == 0, from_file.stdout
    assert json.loads(from_stdin.stdout)["result"]["value"] == "from-file"


def test_exec_refusal_prints_the_error_dict_and_exits_2(consul_agent: ConsulAgent) -> None:
    # Invalid input is exit 2 (nothing was sent); a failure at Consul is exit 1.
    correlation_id = str(uuid.uuid4())
    envelope = {
        **kv_put("../agent/service/deregister/payments", "x"),
        "correlation_id": correlation_id,
    }

    result = cli("exec", json.dumps(envelope), env=agent_env(consul_agent))

    assert result.returncode == 2
    error = json.loads(result.stdout)
    assert error["status"] == "error"
    assert error["error"] == "InfraValidationError"
    assert error["context"]["field"] == "payload.key"
    assert error["context"]["category"] == "validation"
    assert error["operation"] == "consul.kv_put"
    assert error["correlation_id"] == correlation_id


def test_exec_input_that_is_not_json_exits_2_without_contacting_consul(dead_port: int) -> None:
    # Nothing listens on this port: a parse failure must come before any connection.
    env = clean_env(CONSUL_HOST="127.0.0.1", CONSUL_PORT=str(dead_port))

    result = cli("exec", "{not json", env=env)

    assert result.returncode == 2
    error = json.loads(result.stdout)
    assert error["error"] == "InfraValidationError"
    assert error["context"]["field"] == "envelope"


def test_exec_against_an_unreachable_consul_exits_3(dead_port: int) -> None:
    env = clean_env(CONSUL_HOST="127.0.0.1", CONSUL_PORT=str(dead_port))

    result = cli("--timeout", "2", "exec", json.dumps(kv_get("a")), env=env)

    assert result.returncode == 3
    assert json.loads(result.stdout)["error"] == "InfraConnectionError"


def test_usage_errors_exit_2_and_there_is_no_token_option() -> None:
    # exec reads a stdin that is not a terminal: an empty one is the missing envelope.
    no_envelope = cli("exec", env=clean_env(), stdin="")
    secret = f"sentinel-{uuid.uuid4()}"
    token_args = [
        cli("--token", secret, "health", env=clean_env()),
        cli("health", f"--token={secret}", env=clean_env()),
    ]

    assert no_envelope.returncode == 2
    assert "exec needs an envelope" in no_envelope.stderr
    for result in token_args:
        assert result.returncode == 2
        assert "there is no --token option" in result.stderr
        assert secret not in result.stdout + result.stderr


def test_global_options_override_the_environment_before_or_after_the_command(
    consul_agent: ConsulAgent, dead_port: int
) -> None:
    # The environment names a dead port; --host/--port win (initialize's mapping).
    env = clean_env(CONSUL_HOST="127.0.0.1", CONSUL_PORT=str(dead_port))
    where = ["--host", consul_agent.host, "--port", str(consul_agent.port)]

    before = cli(*where, "describe", env=env)
    after = cli("describe", *where, env=env)

    for result in (before, after):
        assert result.returncode == 0, result.stdout + result.stderr
        assert json.loads(result.stdout)["settings"]["port"] == consul_agent.port


def test_the_console_script_is_installed(consul_agent: ConsulAgent) -> None:
    script = Path(sys.executable).parent / "handler-consul"

    result = subprocess.run(
        [str(script), "health"],
        capture_output=True,
        text=True,
        env=agent_env(consul_agent),
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["healthy"] is True


# -- run -------------------------------------------------------------------------------------


def test_run_answers_every_line_and_exits_1_when_any_failed(consul_agent: ConsulAgent) -> None:
    prefix = uniq("cli")
    ids = [str(uuid.uuid4()) for _ in range(3)]
    lines = [
        json.dumps({**kv_put(f"{prefix}/a", "1"), "correlation_id": ids[0]}),  # 1 ok
        json.dumps({**kv_get(f"{prefix}/a"), "envelope_id": ids[1]}),  # 2 ok
        "{this is not json",  # 3 malformed
        "",  # 4 blank: skipped, no output
        json.dumps({**kv_put(f"{prefix}/../../x", "1"), "correlation_id": ids[2]}),  # 5 refused
        json.dumps({"operation": "consul.nope", "payload": {}}),  # 6 unknown operation
        "[1, 2, 3]",  # 7 not an object
    ]

    result = cli(
        "run", "--concurrency", "2", stdin="\n".join(lines) + "\n", env=agent_env(consul_agent)
    )

    assert result.returncode == 1
    out = [json.loads(line) for line in result.stdout.splitlines()]
    by_line = {item["line"]: item for item in out}
    assert sorted(by_line) == [1, 2, 3, 5, 6, 7]
    assert by_line[1]["status"] == "success"
    assert by_line[1]["correlation_id"] == ids[0]
    assert by_line[2]["result"]["value"] == "1" or by_line[2]["result"]["found"] is False
    assert by_line[2]["envelope_id"] == ids[1]
    assert by_line[3]["error"] == "InfraValidationError"
    assert by_line[3]["context"]["field"] == "envelope"
    assert by_line[5]["error"] == "InfraValidationError"
    assert by_line[5]["correlation_id"] == ids[2]
    assert by_line[6]["context"]["field"] == "operation"
    assert by_line[7]["error"] == "InfraValidationError"
    assert all(item["status"] == "error" for n, item in by_line.items() if n > 2)
    progress = result.stderr.strip().splitlines()[-1]
    assert "6 processed, 2 ok, 4 failed" in progress
    assert re.search(r"[\d.]+/s", progress)


def test_run_bounded_concurrency_all_ok_exits_0(consul_agent: ConsulAgent, tmp_path: Path) -> None:
    prefix = uniq("cli")
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(kv_put(f"{prefix}/{i}", str(i))) + "\n" for i in range(60)))

    result = cli("run", "--file", str(path), "--concurrency", "7", env=agent_env(consul_agent))

    assert result.returncode == 0, result.stderr
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(item["line"] for item in out) == list(range(1, 61))
    assert {item["result"]["key"] for item in out} == {f"{prefix}/{i}" for i in range(60)}
    assert "60 processed, 60 ok, 0 failed" in result.stderr


def test_run_prints_progress_while_it_works(consul_agent: ConsulAgent) -> None:
    env = agent_env(consul_agent)
    with subprocess.Popen(
        [*CLI, "run", "--progress-interval", "0.2"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        assert proc.stderr is not None
        proc.stdin.write(json.dumps(kv_get(uniq("cli"))) + "\n")
        proc.stdin.flush()
        first = proc.stdout.readline()  # answered while the input is still open
        time.sleep(1.0)  # more input may come: progress lines must still appear
        proc.stdin.close()
        proc.wait(timeout=30)
        rest, stderr = proc.stdout.read(), proc.stderr.read()

    assert proc.returncode == 0, stderr
    assert json.loads(first)["status"] == "success"
    assert rest == ""
    assert stderr.count("handler-consul run:") >= 3


# -- describe, health, schema ----------------------------------------------------------------


def test_describe_after_initialize_and_without_connecting(
    consul_agent: ConsulAgent, dead_port: int
) -> None:
    connected = cli("describe", env=agent_env(consul_agent))
    offline = cli("describe", "--no-connect", env=clean_env(CONSUL_PORT=str(dead_port)))

    assert connected.returncode == 0
    info = json.loads(connected.stdout)
    assert info["initialized"] is True
    assert info["handler_type"] == "infra_handler"
    assert info["supported_operations"] == sorted(info["supported_operations"])
    assert offline.returncode == 0
    assert json.loads(offline.stdout)["initialized"] is False


def test_health_reports_healthy_and_unhealthy(consul_agent: ConsulAgent, dead_port: int) -> None:
    healthy = cli("health", env=agent_env(consul_agent))
    dead = cli(
        "--timeout",
        "2",
        "health",
        env=clean_env(CONSUL_HOST="127.0.0.1", CONSUL_PORT=str(dead_port)),
    )

    assert healthy.returncode == 0
    report = json.loads(healthy.stdout)
    assert report["healthy"] is True
    assert report["leader"]
    assert dead.returncode == 1
    assert json.loads(dead.stdout)["healthy"] is False


def test_schema_is_a_json_schema_with_a_discriminated_union() -> None:
    result = cli("schema", env=clean_env())
    envelope_only = cli("schema", "--kind", "envelope", env=clean_env())

    assert result.returncode == 0
    docs = json.loads(result.stdout)
    assert set(docs) == {"envelope", "result", "error"}
    for kind in ("envelope", "result"):
        doc = docs[kind]
        assert doc["$schema"].startswith("https://json-schema.org/")
        assert doc["discriminator"]["propertyName"] == "operation"
        assert set(doc["discriminator"]["mapping"]) == {
            "consul.check_update",
            "consul.deregister",
            "consul.discover",
            "consul.endpoint",
            "consul.kv_delete",
            "consul.kv_get",
            "consul.kv_put",
            "consul.register",
            "consul.services",
            "consul.session_create",
            "consul.session_destroy",
            "consul.session_renew",
            "consul.txn",
            "consul.watch",
        }
        assert len(doc["oneOf"]) == 14
        assert all(ref["$ref"].startswith("#/$defs/") for ref in doc["oneOf"])
    assert {"KvPutPayload", "RegisterPayload", "HealthCheck"} <= set(docs["envelope"]["$defs"])
    assert {"KvGetResult", "KvEntry", "RegisterResult"} <= set(docs["result"]["$defs"])
    assert {"DiscoverPayload", "ServicesPayload", "CheckUpdatePayload"} <= set(
        docs["envelope"]["$defs"]
    )
    assert {"DiscoverResult", "ServiceInstance", "ServicesResult", "CheckUpdateResult"} <= set(
        docs["result"]["$defs"]
    )
    assert docs["error"]["required"] == ["error", "message", "context"]
    assert json.loads(envelope_only.stdout) == docs["envelope"]


def test_real_responses_match_the_result_schema(consul_agent: ConsulAgent) -> None:
    env = agent_env(consul_agent)
    service = uniq("svc")
    prefix = uniq("cli")
    envelopes = [
        {"operation": "consul.register", "payload": {"service_id": service, "name": service}},
        kv_put(f"{prefix}/a", "1"),
        kv_get(f"{prefix}/a"),
        kv_get(f"{prefix}/missing"),
        {"operation": "consul.kv_get", "payload": {"key": prefix, "recurse": True}},
        {"operation": "consul.kv_get", "payload": {"key": prefix, "keys_only": True}},
        {"operation": "consul.deregister", "payload": {"service_id": service}},
        {
            "operation": "consul.txn",
            "payload": {"operations": [{"verb": "get-tree", "key": f"{prefix}/"}]},
        },
        {"operation": "consul.txn", "payload": {"operations": [{"verb": "get", "key": prefix}]}},
        {"operation": "consul.kv_delete", "payload": {"key": f"{prefix}/a"}},
        {"operation": "consul.session_create", "payload": {"ttl": "10s"}},
    ]
    stdin = "".join(json.dumps(e) + "\n" for e in envelopes)

    result = cli("run", "--concurrency", "1", stdin=stdin, env=env)

    assert result.returncode == 0, result.stdout
    adapter = response_adapter()
    for line in result.stdout.splitlines():
        response = json.loads(line)
        response.pop("line")
        adapter.validate_python(response)


def test_the_envelope_schema_accepts_the_contract_envelope() -> None:
    adapter = envelope_adapter()
    adapter.validate_python(
        {
            "operation": "consul.kv_put",
            "payload": {"key": "config/app/timeout", "value": "30"},
            "correlation_id": str(uuid.uuid4()),
            "timeout_seconds": 5.0,
        }
    )
    with pytest.raises(ValueError, match="payload"):
        adapter.validate_python({"operation": "consul.kv_put", "payload": {"key": "k"}})


# -- logging ---------------------------------------------------------------------------------


def test_debug_logs_carry_the_envelope_fields(consul_agent: ConsulAgent) -> None:
    correlation_id = str(uuid.uuid4())
    envelope = json.dumps({**kv_get(uniq("cli")), "correlation_id": correlation_id})
    env = agent_env(consul_agent)

    text = cli("--log-level", "DEBUG", "exec", envelope, env=env)
    as_json = cli("--log-level", "DEBUG", "--log-format", "json", "exec", envelope, env=env)

    assert text.returncode == 0
    line = next(x for x in text.stderr.splitlines() if "handler_consul.envelope" in x)
    assert f"correlation_id={correlation_id} operation=consul.kv_get attempt=1" in line
    assert "duration_ms=" in line
    records = [json.loads(x) for x in as_json.stderr.splitlines()]
    envelope_record = next(r for r in records if r["logger"] == "handler_consul.envelope")
    assert envelope_record["correlation_id"] == correlation_id
    assert envelope_record["attempt"] == 1
    assert isinstance(envelope_record["duration_ms"], float)
    assert json.loads(as_json.stdout)["status"] == "success"


# -- the token never shows -------------------------------------------------------------------


def assert_absent(secret: str, *results: subprocess.CompletedProcess[str]) -> None:
    for result in results:
        assert secret not in result.stdout
        assert secret not in result.stderr
        assert secret.lower() not in (result.stdout + result.stderr).lower()


def test_a_sentinel_token_never_appears_in_cli_output(
    consul_agent: ConsulAgent, acl_agent: AclConsulAgent, tmp_path: Path
) -> None:
    prefix = uniq("cli")
    # On the ACL agent: a real token (success) and an unknown one (403).
    good = acl_agent.mint_token(f'key_prefix "{prefix}/" {{ policy = "write" }}')
    sentinel = f"sentinel-{uuid.uuid4()}"
    debug = ("--log-level", "DEBUG")
    token_file = tmp_path / "token"
    token_file.write_text(good + "\n")
    acl_good = agent_env(acl_agent, CONSUL_TOKEN=good)
    acl_bad = agent_env(acl_agent, CONSUL_HTTP_TOKEN=sentinel)
    dev = agent_env(consul_agent, CONSUL_TOKEN=sentinel)

    ok = cli(*debug, "exec", json.dumps(kv_put(f"{prefix}/k", "v")), env=acl_good)
    from_file = cli(
        *debug,
        "--token-file",
        str(token_file),
        "exec",
        json.dumps(kv_get(f"{prefix}/k")),
        env=agent_env(acl_agent),
    )
    refused = cli(*debug, "exec", json.dumps(kv_put(f"{prefix}/k", "v")), env=acl_bad)
    lines = json.dumps(kv_put(f"{prefix}/r", "1")) + "\n{bad\n"
    others = [
        cli(*debug, "run", stdin=lines, env=acl_bad),
        cli(*debug, "run", stdin=lines, env=dev),
        cli(*debug, "describe", env=dev),
        cli(*debug, "describe", "--no-connect", env=dev),
        cli(*debug, "health", env=acl_bad),
        cli(*debug, "demo", env=dev),
        cli(*debug, "--log-format", "json", "exec", json.dumps(kv_get("x")), env=dev),
    ]

    assert ok.returncode == 0, ok.stdout
    assert from_file.returncode == 0, from_file.stdout
    assert json.loads(from_file.stdout)["result"]["value"] == "v"
    assert refused.returncode == 1
    assert json.loads(refused.stdout)["error"] == "InfraAuthenticationError"
    assert_absent(good, ok, from_file)
    assert_absent(sentinel, refused, *others)
    assert json.loads(others[2].stdout)["settings"]["token_configured"] is True
