"""python-consul2 and py-consul both install a package named ``consul``: the clash is detected.

In a fresh virtual environment with handler-consul installed and py-consul installed over it,
importing the handler raises an ImportError that names py-consul and says what to do; doing
what it says makes the handler import again.
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

import handler_consul

REPO = Path(handler_consul.__file__).resolve().parents[2]
IMPORT = "from handler_consul import HandlerConsul; print('imported', HandlerConsul.__name__)"


def _run(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), *args], capture_output=True, text=True, timeout=600, check=False
    )


def _pip(python: Path, *args: str) -> None:
    result = _run(python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *args)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.slow
def test_py_consul_installed_over_the_handler_is_explained_at_import(tmp_path: Path) -> None:
    venv.create(tmp_path / "env", with_pip=True)
    python = tmp_path / "env" / "bin" / "python"
    _pip(python, str(REPO))
    assert _run(python, "-c", IMPORT).stdout.strip() == "imported HandlerConsul"

    _pip(python, "py-consul")
    clash = _run(python, "-c", IMPORT)
    assert clash.returncode == 1
    last = clash.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: handler-consul needs python-consul2's `consul` package")
    assert "py-consul" in last
    assert "pip uninstall -y py-consul" in last

    # The advice in the message works.
    result = _run(python, "-m", "pip", "uninstall", "-q", "-y", "py-consul")
    assert result.returncode == 0, result.stderr
    _pip(python, "--force-reinstall", "--no-deps", "python-consul2==0.1.5")
    assert _run(python, "-c", IMPORT).stdout.strip() == "imported HandlerConsul"


def test_the_check_passes_in_the_test_environment() -> None:
    """The environment the suite runs in has python-consul2 alone (else nothing would run)."""
    result = _run(Path(sys.executable), "-c", IMPORT)
    assert result.stdout.strip() == "imported HandlerConsul", result.stderr
