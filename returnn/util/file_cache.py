"""Mainline's ``CachedFile`` import path: a file name that configs (and i6_core's ReturnnConfigV2) wrap.

This trainer has no file cache of its own: a ``CachedFile`` is the file itself (``os.fspath`` gives its name); use
``returnn.util.basic.cf`` for the cluster's cache tool.
"""

from __future__ import annotations

import os

__all__ = ["CachedFile"]


class CachedFile(os.PathLike):
    """A file name (mainline would copy the file to a local cache first)."""

    def __init__(self, filename: str | os.PathLike):
        self.filename = os.fspath(filename)

    def __fspath__(self) -> str:
        return self.filename

    def __str__(self) -> str:
        return self.filename

    def __repr__(self) -> str:
        return f"CachedFile({self.filename!r})"
