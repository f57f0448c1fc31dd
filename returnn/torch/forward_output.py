"""The outputs of task forward in several processes: the HDF ``output_file`` written by the trainer's own writers (a
network dict's forward, mainline's ``mark_as_output`` without ``forward_callback``), and a config's
``forward_callback``.

In one process the writer writes ``output_file`` itself. Under torchrun each process forwards its share of the
batches and writes it to ``<output_file>.part<rank>`` (noting each sequence's position in the dataset's epoch); when
all are done, rank 0 merges the parts into ``output_file`` in the epoch's order, the order of one process, and deletes
them. So ``output_file`` holds every sequence once, appears complete or not at all, and only rank 0 writes it.

A config's ``forward_callback`` runs in rank 0 alone (:class:`GatheredCallback`): each process writes the outputs of
its sequences to a part file (pickled, in the process directory of :mod:`returnn.torch.forward_parts`), and when all
are done, rank 0 calls ``init``, then ``process_seq`` for every sequence in the epoch's order (also where a process got
its sequences out of order, from DataLoader workers), then ``finish``. The parts go through the file system, so rank
0 holds the outputs of one sequence at a time (and two ints per sequence), whatever the data size.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
from collections.abc import Callable, Iterable
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
        missing = [path for path, _ in parts if not os.path.exists(path)]
        if missing:
            raise DatasetError(
                f"forward under torchrun: rank 0 cannot find the parts {', '.join(missing)} that the other processes "
                f"wrote, so it cannot merge them into {self.filename!r}; the output_file must lie on a file system "
                "that all processes share (start every node's process in one shared working directory)"
            )
        if parts:  # none: no process got a sequence to write (a mainline writer creates its file on the first)
            num_seqs = merge_hdf_files(self.filename, [path for path, _ in parts], [indices for _, indices in parts])
            logger.info(f"forward: merged {len(parts)} parts ({num_seqs} sequences) into {self.filename}")
        for path, _ in parts:
            os.remove(path)


class GatheredCallback:
    """A config's ``forward_callback`` under torchrun: it sees every sequence once, in rank 0, in the epoch's order.

    :param make_callback: creates the callback (called in rank 0 only)
    :param data_parallel: the process group
    """

    def __init__(self, make_callback: Callable[[], ForwardCallbackIface], data_parallel: DataParallel):
        self.make_callback = make_callback
        self.data_parallel = data_parallel
        self.directory = ProcessDirectory(data_parallel, for_hooks=False)
        self.path = os.path.join(self.directory.path, "outputs.pickle")
        self.file = open(self.path, "wb")
        self.index: list[tuple[int, int]] = []  # (position in the epoch, offset in the file) of each sequence

    def add(self, position: int, seq_tag: str, outputs: TensorDict) -> None:
        """The outputs of the sequence at ``position`` in the epoch."""
        self.index.append((int(position), self.file.tell()))
        pickle.dump((seq_tag, outputs), self.file, protocol=pickle.HIGHEST_PROTOCOL)

    def finish(self, model: Any) -> None:
        """Rank 0 hands the sequences of all processes to the callback, then removes the parts. Every process must
        call it (it waits for all).

        :param model: what the callback's ``init(model=)`` gets
        """
        self.file.close()
        parts = self.data_parallel.gather_to_main((self.path, self.index))
        if parts is None:  # not rank 0
            return
        # a process's sequences need not come in the epoch's order (batching_scope "shard" with DataLoader workers)
        order = sorted((position, rank, offset) for rank, (_, index) in enumerate(parts) for position, offset in index)
        callback = self.make_callback()
        callback.init(model=model)
        with contextlib.ExitStack() as stack:
            files = [stack.enter_context(open(path, "rb")) for path, _ in parts]
            for _, rank, offset in order:
                files[rank].seek(offset)
                seq_tag, outputs = pickle.load(files[rank])
                callback.process_seq(seq_tag=seq_tag, outputs=outputs)
        callback.finish()
        logger.info(f"forward: forward_callback got the {len(order)} sequences of {len(parts)} processes")
        self.directory.remove_all()
