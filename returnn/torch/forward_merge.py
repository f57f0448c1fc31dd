"""Rank 0 puts the files that the forward hooks of several processes wrote (one directory per process, see
:mod:`returnn.torch.forward_parts`) together into the run's working directory, as one process would have written them:

- an HDF file in RETURNN's layout (``SimpleHDFWriter``, ``HDFDatasetWriter``): the sequences of all parts, in the
  order of one process (each sequence's position in the epoch, found by its tag);
- a dict keyed by sequence tag, as a Python literal (the ``search_out.py`` of recognition hooks; ``inf`` and ``nan``
  as i6_core reads them) or JSON, also gzipped: the entries of all parts in the order of one process, one
  ``tag: value,`` line each (JSON: ``"tag": value``; an entry that a part wrote on a line of its own as written);
- a file that one process wrote alone (say rank 0, from the values of all processes that ``run_ctx.all_gather(...)``
  gave it), or that all wrote the same: moved as it is. A file opened for appending that exists in the working
  directory gets the part appended, as in one process.

Anything else that several processes wrote differently (a sum over the data, a text with a line per sequence) cannot
be merged, nor can HDF parts with different data keys or shapes: an error names the file, before any file is
written, and the parts are kept.
"""

from __future__ import annotations

import ast
import collections
import filecmp
import functools
import gzip
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Collection, Sequence
from typing import Any, NamedTuple

from returnn.datasets.util.hdf_merge import check_hdf_parts, merge_hdf_files
from returnn.errors import DatasetError, StepFunctionError
from returnn.torch.distributed import write_file_atomic

__all__ = ["merge_process_files", "log_written"]

logger = logging.getLogger(__name__)

_MAX_LOG_LINES = 20  # more files (one per sequence, say) are logged as counts


def merge_process_files(
    directories: Sequence[str], positions: dict[str, int], destination: str, *, appended: Collection[str] = ()
) -> dict[str, str]:
    """Put the files below ``directories`` (one per process) together into ``destination``.

    :param positions: each forwarded sequence's tag and position in the epoch
    :param appended: the relative names of the files that a process opened for appending
    :return: the relative name of each file written (sorted), and how it was made from the parts
    :raise StepFunctionError: a file cannot be merged (nothing is written then)
    """
    by_name: dict[str, list[str]] = {}  # name -> the directories that hold it
    for directory in directories:
        for name in _files_below(directory):
            by_name.setdefault(name, []).append(directory)
    plans = {
        name: _merge_plan(name, holders, positions, os.path.join(destination, name), append=name in appended)
        for name, holders in sorted(by_name.items())
    }
    # the files made from the parts first: moving a part takes it from its directory
    for name, plan in sorted(plans.items(), key=lambda item: item[1].takes_part):
        target = os.path.join(destination, name)
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        plan.write(target)
    return {name: plan.how for name, plan in plans.items()}


def log_written(written: dict[str, str]) -> None:
    """Log what :func:`merge_process_files` wrote: a line per file, or counts where there are many."""
    if len(written) <= _MAX_LOG_LINES:
        for name, how in written.items():
            logger.info(f"forward: wrote {name} ({how})")
        return
    by_how: dict[str, list[str]] = collections.defaultdict(list)
    for name, how in written.items():
        by_how[how].append(name)
    for how, names in by_how.items():
        logger.info(f"forward: wrote {len(names)} files ({how}): {names[0]} ... {names[-1]}")


def _files_below(directory: str) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(folder, file), directory)
        for folder, _, files in os.walk(directory)
        for file in files
    )


class _Plan(NamedTuple):
    """How to write a merged file from its parts, and that in words."""

    write: Callable[[str], None]
    how: str
    takes_part: bool = False  # moves a part out of its process directory (so it is done after the others)


