"""Reading data files that may be gzipped (recognised by their content, whatever their name)."""

from __future__ import annotations

import gzip
from typing import IO

from returnn.errors import DatasetError

__all__ = ["read_file_bytes", "open_text_file"]

_GZIP_MAGIC = b"\x1f\x8b"


def read_file_bytes(path: str, what: str = "file") -> bytes:
    """The content of a file, gunzipped if it is gzip.

    :param what: names the file in errors, e.g. ``"segment_file"``
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise DatasetError(f"cannot read {what} {path!r}: {exc}") from exc
    return gzip.decompress(raw) if raw[:2] == _GZIP_MAGIC else raw


def open_text_file(path: str) -> IO[str]:
    """Open a UTF-8 text file for reading (streaming), gunzipping it if it is gzip."""
    try:
        with open(path, "rb") as f:
            magic = f.read(2)
        if magic == _GZIP_MAGIC:
            return gzip.open(path, "rt", encoding="utf-8")
        return open(path, encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"cannot open {path!r}: {exc}") from exc
