"""The library's title and installed version, apart from the package's public surface so that the
operator CLI can show them without importing anything else of the library."""

from __future__ import annotations

from functools import cache
from importlib import import_module

TITLE = "grpc-helper"


@cache
def installed_version() -> str:
    """The installed distribution's version (read on first use: importlib.metadata is slow to import)."""
    metadata = import_module("importlib.metadata")
    try:
        return str(metadata.version(TITLE))
    except metadata.PackageNotFoundError:  # running from a source tree that was not installed
        return "0.0.0+unknown"
