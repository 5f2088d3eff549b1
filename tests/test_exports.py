"""The public surface: ``handler_consul.__all__`` is exactly this list and ships typed."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.resources
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import handler_consul

EXPECTED_ALL = [
    "BreakerSettings",
    "BreakerState",
    "CheckUpdateResult",
    "CircuitBreaker",
    "ConsulSettings",
    "CorrelationIdFilter",
    "DeregisterResult",
    "DiscoverResult",
    "EndpointResult",
    "Envelope",
    "ErrorContext",
    "HandlerConsul",
    "HandlerResponse",
    "InfraAuthenticationError",
    "InfraConfigurationError",
    "InfraConflictError",
    "InfraConnectionError",
    "InfraConsulError",
    "InfraError",
    "InfraLockTimeoutError",
    "InfraTimeoutError",
    "InfraUnavailableError",
    "InfraValidationError",
    "InstanceWeights",
    "KvDeleteResult",
    "KvEntry",
    "KvGetKeysResult",
    "KvGetRecurseResult",
    "KvGetResult",
    "KvPutResult",
    "Lease",
    "MixinAsyncCircuitBreaker",
    "RegisterResult",
    "RetrySettings",
    "ServiceInstance",
    "ServicesResult",
    "SessionCreateResult",
    "SessionDestroyResult",
    "SessionRenewResult",
    "TxnAppliedResult",
    "TxnError",
    "TxnRolledBackResult",
    "WatchResult",
    "__version__",
]


def test_all_is_exactly_the_public_names():
    assert handler_consul.__all__ == EXPECTED_ALL


def test_all_is_sorted():
    assert handler_consul.__all__ == sorted(handler_consul.__all__)


def test_every_name_imports():
    module = importlib.import_module("handler_consul")
    for name in handler_consul.__all__:
        assert getattr(module, name) is not None, name
    namespace: dict[str, object] = {}
    exec("from handler_consul import *", namespace)
    assert set(EXPECTED_ALL) <= set(namespace)


def test_public_classes_say_they_are_public():
    for name in EXPECTED_ALL:
        obj = getattr(handler_consul, name)
        if isinstance(obj, type):
            assert obj.__module__.startswith("handler_consul."), (name, obj.__module__)
            assert not obj.__name__.startswith("_"), name


def test_version_matches_the_distribution():
    assert handler_consul.__version__ == importlib.metadata.version("handler-consul")


def test_py_typed_is_installed():
    marker = importlib.resources.files("handler_consul").joinpath("py.typed")
    assert marker.is_file()


def test_py_typed_is_in_the_build(tmp_path):
    # A real wheel, built from a clean copy without build isolation (setuptools is a test
    # dependency), so an editable install's state cannot hide a missing package-data entry.
    root = Path(__file__).resolve().parents[1]
    source = tmp_path / "src-copy"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(root / name, source / name)
    shutil.copytree(
        root / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__")
    )
    wheels = tmp_path / "wheels"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "-v",  # the backend's own output, so its warnings can be checked below
            "-w",
            str(wheels),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # A clean build: no SetuptoolsDeprecationWarning (a `license` table, license classifiers,
    # ...) nor any other SetuptoolsWarning.
    assert "Deprecat" not in output, output
    assert "SetuptoolsWarning" not in output, output
    (wheel,) = wheels.glob("handler_consul-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "handler_consul/py.typed" in names
    assert "handler_consul/__init__.py" in names
    assert "handler_consul/cli/__main__.py" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[infra_handlers]" in text
    assert "consul = handler_consul:HandlerConsul" in text
    metadata_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
    metadata = zipfile.ZipFile(wheel).read(metadata_name).decode()
    assert "License-Expression: Apache-2.0" in metadata
    assert "License-File: LICENSE" in metadata
    assert "Requires-Python: >=3.11\n" in metadata
    for minor in (11, 12, 13):
        assert f"Classifier: Programming Language :: Python :: 3.{minor}" in metadata
    assert "Provides-Extra: otel" in metadata
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
