"""The HDF ``output_file`` of task forward, written by the trainer's own writers (a network dict's forward, mainline's
``mark_as_output`` without ``forward_callback``), in one process or in several.

In one process the writer writes ``output_file`` itself. Under torchrun each process forwards its share of the
batches and writes it to ``<output_file>.part<rank>`` (noting each sequence's position in the dataset's epoch); when
all are done, rank 0 merges the parts into ``output_file`` in the epoch's order, the order of one process, and deletes
them. So ``output_file`` holds every sequence once, appears complete or not at all, and only rank 0 writes it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from returnn.datasets.util.hdf_merge import merge_hdf_files
from returnn.errors import DatasetError

if TYPE_CHECKING:
    from returnn.torch.distributed import DataParallel

__all__ = ["ForwardOutputFile", "part_filename"]

logger = logging.getLogger(__name__)


def part_filename(filename: str, rank: int) -> str:
    """Where process ``rank`` writes its part of ``filename``."""
    return f"{filename}.part{rank}"


class ForwardOutputFile:
    """One forward output file and, with several processes, this process's part of it.

    :param filename: the ``output_file``
    :param data_parallel: the process group when several processes forward, else None
    :ivar path: where this process's writer writes: ``filename`` itself in one process, else its part
    """

    def __init__(self, filename: str, data_parallel: DataParallel | None):
        if os.path.exists(filename):
            raise DatasetError(
                f"forward: output_file {filename!r} already exists; delete it first, or choose another output_file"
            )
        self.filename = filename
        self.data_parallel = data_parallel
        self.path = filename if data_parallel is None else part_filename(filename, data_parallel.rank)
        self.seq_indices: list[int] = []
        if self.path != filename and os.path.exists(self.path):
            os.remove(self.path)  # the part of a forward run that was interrupted

    def add(self, seq_indices: Iterable[int]) -> None:
        """Note the positions in the epoch of the sequences just written (in the order written)."""
        self.seq_indices.extend(int(index) for index in seq_indices)

    def finish(self, *, written: bool) -> None:
        """After this process's writer closed its file (``written``: it created one): with several processes, rank 0
        merges the parts into ``filename`` and deletes them. Every process must call it (it waits for all)."""
        if self.data_parallel is None:
            return
        gathered = self.data_parallel.gather_to_main((self.path if written else None, self.seq_indices))
        if gathered is None:  # not rank 0
            return
        parts = [(path, indices) for path, indices in gathered if path is not None]
        if parts:  # none: no process got a sequence to write (a mainline writer creates its file on the first)
            num_seqs = merge_hdf_files(self.filename, [path for path, _ in parts], [indices for _, indices in parts])
            logger.info(f"forward: merged {len(parts)} parts ({num_seqs} sequences) into {self.filename}")
        for path, _ in parts:
            os.remove(path)
