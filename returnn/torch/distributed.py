"""Process rank, and the one place through which the trainer writes to disk.

With ``torchrun`` every process runs the same training; only the main process (rank 0) may write checkpoints, the
learning_rates file or delete old models. All such writes go through :func:`write_file_atomic` and
:func:`remove_file`, which do nothing on other ranks. The rank comes from torchrun's environment variables, so this
module needs no ``torch.distributed`` set-up to answer.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import IO, Any

__all__ = ["rank", "world_size", "is_main_process", "write_file_atomic", "remove_file"]


def rank() -> int:
    """The global rank of this process (0 without torchrun)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """The number of training processes (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Whether this process writes files and logs epoch results."""
    return rank() == 0


def write_file_atomic(path: str | os.PathLike, write: Callable[[IO[Any]], None], *, binary: bool = False) -> bool:
    """Write a file so that readers (and a crash) never see it half written.

    ``write`` gets a file object opened on a temporary file in the same directory; after it returns, the file is
    flushed to disk and renamed to ``path``. Missing parent directories are created.

    :param path: the final file name
    :param write: writes the content into the given file object
    :param binary: open the temporary file in binary mode (else text, utf-8)
    :return: whether the file was written (False on ranks other than 0)
    """
    if not is_main_process():
        return False
    path = os.fspath(path)
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    # Not tempfile.mkstemp: its files are private (mode 0600), and pipelines hard-link these files for other users.
    tmp_path = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp_path, "wb") if binary else open(tmp_path, "w", encoding="utf-8") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise
    return True


def remove_file(path: str | os.PathLike) -> bool:
    """Delete a file if it exists (only on the main process). Returns whether a file was deleted."""
    if not is_main_process():
        return False
    try:
        os.remove(path)
    except FileNotFoundError:
        return False
    return True
