"""Task forward under torchrun with the config's own ``forward_init_hook`` / ``forward_step`` /
``forward_finish_hook``: each process forwards its share, rank 0 puts the files together.

Each process forwards its share of the batches (batch i on rank i mod N, as in training) and runs the hooks and the
steps in a working directory of its own, ``forward-parts/rank<R>`` below the run's working directory, with the same
subdirectories (empty). So the files that the hooks open with relative names (``output.hdf``, ``search_out.py``,
``out/prior.txt``) are that process's parts.
When every process is done, rank 0 puts each file into the run's working directory:

- an HDF file in RETURNN's layout (``SimpleHDFWriter``, ``HDFDatasetWriter``): the sequences of all parts, in the
  order of one process (each sequence's position in the epoch, found by its tag);
- a Python dict literal keyed by sequence tag (the ``search_out.py`` of recognition hooks): the entries of all parts,
  in the order of one process, one ``tag: value,`` line each;
- a file that one process wrote alone (say rank 0, from values of all processes that
  ``run_ctx.all_gather(...)`` gave it), or that all wrote the same, as it is.

A file that several processes wrote differently and that is neither of the two mergeable kinds (a sum over the
data, a text with a line per sequence) stops the task with an error that names it; the parts are kept. Such a file
is written in ``forward_finish_hook`` by rank 0 alone (``if run_ctx.rank == 0``) from ``run_ctx.all_gather(...)``.

Relative paths in the hooks and steps resolve in the process's directory, also when reading: read files by
absolute path (as Sisyphus pipelines give them). A file written to an absolute path is written by every process.
"""

from __future__ import annotations

import ast
import contextlib
import filecmp
import functools
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from returnn.datasets.util.hdf_merge import merge_hdf_files
from returnn.errors import StepFunctionError

if TYPE_CHECKING:
    from returnn.torch.distributed import DataParallel

__all__ = ["PARTS_DIR", "ProcessDirectory", "merge_process_files"]

logger = logging.getLogger(__name__)

PARTS_DIR = "forward-parts"
MAX_MIRRORED_DIRECTORIES = 10_000


class ProcessDirectory:
    """This process's working directory for the forward hooks and steps, and what it forwarded.

    :param data_parallel: the process group
    :param root: where the process directories go (relative to the run's working directory)
    """

    def __init__(self, data_parallel: DataParallel, root: str = PARTS_DIR):
        self.data_parallel = data_parallel
        self.home = os.getcwd()
        self.root = os.path.join(self.home, root)
        self.path = os.path.join(self.root, f"rank{data_parallel.rank}")
        self.positions: dict[str, int] = {}  # seq tag -> position in the epoch, of the sequences forwarded here
        if data_parallel.rank == 0 and os.path.exists(self.root):
            shutil.rmtree(self.root)  # the parts of an interrupted run
        data_parallel.all_gather(None)  # nobody creates a directory before rank 0 cleaned up
        os.makedirs(self.path)
        _mirror_directories(self.home, self.path, skip=os.path.relpath(self.root, self.home))

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        """Run a hook or step in this process's directory."""
        os.chdir(self.path)
        try:
            yield
        except FileNotFoundError as error:
            error.add_note(
                f"forward under torchrun: the hooks and forward_step run in {self.path}, where relative paths "
                "resolve; read input files by absolute path"
            )
            raise
        finally:
            os.chdir(self.home)

    def note_batch(self, seq_tags: Sequence[str], seq_indices: Sequence[int]) -> None:
        """Note the sequences of a forwarded batch (their positions order the merged files)."""
        for tag, index in zip(seq_tags, seq_indices):
            self.positions[str(tag)] = int(index)

    def finish(self) -> None:
        """After the finish hook: rank 0 merges the files of all processes into the working directory and removes
        the parts. Every process must call it (it waits for all)."""
        gathered = self.data_parallel.gather_to_main((self.path, self.positions))
        if gathered is None:  # not rank 0
            return
        positions: dict[str, int] = {}
        for _, process_positions in gathered:
            positions.update(process_positions)
        written = merge_process_files([path for path, _ in gathered], positions, self.home)
        for name, how in written.items():
            logger.info(f"forward: wrote {name} ({how})")
        self.remove_all()

    def remove_all(self) -> None:
        """Rank 0, when all processes are done: remove the directories of all processes."""
        shutil.rmtree(self.root)


def _mirror_directories(source: str, target: str, *, skip: str, limit: int = MAX_MIRRORED_DIRECTORIES) -> None:
    """Make the directories below ``source`` (not ``skip``) below ``target`` too, so that a hook can open
    ``sub/dir/file`` for writing in its process directory where it could in the working directory."""
    count = 0
    for folder, subfolders, _ in os.walk(source):
        if folder == source:
            subfolders[:] = [name for name in subfolders if name != skip]
        for name in subfolders:
            if count == limit:
                logger.warning(
                    f"forward: the working directory has more than {limit} directories; the hooks can write files "
                    f"by relative path only below the first {limit} of them"
                )
                return
            os.makedirs(os.path.join(target, os.path.relpath(os.path.join(folder, name), source)), exist_ok=True)
            count += 1


