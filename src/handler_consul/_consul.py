"""python-consul2's ``consul`` package, imported once, after checking it is python-consul2's.

python-consul2 and py-consul (the maintained fork) both install a top-level package named
``consul``; whichever is installed last silently overwrites the other's files, and pip's
dependency check stays clean. With py-consul's files in place the handler would fail deep in
its first request (``HTTPClient.__init__() got an unexpected keyword argument 'timeout'``);
with python-consul2's files in place py-consul's users would break instead. So the clash is
detected here, where the handler first needs the package, and explained.
"""

from __future__ import annotations

import importlib.metadata

__all__ = ["consul_base"]

# Distributions that also install a top-level ``consul`` package.
_CLASHING = ("py-consul", "python-consul")


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _check() -> None:
    ours = _installed("python-consul2")
    others = [(name, version) for name in _CLASHING if (version := _installed(name))]
    if ours is not None and not others:
        return
    found = ", ".join(f"{name} {version}" for name, version in others) or "no python-consul2"
    raise ImportError(
        "handler-consul needs python-consul2's `consul` package, but this environment has "
        f"{found}. These distributions all install a top-level package named `consul`, so "
        "the one installed last has overwritten the others' files. Install handler-consul "
        "in its own virtual environment, or remove the other one and reinstall ours: "
        f"pip uninstall -y {' '.join(n for n, _ in others) or 'python-consul2'} && "
        "pip install --force-reinstall python-consul2==0.1.5"
    )


_check()

import consul.base as consul_base  # noqa: E402  (only once the check passed)