def _merge_plan(name: str, holders: list[str], positions: dict[str, int], target: str, *, append: bool) -> _Plan:
    """How to write the merged ``name`` from its parts in the process directories ``holders`` (decided before anything
    is written), and that in words."""
    paths = [os.path.join(directory, name) for directory in holders]
    single = len(paths) == 1 or all(filecmp.cmp(paths[0], other, shallow=False) for other in paths[1:])
    if single and append and os.path.isfile(target):
        return _Plan(functools.partial(_append, paths[0]), "appended to the existing file")
    if single:
        if len(paths) == 1:
            return _Plan(functools.partial(_move, paths[0]), f"written by {os.path.basename(holders[0])} alone", True)
        return _Plan(functools.partial(_move, paths[0]), f"the same in {len(paths)} processes", True)
    if _is_returnn_hdf(paths[0]):
        try:
            check_hdf_parts(paths)
        except DatasetError as error:
            raise StepFunctionError(
                f"forward: the processes wrote {name!r} with different layouts, which cannot be merged: {error}. The "
                f"parts are kept in {', '.join(holders)}"
            ) from error
        order_keys = [[_position(positions, tag, name, holders) for tag in _hdf_tags(path)] for path in paths]
        how = f"HDF, {sum(map(len, order_keys))} sequences from {len(paths)} processes"
        return _Plan(functools.partial(_merge_hdf, paths=paths, order_keys=order_keys), how)
    tag_dict = _TagDict.read(paths, positions)
    if tag_dict is not None:
        return _Plan(tag_dict.write, f"{tag_dict.kind}, {len(tag_dict.entries)} sequences from {len(paths)} processes")
    appending = " (opened for appending)" if append else ""
    raise StepFunctionError(
        f"forward: {len(paths)} processes wrote different files {name!r}{appending}, which cannot be merged (only HDF "
        "files in RETURNN's layout and dicts keyed by sequence tag are merged); the parts are kept in "
        f"{', '.join(holders)}. Write such a file in forward_finish_hook by rank 0 alone (if run_ctx.rank == 0) from "
        "the values of all processes (run_ctx.all_gather(value)), or forward in one process"
    )


def _position(positions: dict[str, int], tag: str, name: str, holders: list[str]) -> int:
    if tag not in positions:
        raise StepFunctionError(
            f"forward: {name!r} holds the sequence tag {tag!r}, which no process forwarded; the parts of a file are "
            "merged in the order of the sequences they hold, so its sequences must be tagged with the data's "
            f"seq_tag (data['seq_tag']). The parts are kept in {', '.join(holders)}"
        )
    return positions[tag]


def _is_returnn_hdf(path: str) -> bool:
    import h5py

    if not h5py.is_hdf5(path):
        return False
    with h5py.File(path, "r") as f:
        return "seqTags" in f and "seqLengths" in f


def _hdf_tags(path: str) -> list[str]:
    import h5py

    with h5py.File(path, "r") as f:
        return [tag.decode("utf-8") if isinstance(tag, bytes) else str(tag) for tag in f["seqTags"][()]]


def _merge_hdf(target: str, *, paths: list[str], order_keys: list[list[int]]) -> None:
    _note_replaced(target)
    merge_hdf_files(target, paths, order_keys, overwrite=True)


