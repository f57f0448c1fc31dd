"""Reading the small files that dataset options name: text (maybe gzipped, recognised by content), Python/JSON dict
literals, and pickles of plain data.

Every function takes ``what``, the option or role of the file (``"vocab file"``, ``"dataset 'train' seq_list_file"``),
so that an error names it together with the path.
"""

from __future__ import annotations

import ast
import gzip
import io
import pickle
from typing import IO, Any

from returnn.errors import DatasetError

__all__ = [
    "read_file_bytes",
    "open_text_file",
    "read_text_file",
    "parse_dict_literal",
    "read_dict_file",
    "unpickle_plain",
]

_GZIP_MAGIC = b"\x1f\x8b"


def read_file_bytes(path: str, what: str = "file") -> bytes:
    """The content of a file, gunzipped if it is gzip."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise DatasetError(f"cannot read {what} {path!r}: {exc}") from exc
    return gzip.decompress(raw) if raw[:2] == _GZIP_MAGIC else raw


def open_text_file(path: str, what: str = "file") -> IO[str]:
    """Open a UTF-8 text file for reading (streaming), gunzipping it if it is gzip."""
    try:
        with open(path, "rb") as f:
            magic = f.read(2)
        if magic == _GZIP_MAGIC:
            return gzip.open(path, "rt", encoding="utf-8")
        return open(path, encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"cannot open {what} {path!r}: {exc}") from exc


def read_text_file(path: str, what: str = "file") -> str:
    """The whole content of a UTF-8 text file (maybe gzipped)."""
    try:
        return read_file_bytes(path, what).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{what} {path!r} is not UTF-8 text: {exc}") from None


def parse_dict_literal(text: str, where: str) -> dict[Any, Any]:
    """A Python (or JSON) dict literal, parsed safely; ``where`` names the source in errors."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError) as exc:
        raise DatasetError(f"{where}: not a valid Python dict literal: {exc}") from None
    if not isinstance(value, dict):
        raise DatasetError(f"{where}: expected a dict, got {type(value).__name__}")
    return value


def read_dict_file(path: str, what: str) -> dict[Any, Any]:
    """A file holding one Python/JSON dict literal (maybe gzipped), e.g. sequence lengths by tag."""
    return parse_dict_literal(read_text_file(path, what), f"{what} {path!r}")


class _PlainDataUnpickler(pickle.Unpickler):
    """Refuses every global: the pickles that dataset options name hold only lists, dicts, strings and numbers."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}; expected only plain data")


def unpickle_plain(raw: bytes, where: str, expected: str) -> Any:
    """Unpickle plain data (never objects, which could run code).

    :param where: names the file in errors
    :param expected: what the pickle should hold, for the error message (e.g. ``"a dict {label: index}"``)
    """
    try:
        return _PlainDataUnpickler(io.BytesIO(raw)).load()
    except Exception as exc:
        raise DatasetError(f"{where}: cannot unpickle {expected}: {exc}") from None
