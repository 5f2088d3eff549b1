"""The package version, in one place (read by describe() and the CLI)."""

__version__ = "0.1.0"