class _TagDict:
    """The merged entries of dicts keyed by sequence tag (Python literals or JSON, maybe gzipped), each as the text of
    one ``tag: value`` entry."""

    def __init__(self, entries: list[tuple[str, str]], kind: str, gzipped: bool):
        self.entries = entries  # (tag, entry text) in the order of one process
        self.kind = kind  # "dict" (a Python literal) or "JSON"
        self.gzipped = gzipped

    @classmethod
    def read(cls, paths: list[str], positions: dict[str, int]) -> _TagDict | None:
        """The entries of all parts by position; None if a part is not such a dict."""
        texts = [_text(path) for path in paths]
        if any(text is None for text in texts):
            return None
        gzipped = all(gz for _, gz in texts)
        if any(gz for _, gz in texts) != gzipped:
            return None
        parts = [_json_entries(text) for text, _ in texts]
        kind = "JSON"
        if any(part is None for part in parts):
            parts, kind = [_python_entries(text) for text, _ in texts], "dict"
        if any(part is None or not all(tag in positions for tag, _ in part) for part in parts):
            return None
        entries = sorted(((positions[tag], tag, text) for part in parts for tag, text in part), key=lambda e: e[:2])
        repeated = sorted({tag for (_, tag, _), (_, other, _) in zip(entries, entries[1:]) if tag == other})
        if repeated:
            raise StepFunctionError(
                f"forward: several processes wrote entries for the sequence tags {repeated[:3]} into "
                f"{os.path.basename(paths[0])!r}; each process must write only the sequences it forwarded"
            )
        return cls([(tag, text) for _, tag, text in entries], kind, gzipped)

    def write(self, target: str) -> None:
        if self.kind == "JSON":
            lines = ",\n".join(text for _, text in self.entries)
            text = "{\n" + lines + ("\n" if lines else "") + "}\n"
        else:
            text = "{\n" + "".join(f"{text},\n" for _, text in self.entries) + "}\n"
        data = text.encode("utf-8")
        _note_replaced(target)
        content = gzip.compress(data, mtime=0) if self.gzipped else data
        write_file_atomic(target, lambda file: file.write(content), binary=True)


def _text(path: str) -> tuple[str, bool] | None:
    """The text of a (maybe gzipped) UTF-8 file, and whether it was gzipped; None for other files."""
    with open(path, "rb") as file:
        data = file.read()
    gzipped = data[:2] == b"\x1f\x8b"
    try:
        return (gzip.decompress(data) if gzipped else data).decode("utf-8"), gzipped
    except (OSError, EOFError, UnicodeDecodeError):
        return None


def _json_entries(text: str) -> list[tuple[str, str]] | None:
    """The entries of a JSON object, each as ``"tag": value`` in JSON; None for other texts."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    return [(tag, f"{json.dumps(tag)}: {json.dumps(item)}") for tag, item in value.items()]


_FLOAT_NAMES = {"inf": math.inf, "nan": math.nan}  # as repr writes them, and i6_core evaluates them


class _FloatNames(ast.NodeTransformer):
    def visit_Name(self, node: ast.Name) -> ast.AST:
        return ast.Constant(_FLOAT_NAMES[node.id]) if node.id in _FLOAT_NAMES else node


def _python_entries(text: str) -> list[tuple[str, str]] | None:
    """The entries of a Python dict literal keyed by str, each as its text ``tag: value``; None for other texts.

    A dict written with one entry per line, as recognition hooks write ``search_out.py``, is parsed an entry at a time
    (far less memory than the whole literal) and each entry's text kept as written; any other layout is read whole.
    """
    lines = [line.strip() for line in text.strip().split("\n")]
    if len(lines) >= 2 and lines[0] == "{" and lines[-1] == "}":
        entry_lines = [line for line in lines[1:-1] if line]
        entries: dict[str, str] = {}  # as a dict literal: a tag written twice keeps its first place and last value
        for number, line in enumerate(entry_lines, 1):
            entry = line.removesuffix(",")
            if entry.endswith(",") or (entry == line and number < len(entry_lines)):  # not one entry per line
                break
            value = _python_dict("{" + entry + "}")
            if value is None or len(value) != 1:
                break
            entries[next(iter(value))] = entry
        else:
            return list(entries.items())
    value = _python_dict(text)
    return None if value is None else [(tag, f"{tag!r}: {item!r}") for tag, item in value.items()]


def _python_dict(text: str) -> dict[str, Any] | None:
    """A Python dict literal keyed by str, where ``inf`` and ``nan`` may stand for floats."""
    try:
        value = ast.literal_eval(_FloatNames().visit(ast.parse(text.strip(), mode="eval")))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, dict) and all(isinstance(tag, str) for tag in value) else None


def _move(source: str, target: str) -> None:
    _note_replaced(target)
    shutil.move(source, target)


def _append(source: str, target: str) -> None:
    with open(target, "ab") as out, open(source, "rb") as part:
        shutil.copyfileobj(part, out)


def _note_replaced(target: str) -> None:
    if os.path.exists(target):
        logger.warning(f"forward: replacing the existing {target}")
