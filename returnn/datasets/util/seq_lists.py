"""Sequence-list files, as the datasets' options (``seq_list_file``, ``seq_list_filter_file``, ``segment_file``) name
them.

A sequence list file is one of (each optionally gzipped, recognised by content):

- plain text, one sequence tag per line;
- a Python/JSON dict literal ``{dataset_key: [tag, ...], ...}`` (a tag list per sub-dataset, MetaDataset only);
- a pickle (``.pkl``) of such a dict or of a plain list. Only plain data is unpickled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from returnn.datasets.util.files import parse_dict_literal, read_file_bytes, unpickle_plain
from returnn.errors import DatasetError

__all__ = ["read_seq_list_file", "read_tag_list", "index_by_tag"]

_PICKLE_PROTOCOL_2_OR_LATER = b"\x80"


def read_seq_list_file(path: str, what: str) -> list[str] | dict[str, list[str]]:
    """The tags of a sequence list file: a list, or a dict ``{dataset_key: tags}`` (see module docs).

    :param what: names the option in errors, e.g. ``"MetaDataset 'train' seq_list_file"``.
    """
    raw = read_file_bytes(path, what)
    where = f"{what} {path!r}"
    if path.removesuffix(".gz").endswith(".pkl") or raw.startswith(_PICKLE_PROTOCOL_2_OR_LATER):
        value = unpickle_plain(raw, where, "a list or dict of sequence tags")
    else:
        text = _decode(raw, where)
        if text.lstrip().startswith("{"):
            return _check_tag_dict(parse_dict_literal(text, where), where)
        return [line.strip() for line in text.splitlines() if line.strip()]
    if isinstance(value, dict):
        return _check_tag_dict(value, where)
    if isinstance(value, (list, tuple)) and all(isinstance(tag, str) for tag in value):
        return list(value)
    raise DatasetError(
        f"{where}: expected a list of tags or a dict {{dataset_key: [tags]}}, got {type(value).__name__}"
    )


def read_tag_list(path: str, what: str) -> list[str]:
    """The tags of a sequence list file that must be one plain list (text lines or a pickled list)."""
    tags = read_seq_list_file(path, what)
    if isinstance(tags, dict):
        raise DatasetError(
            f"{what} {path!r}: expected a plain list of sequence tags (one per line), got a dict by dataset key"
        )
    return tags


def index_by_tag(tags: Sequence[str]) -> dict[str, int]:
    """The position of each tag in ``tags``; a tag that occurs more than once maps to its first position."""
    index: dict[str, int] = {}
    for idx, tag in enumerate(tags):
        index.setdefault(tag, idx)
    return index


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
