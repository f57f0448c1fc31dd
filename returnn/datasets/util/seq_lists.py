"""Sequence-list and length files, as RETURNN's combining datasets read them.

A sequence list file is one of (each optionally gzipped, recognised by content):

- plain text, one sequence tag per line;
- a Python/JSON dict literal ``{dataset_key: [tag, ...], ...}`` (a tag list per sub-dataset);
- a pickle (``.pkl``) of such a dict or of a plain list. Only plain data is unpickled.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

from returnn.datasets.util.files import read_file_bytes
from returnn.errors import DatasetError

__all__ = ["read_seq_list_file", "read_dict_file"]

_PICKLE_PROTOCOL_2_OR_LATER = b"\x80"


class _PlainDataUnpickler(pickle.Unpickler):
    """Refuses every global: a sequence list is only lists, dicts and strings."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}; expected only lists, dicts and strings")


def read_seq_list_file(path: str, what: str) -> list[str] | dict[str, list[str]]:
    """The tags of a sequence list file: a list, or a dict ``{dataset_key: tags}`` (see module docs).

    :param what: names the option in errors, e.g. ``"MetaDataset 'train' seq_list_file"``.
    """
    raw = read_file_bytes(path, what)
    where = f"{what} {path!r}"
    if path.removesuffix(".gz").endswith(".pkl") or raw.startswith(_PICKLE_PROTOCOL_2_OR_LATER):
        try:
            value = _PlainDataUnpickler(io.BytesIO(raw)).load()
        except Exception as exc:
            raise DatasetError(f"{where}: cannot unpickle a list or dict of sequence tags: {exc}") from None
    else:
        text = _decode(raw, where)
        if text.lstrip().startswith("{"):
            return _check_tag_dict(read_dict_literal(text, where), where)
        return [line.strip() for line in text.splitlines() if line.strip()]
    if isinstance(value, dict):
        return _check_tag_dict(value, where)
    if isinstance(value, (list, tuple)) and all(isinstance(tag, str) for tag in value):
        return list(value)
    raise DatasetError(
        f"{where}: expected a list of tags or a dict {{dataset_key: [tags]}}, got {type(value).__name__}"
    )


def read_dict_file(path: str, what: str) -> dict[Any, Any]:
    """A file holding one Python/JSON dict literal (optionally gzipped), e.g. sequence lengths by tag."""
    where = f"{what} {path!r}"
    return read_dict_literal(_decode(read_file_bytes(path, what), where), where)


def read_dict_literal(text: str, where: str) -> dict[Any, Any]:
    # Imported here: the vocabulary module (BPE and all) is not needed by datasets without such files.
    from returnn.datasets.util.vocabulary import parse_dict_literal

    return parse_dict_literal(text, where)


def _decode(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{where}: not UTF-8 text ({exc}); expected tags, a dict literal or a .pkl pickle") from None


def _check_tag_dict(value: dict[Any, Any], where: str) -> dict[str, list[str]]:
    for key, tags in value.items():
        if not (isinstance(key, str) and isinstance(tags, (list, tuple)) and all(isinstance(t, str) for t in tags)):
            raise DatasetError(f"{where}: expected {{dataset_key: [tag, ...]}}, but entry {key!r} is not a tag list")
    return {key: list(tags) for key, tags in value.items()}
