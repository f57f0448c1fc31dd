"""The outputs of task forward in several processes: the HDF ``output_file`` written by the trainer's own writers (a
network dict's forward, mainline's ``mark_as_output`` without ``forward_callback``), and a config's
``forward_callback``.

In one process the writer writes ``output_file`` itself. Under torchrun each process forwards its share of the
batches and writes it to ``<output_file>.part<rank>`` (noting each sequence's position in the dataset's epoch); when
all are done, rank 0 merges the parts into ``output_file`` in the epoch's order, the order of one process, and deletes
them. So ``output_file`` holds every sequence once, appears complete or not at all, and only rank 0 writes it.

A config's ``forward_callback`` runs in rank 0 alone (:class:`GatheredCallback`): each process writes the outputs of
its sequences to a part file (pickled, in the process directory of :mod:`returnn.torch.forward_parts`), and when all
are done, rank 0 calls ``init``, then ``process_seq`` for every sequence in the order of one process, then
``finish``. The parts go through the file system, so rank 0 holds one sequence at a time, whatever the data size.
"""

from __future__ import annotations

import heapq
import logging
import os
import pickle
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from returnn.datasets.util.hdf_merge import merge_hdf_files
from returnn.errors import DatasetError
from returnn.forward_iface import ForwardCallbackIface
from returnn.tensor import TensorDict
from returnn.torch.forward_parts import ProcessDirectory

if TYPE_CHECKING:
    from returnn.torch.distributed import DataParallel

__all__ = ["ForwardOutputFile", "GatheredCallback", "part_filename"]

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


class GatheredCallback:
    """A config's ``forward_callback`` under torchrun: it sees every sequence once, in rank 0, in the order of one
    process.

    :param make_callback: creates the callback (called in rank 0 only)
    :param data_parallel: the process group
    """

    def __init__(self, make_callback: Callable[[], ForwardCallbackIface], data_parallel: DataParallel):
        self.make_callback = make_callback
        self.data_parallel = data_parallel
        self.directory = ProcessDirectory(data_parallel, for_hooks=False)
        self.path = os.path.join(self.directory.path, "outputs.pickle")
        self.file = open(self.path, "wb")

    def add(self, position: int, seq_tag: str, outputs: TensorDict) -> None:
        """The outputs of the sequence at ``position`` in the epoch."""
        pickle.dump((int(position), seq_tag, outputs), self.file, protocol=pickle.HIGHEST_PROTOCOL)

    def finish(self, model: Any) -> None:
        """Rank 0 hands the sequences of all processes to the callback, then removes the parts. Every process must
        call it (it waits for all).

        :param model: what the callback's ``init(model=)`` gets
        """
        self.file.close()
        paths = self.data_parallel.gather_to_main(self.path)
        if paths is None:  # not rank 0
            return
        callback = self.make_callback()
        callback.init(model=model)
        num_seqs = 0
        for _, seq_tag, outputs in heapq.merge(*(_records(path) for path in paths), key=lambda record: record[0]):
            callback.process_seq(seq_tag=seq_tag, outputs=outputs)
            num_seqs += 1
        callback.finish()
        logger.info(f"forward: forward_callback got the {num_seqs} sequences of {len(paths)} processes")
        self.directory.remove_all()


def _records(path: str) -> Iterator[tuple[int, str, TensorDict]]:
    with open(path, "rb") as file:
        while True:
            try:
                yield pickle.load(file)
            except EOFError:
                return
