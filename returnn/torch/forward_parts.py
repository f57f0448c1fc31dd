"""Task forward under torchrun with the config's own ``forward_init_hook`` / ``forward_step`` /
``forward_finish_hook``: each process forwards its share, rank 0 puts the files together.

Each process forwards its share of the batches (batch i on rank i mod N, as in training) and runs the hooks and the
steps in a working directory of its own, ``forward-parts/rank<R>`` below the run's working directory, with the same
subdirectories (empty). So the files that the hooks open with relative names (``output.hdf``, ``search_out.py``,
``out/prior.txt``) are that process's parts. When every process is done, rank 0 puts them together into the working
directory as one process would have written them (:mod:`returnn.torch.forward_merge`), or stops with an error that
names a file it cannot merge, with the parts kept.

Relative paths in the hooks and steps resolve in the process's directory, also when reading: read files by absolute
path (as Sisyphus pipelines give them). A file written to an absolute path is written by every process, each with
its share: the processes note what they open for writing (Python's audit events; not what C code such as h5py
writes), and rank 0 warns about files that several processes wrote outside their directories. All processes must
share the working directory (rank 0 reads their parts): a process that does not see rank 0's files there stops the
task at the start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from returnn.errors import ReturnnError
from returnn.torch.forward_merge import log_written, merge_process_files

if TYPE_CHECKING:
    from returnn.torch.distributed import DataParallel

__all__ = ["PARTS_DIR", "ProcessDirectory"]

logger = logging.getLogger(__name__)

PARTS_DIR = "forward-parts"
MAX_MIRRORED_DIRECTORIES = 10_000
_MARKER = "rank0-was-here"  # rank 0 writes it into the parts directory; every process must see it
_NOT_OUTPUTS = ("/dev/", "/proc/", "/sys/")


class ProcessDirectory:
    """This process's working directory for the forward hooks and steps, what it forwarded and what it wrote.

    :param data_parallel: the process group
    :param root: where the process directories go (relative to the run's working directory)
    :param for_hooks: the hooks and steps run in it (:meth:`inside`): make the working directory's subdirectories
        in it too
    """

    def __init__(self, data_parallel: DataParallel, root: str = PARTS_DIR, *, for_hooks: bool = True):
        self.data_parallel = data_parallel
        self.home = os.getcwd()
        self.root = os.path.join(self.home, root)
        self.path = os.path.join(self.root, f"rank{data_parallel.rank}")
        self.positions: dict[str, int] = {}  # seq tag -> position in the epoch, of the sequences forwarded here
        self.appended: set[str] = set()  # files in this directory opened for appending (relative names)
        self.outside: set[str] = set()  # files outside it opened for writing (absolute paths)
        marker = os.path.join(self.root, _MARKER)
        token = None
        if data_parallel.rank == 0:
            if os.path.exists(self.root):
                logger.warning(f"forward: removing {self.root}, the parts of an earlier forward that did not finish")
                shutil.rmtree(self.root)
            os.makedirs(self.root)
            token = uuid.uuid4().hex  # this run's: a marker left by an earlier run elsewhere does not count
            with open(marker, "w") as file:
                file.write(token)
        token = data_parallel.all_gather(token)[0]  # nobody looks before rank 0 cleaned up and made its marker
        self._check_shared(_appears(marker, token))
        os.makedirs(self.path)
        if for_hooks:
            _mirror_directories(self.home, self.path, skip=os.path.relpath(self.root, self.home))

    def _check_shared(self, sees_marker: bool) -> None:
        """Rank 0 merges the files of all processes, so all must work in one shared working directory."""
        blind = [rank for rank, seen in enumerate(self.data_parallel.all_gather(sees_marker)) if not seen]
        if blind:
            raise ReturnnError(
                f"forward under torchrun: the processes of rank {', '.join(map(str, blind))} do not see the files "
                f"of rank 0 in {self.root} (each node has a working directory of its own?); rank 0 merges the outputs "
                "of all processes, so all must run in one working directory on a shared file system. Start the run "
                "there (cd to a shared directory on every node), or forward in one process"
            )

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        """Run a hook or step in this process's directory, noting the files it opens for writing."""
        global _watched
        _add_audit_hook()
        os.chdir(self.path)
        _watched = self
        try:
            yield
        except (OSError, ReturnnError) as error:
            if isinstance(error, OSError) and not _names_relative_path(error):
                raise
            error.add_note(
                f"forward under torchrun: the hooks and forward_step run in {self.path}, where relative paths "
                "resolve; read input files by absolute path"
            )
            raise
        finally:
            _watched = None
            os.chdir(self.home)

    def note_batch(self, seq_tags: Sequence[str], seq_indices: Sequence[int]) -> None:
        """Note the sequences of a forwarded batch (their positions order the merged files)."""
        for tag, index in zip(seq_tags, seq_indices):
            self.positions[str(tag)] = int(index)

    def note_write(self, path: Any, *, append: bool) -> None:
        """A file was opened for writing (or renamed to ``path``)."""
        if not isinstance(path, (str, bytes, os.PathLike)):
            return  # a file descriptor
        absolute = os.path.abspath(os.fsdecode(path))
        if absolute.startswith(self.path + os.sep):
            if append:
                self.appended.add(os.path.relpath(absolute, self.path))
        elif not absolute.startswith(_NOT_OUTPUTS):
            self.outside.add(absolute)

    def finish(self) -> None:
        """After the finish hook: rank 0 merges the files of all processes into the working directory and removes
        the parts. Every process must call it (it waits for all)."""
        gathered = self.data_parallel.gather_to_main((self.path, self.positions, self.appended, self.outside))
        if gathered is None:  # not rank 0
            return
        missing = [path for path, *_ in gathered if not os.path.isdir(path)]
        if missing:
            raise ReturnnError(
                f"forward under torchrun: rank 0 cannot find the directories {', '.join(missing)} of the other "
                "processes (removed during the run?), so it cannot merge their outputs"
            )
        positions: dict[str, int] = {}
        for _, process_positions, _, _ in gathered:
            positions.update(process_positions)
        _warn_about_shared_outside_files([outside for *_, outside in gathered])
        appended = set().union(*(process_appended for _, _, process_appended, _ in gathered))
        log_written(merge_process_files([path for path, *_ in gathered], positions, self.home, appended=appended))
        self.remove_all()

    def remove_all(self) -> None:
        """Rank 0, when all processes are done: remove the directories of all processes."""
        shutil.rmtree(self.root)


_watched: ProcessDirectory | None = None  # the directory whose hook or step is running
_audit_hook_added = False


def _add_audit_hook() -> None:
    """Once per process (an audit hook cannot be removed; it does nothing while no hook or step runs)."""
    global _audit_hook_added
    if not _audit_hook_added:
        sys.addaudithook(_audit)
        _audit_hook_added = True


def _audit(event: str, args: tuple[Any, ...]) -> None:
    """Note the files opened for writing. It must not open files itself: that would call it again."""
    directory = _watched
    if directory is None:
        return
    if event == "open" and len(args) == 3 and isinstance(args[2], int) and args[2] & (os.O_WRONLY | os.O_RDWR):
        directory.note_write(args[0], append=bool(args[2] & os.O_APPEND))
    elif event == "os.rename" and len(args) >= 2:
        directory.note_write(args[1], append=False)


def _appears(path: str, content: str, wait_sec: float = 10.0) -> bool:
    """Whether the file ``path`` holds ``content``, waiting a little for a network file system that shows new files
    late."""
    deadline = time.monotonic() + wait_sec
    while not _holds(path, content):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
        with contextlib.suppress(OSError):
            os.listdir(os.path.dirname(os.path.dirname(path)))  # makes NFS look at the directory again
    return True


def _holds(path: str, content: str) -> bool:
    try:
        with open(path) as file:
            return file.read() == content
    except OSError:
        return False


def _names_relative_path(error: OSError) -> bool:
    name = error.filename
    return isinstance(name, (str, bytes, os.PathLike)) and not os.path.isabs(os.fsdecode(name))


def _warn_about_shared_outside_files(outside: list[set[str]]) -> None:
    """Warn about files that several processes wrote outside their directories: each wrote over the others."""
    counts: dict[str, int] = {}
    for paths in outside:
        for path in paths:
            counts[path] = counts.get(path, 0) + 1
    shared = sorted(path for path, count in counts.items() if count > 1)
    if shared:
        more = f", and {len(shared) - 3} more" if len(shared) > 3 else ""
        logger.warning(
            f"forward: several processes wrote the same files outside their directories ({', '.join(shared[:3])}"
            f"{more}): unless they wrote the same, such a file holds the share of the last process only. Under "
            "torchrun, write outputs by relative path (rank 0 merges them), or by rank 0 alone (if run_ctx.rank == 0) "
            "from run_ctx.all_gather(value)"
        )


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