def merge_process_files(directories: Sequence[str], positions: dict[str, int], destination: str) -> dict[str, str]:
    """Put the files below ``directories`` (one per process) together into ``destination`` (see the module doc).

    :param positions: each forwarded sequence's tag and position in the epoch
    :return: the relative name of each file written (sorted), and how it was made from the parts
    :raise StepFunctionError: a file cannot be merged (nothing is written then)
    """
    by_name: dict[str, list[str]] = {}  # name -> the directories that hold it
    for directory in directories:
        for name in _files_below(directory):
            by_name.setdefault(name, []).append(directory)
    plans = {name: _merge_plan(name, holders, positions) for name, holders in sorted(by_name.items())}
    for name, (write, _) in plans.items():
        target = os.path.join(destination, name)
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        write(target)
    return {name: how for name, (_, how) in plans.items()}


def _files_below(directory: str) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(folder, file), directory)
        for folder, _, files in os.walk(directory)
        for file in files
    )


def _merge_plan(name: str, holders: list[str], positions: dict[str, int]) -> tuple[Callable[[str], None], str]:
    """How to write the merged ``name`` from its parts in the process directories ``holders`` (decided before anything
    is written), and that in words."""
    paths = [os.path.join(directory, name) for directory in holders]
    if len(paths) == 1:
        return functools.partial(_replace_with_copy, paths[0]), f"written by {os.path.basename(holders[0])} alone"
    if all(filecmp.cmp(paths[0], other, shallow=False) for other in paths[1:]):
        return functools.partial(_replace_with_copy, paths[0]), f"the same in {len(paths)} processes"
    if _is_returnn_hdf(paths[0]):
        order_keys = [[_position(positions, tag, name) for tag in _hdf_tags(path)] for path in paths]
        how = f"HDF, {sum(map(len, order_keys))} sequences from {len(paths)} processes"
        return functools.partial(_replace, write=lambda tmp: merge_hdf_files(tmp, paths, order_keys)), how
    entries = _dict_entries(name, paths, positions)
    if entries is not None:
        how = f"dict, {len(entries)} sequences from {len(paths)} processes"
        return functools.partial(_replace, write=lambda tmp: _write_dict(tmp, entries)), how
    raise StepFunctionError(
        f"forward: {len(paths)} processes wrote different files {name!r}, which cannot be merged (only HDF files in "
        "RETURNN's layout and Python dicts keyed by sequence tag are merged); the parts are kept in "
        f"{', '.join(holders)}. Write such a file in forward_finish_hook by rank 0 alone "
        "(if run_ctx.rank == 0) from the values of all processes (run_ctx.all_gather(value)), or forward in one process"
    )


def _position(positions: dict[str, int], tag: str, name: str) -> int:
    if tag not in positions:
        raise StepFunctionError(
            f"forward: {name!r} holds the sequence tag {tag!r}, which no process forwarded; the parts of a file are "
            "merged in the order of the sequences they hold, so its entries must be keyed by the data's seq_tag"
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


def _dict_entries(name: str, paths: list[str], positions: dict[str, int]) -> list[tuple[str, Any]] | None:
    """The entries of Python dict literals keyed by forwarded sequence tags, by position; None if a part is not one."""
    entries: list[tuple[int, str, Any]] = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as file:
                value = ast.literal_eval(file.read())
        except (UnicodeDecodeError, ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return None
        if not isinstance(value, dict) or not all(isinstance(tag, str) and tag in positions for tag in value):
            return None
        entries.extend((positions[tag], tag, item) for tag, item in value.items())
    entries.sort(key=lambda entry: entry[0])
    repeated = sorted({tag for (_, tag, _), (_, other, _) in zip(entries, entries[1:]) if tag == other})
    if repeated:
        raise StepFunctionError(
            f"forward: several processes wrote entries for the sequence tags {repeated[:3]} into {name!r}; each "
            "process must write only the sequences it forwarded"
        )
    return [(tag, item) for _, tag, item in entries]


def _write_dict(path: str, entries: list[tuple[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as file:
        file.write("{\n")
        for tag, value in entries:
            file.write(f"{tag!r}: {value!r},\n")
        file.write("}\n")


def _replace_with_copy(source: str, target: str) -> None:
    _replace(target, write=lambda tmp: shutil.copyfile(source, tmp))


def _replace(target: str, *, write: Callable[[str], Any]) -> None:
    """Write ``target`` under a temporary name first, so that it appears complete or not at all."""
    tmp = f"{target}.merging"
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
