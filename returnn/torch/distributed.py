"""Several training processes (torchrun): ranks, the process group, what goes through it, and the one place through
which the trainer writes to disk.

Pipelines start ``python -m torch.distributed.run --standalone --nnodes=1 --nproc-per-node=N rnn.py CONFIG`` (i6_core's
ReturnnTrainingJob with ``horovod_num_processes = N``; its ``use_horovod = True`` is accepted and not needed). With
``WORLD_SIZE > 1`` in the environment, tasks train and eval run data-parallel, and forward, search and compute_priors
each on a share of the data with the results put together by rank 0 (see :mod:`returnn.torch.forward_output` and
:mod:`returnn.torch.forward_parts`); the config key ``torch_distributed`` only adjusts how. Every process runs the
same training:

- Set-up: ``torch.cuda.set_device(LOCAL_RANK)`` first (device ``cuda`` means ``cuda:<LOCAL_RANK>``), then the
  process group (backend ``gloo`` on the CPU, ``cpu:gloo,cuda:nccl`` with CUDA). Rank 0's parameters and buffers are
  broadcast after the model is built and loaded, so all processes start equal.
- Data: each process gets its share of every dataset's batches (``build_data_loader(rank=, world_size=)``: by
  default the epoch's batches are formed as in one process and batch i goes to rank i mod N, see
  :mod:`returnn.torch.data.loader`). Per train step, one all_reduce of a "has a batch" flag keeps the processes in
  step: a process whose share is done takes part in the steps of the others with no gradients until all are done. So
  every batch is used once per epoch, and shares of different sizes cannot hang the training.
- Gradients (``reduce_type = "grad"``, the default): the module is wrapped in torch's ``DistributedDataParallel``
  (:mod:`returnn.torch.ddp`): the gradients are all-reduced in buckets while the backward pass runs and averaged over
  the processes; the steps between updates (``accum_grad_multiple_step``) run under ``no_sync()``. ``train_step``
  still gets the config's own module. DDP's options go into ``torch_distributed["options"]`` (as in mainline
  RETURNN: ``find_unused_parameters``, ``gradient_as_bucket_view``, ``static_graph``, ``bucket_cap_mb``, ...), a
  compressing communication hook into ``torch_distributed["comm_hook"]`` (``"bf16_compress"``, ``"fp16_compress"``).
  If some processes had no data since the last update (the last round of an epoch), the average is corrected to be
  over the processes that had data.
- Gradients (``reduce_type = "grad_explicit"``): at each update step, before unscaling and clipping, the gradients
  are summed over the processes with one all_reduce per bucket (:mod:`returnn.torch.bucketed`) and divided by the
  number of processes that computed any since the last update. Any model and any use of its parameters works,
  without options, but communication does not overlap with the backward pass.
- Sharding (``reduce_type = "fsdp"``): torch's FSDP2 shards the parameters, gradients and optimizer state over the
  processes (:mod:`returnn.torch.fsdp`), for models that do not fit one device with their optimizer state. The
  config's module is sharded in place; every process runs every forward (a process without data repeats its last
  batch with its losses ignored), and the checkpoints hold the full, gathered tensors.
- Parameters (``reduce_type = "param"``): each process updates with its own gradients, and the parameters (and
  floating point buffers) are averaged every ``param_sync_step`` updates and at the end of each epoch's training.
- Scores: the loss sums and inv_norm_factor sums of all processes are added up, so the learning_rates file and the
  logs hold the scores over all the data; dev and eval_datasets are evaluated by all processes, each on its shard.
- Writes: only rank 0 writes files (:func:`write_file_atomic`, :func:`remove_file`); every process reads the
  checkpoints when training resumes. Logs: the other ranks log warnings only, prefixed with ``rank N:``.
- Errors: an error in one process ends it; torchrun then stops the others. Collectives time out after
  ``timeout_sec``, so no process waits forever for one that is gone.

:func:`rank`, :func:`world_size` and the writes read torchrun's environment variables and work without a process
group.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import gc
import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, TypeVar

import torch
import torch.distributed as dist

from returnn.config import Config, declare_options
from returnn.errors import CheckpointError, ConfigError, TrainingError
from returnn.log import log
from returnn.torch import bucketed
from returnn.torch.attempt_store import attempt_store
from returnn.torch.ddp import COMM_HOOKS, DdpStep, check_ddp_options
from returnn.torch.fsdp import FsdpStep, check_fsdp_options

__all__ = [
    "rank",
    "world_size",
    "local_rank",
    "is_main_process",
    "process_seed",
    "process_device",
    "all_gather_values",
    "write_file_atomic",
    "remove_file",
    "DistributedOptions",
    "DataParallel",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

declare_options(
    "Distributed training",
    {
        "torch_distributed": (
            None,
            "Options of training with several processes (started by torchrun, which alone enables it): "
            "{'backend': 'gloo' on CPU / 'cpu:gloo,cuda:nccl' with CUDA, 'timeout_sec': 1800, "
            "'reduce_type': 'grad' (DistributedDataParallel; its arguments in 'options', 'comm_hook': "
            "'bf16_compress' | 'fp16_compress') | 'grad_explicit' (one all_reduce of the gradients per update) | "
            "'param' (average parameters every 'param_sync_step' updates) | 'fsdp' (FSDP2: shard parameters, "
            "gradients and optimizer state; 'fsdp_modules': class names of submodules to shard as units, "
            "'fsdp_forward_methods': methods of the model that the step calls instead of forward, "
            "'param_dtype' / 'reduce_dtype': 'bfloat16' | 'float16' | 'float32', 'cpu_offload': False)}.",
        ),
    },
)

REDUCE_TYPES = ("grad", "grad_explicit", "param", "fsdp")
# An option of mainline RETURNN's parameter averaging; it changes nothing here, and configs that set it still run.
_WITHOUT_EFFECT = ("sync_on_cpu",)


def rank() -> int:
    """The global rank of this process (0 without torchrun)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """The number of training processes (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    """The rank of this process on its machine (0 without torchrun); it picks the GPU."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """Whether this process writes files and logs epoch results."""
    return rank() == 0


def process_seed(seed: int) -> int:
    """The seed of this process's random numbers in an epoch (dropout, ...): ``seed`` itself on rank 0 (as in a
    single process), a different one derived from it on each other rank."""
    if rank() == 0:
        return seed
    digest = hashlib.sha256(f"{seed}:rank{rank()}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def process_device(device: str) -> str:
    """The device of this process: with several processes, ``cuda`` means ``cuda:<LOCAL_RANK>``.

    :param device: the resolved config device ("cpu", "cuda", "cuda:N"); an explicit index is kept (all processes
        on the same machine then share that GPU)
    """
    if world_size() == 1 or device != "cuda":
        return device
    if local_rank() >= torch.cuda.device_count():
        raise ConfigError(
            f"torchrun started process {local_rank()} on this machine, but only {torch.cuda.device_count()} GPU(s) "
            "are visible; start at most as many processes per machine (--nproc-per-node) as there are GPUs"
        )
    return f"cuda:{local_rank()}"


def all_gather_values(data_parallel: DataParallel | None, value: T) -> list[T]:
    """``value`` of every process, by rank, with ``data_parallel``; ``[value]`` in one process."""
    return [value] if data_parallel is None else data_parallel.all_gather(value)


def write_file_atomic(path: str | os.PathLike, write: Callable[[IO[Any]], None], *, binary: bool = False) -> bool:
    """Write a file so that readers (and a crash) never see it half written.

    ``write`` gets a file object opened on a temporary file in the same directory; after it returns, the file is
    flushed to disk and renamed to ``path``. Missing parent directories are created.

    :param path: the final file name
    :param write: writes the content into the given file object
    :param binary: open the temporary file in binary mode (else text, utf-8)
    :return: whether the file was written (False on ranks other than 0)
    :raise TrainingError: the disk is full or read-only (one line naming the file)
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
    except BaseException as exc:
        if os.path.lexists(tmp_path):
            os.remove(tmp_path)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise TrainingError(
                f"cannot write {path!r}: {exc.strerror}; make room (or make it writable) and start the same command "
                "again: it resumes from the last complete checkpoint, nothing written before is lost"
            ) from None
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


# --------------------------------------------------------------------------------------------------
# Options


@dataclasses.dataclass(frozen=True)
class DistributedOptions:
    """The ``torch_distributed`` dict.

    :param backend: the torch.distributed backend; None: ``gloo`` on the CPU, ``cpu:gloo,cuda:nccl`` with CUDA
    :param timeout_sec: how long a collective waits for the other processes
    :param reduce_type: "grad" (DistributedDataParallel), "grad_explicit" (one all_reduce of the gradients at every
        update) or "param" (average parameters periodically)
    :param param_sync_step: with "param": average the parameters every this many updates
    :param options: with "grad": keyword arguments of ``DistributedDataParallel``
    :param comm_hook: with "grad": compress the gradients for the all-reduce, one of
        :data:`~returnn.torch.ddp.COMM_HOOKS`
    :param fsdp_modules: with "fsdp": class names of the submodules that are sharded as units of their own
    :param fsdp_forward_methods: with "fsdp": methods of the module that gather its parameters as ``forward`` does
    :param param_dtype: with "fsdp": the dtype of the parameters in forward and backward (mixed precision)
    :param reduce_dtype: with "fsdp": the dtype in which the gradients are reduced
    :param cpu_offload: with "fsdp": keep the parameter, gradient and optimizer state shards on the CPU
    """

    backend: str | None = None
    timeout_sec: float = 1800.0
    reduce_type: str = "grad"
    param_sync_step: int | None = None
    options: dict[str, Any] | None = None
    comm_hook: str | None = None
    fsdp_modules: list[str] | None = None
    fsdp_forward_methods: list[str] | None = None
    param_dtype: str | None = None
    reduce_dtype: str | None = None
    cpu_offload: bool = False

    @classmethod
    def from_config(cls, config: Config) -> DistributedOptions:
        """From ``torch_distributed`` (None: the defaults); mainline RETURNN's forms are accepted."""
        value = config.typed_value("torch_distributed")
        if value is None:
            return cls()
        where = "config key 'torch_distributed'"
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a dict (e.g. {{}} or {{'reduce_type': 'grad'}}), got {value!r}")
        fields = [field.name for field in dataclasses.fields(cls)]
        if "class" in value:
            raise ConfigError(
                f"{where}: 'class' (a custom DDP wrapper) is not supported: gradients are averaged over the processes "
                "without a wrapper; remove it"
            )
        unknown = sorted(set(value) - set(fields) - set(_WITHOUT_EFFECT))
        if unknown:
            raise ConfigError(f"{where}: unknown option(s) {', '.join(map(repr, unknown))}; choose from: {fields}")
        ignored = sorted(set(value) & set(_WITHOUT_EFFECT))
        if ignored and world_size() > 1 and is_main_process():
            logger.info(f"{where}: {ignored} have no effect here")
        return cls(**{key: item for key, item in value.items() if key in fields})

    def __post_init__(self) -> None:
        where = "config key 'torch_distributed'"
        if self.reduce_type not in REDUCE_TYPES:
            raise ConfigError(
                f"{where}: unknown reduce_type {self.reduce_type!r}; choose one of: {', '.join(REDUCE_TYPES)}"
            )
        if self.reduce_type == "param" and not (isinstance(self.param_sync_step, int) and self.param_sync_step >= 1):
            raise ConfigError(
                f"{where}: reduce_type 'param' needs 'param_sync_step', an int >= 1 (average every N updates), "
                f"got {self.param_sync_step!r}"
            )
        if self.reduce_type != "param" and self.param_sync_step is not None:
            raise ConfigError(f"{where}: 'param_sync_step' is used only with reduce_type 'param'")
        for name in ("options", "comm_hook"):
            if self.reduce_type != "grad" and getattr(self, name) is not None:
                raise ConfigError(f"{where}: {name!r} is used only with reduce_type 'grad' (DistributedDataParallel)")
        if self.options is not None:
            check_ddp_options(self.options, where)
        for name in ("fsdp_modules", "fsdp_forward_methods", "param_dtype", "reduce_dtype", "cpu_offload"):
            if self.reduce_type != "fsdp" and getattr(self, name) not in (None, False):
                raise ConfigError(f"{where}: {name!r} is used only with reduce_type 'fsdp'")
        check_fsdp_options(
            self.fsdp_modules, self.fsdp_forward_methods, self.param_dtype, self.reduce_dtype, self.cpu_offload, where
        )
        if self.comm_hook is not None and self.comm_hook not in COMM_HOOKS:
            raise ConfigError(
                f"{where}: unknown comm_hook {self.comm_hook!r}; choose one of: {', '.join(COMM_HOOKS)} (or None)"
            )
        if isinstance(self.timeout_sec, bool) or not (
            isinstance(self.timeout_sec, (int, float)) and self.timeout_sec > 0
        ):
            raise ConfigError(f"{where}: 'timeout_sec' must be a number > 0, got {self.timeout_sec!r}")
        if self.backend is not None and not (isinstance(self.backend, str) and _has_cpu_backend(self.backend)):
            raise ConfigError(
                f"{where}: backend {self.backend!r} cannot handle CPU tensors, which the training syncs every step; "
                "use e.g. 'gloo' or 'cpu:gloo,cuda:nccl'"
            )

    def backend_for(self, device: str) -> str:
        """The backend to use on this device."""
        if self.backend is not None:
            return self.backend
        return "cpu:gloo,cuda:nccl" if torch.device(device).type == "cuda" else "gloo"


def _has_cpu_backend(backend: str) -> bool:
    parts = [part.strip() for part in backend.lower().split(",")]
    return any(part in ("gloo", "mpi") or part.startswith("cpu:") for part in parts)


# --------------------------------------------------------------------------------------------------
# The process group and its collectives


class DataParallel:
    """The process group of a training with several processes, and what the trainer exchanges through it.

    Create it with :meth:`started`. Every method is a collective: all processes must call it, in the same order.
    """

    def __init__(self, options: DistributedOptions):
        self.options = options
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.ddp: DdpStep | None = None  # with reduce_type "grad", once the model is wrapped
        self.fsdp: FsdpStep | None = None  # with reduce_type "fsdp", once the model is sharded
        self._all_had_data = True  # in every step since the last update, every process had a batch

    @classmethod
    @contextlib.contextmanager
    def started(cls, options: DistributedOptions, device: str) -> Iterator[DataParallel]:
        """Set up the process group from torchrun's environment; tear it down at the end, also after an error.

        :param device: this process's device (see :func:`process_device`)
        """
        if torch.device(device).type == "cuda":
            torch.cuda.set_device(torch.device(device))  # before anything else creates a context on GPU 0
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
        if missing:
            raise ConfigError(
                f"WORLD_SIZE={world_size()} asks for several processes, but {' and '.join(missing)} are not set; "
                "start the training with torchrun (python -m torch.distributed.run --nproc-per-node=N rnn.py ...)"
            )
        backend = options.backend_for(device)
        timeout = datetime.timedelta(seconds=options.timeout_sec)
        dist.init_process_group(
            backend=backend,
            timeout=timeout,
            store=attempt_store(timeout, rank(), world_size()),
            rank=rank(),
            world_size=world_size(),
        )
        data_parallel = None
        try:
            quiet_non_main_logging(dist.get_rank())
            logger.info(
                f"distributed: processes={dist.get_world_size()} backend={backend} "
                f"reduce_type={options.reduce_type} timeout={options.timeout_sec:g}s"
            )
            data_parallel = cls(options)
            yield data_parallel
        finally:
            if data_parallel is not None:
                data_parallel.release_model()
            dist.destroy_process_group()

    # ---------------------------------------------------------------- steps

    def in_step(self, batches: Iterable[T]) -> Iterator[T | None]:
        """The batches of this process, in step with the other processes: ``None`` when this process has no batch
        left but others have; the iteration ends when no process has one."""
        iterator = iter(batches)
        done = object()
        flag = torch.zeros(1, dtype=torch.int32)
        while True:
            batch = next(iterator, done)
            flag[0] = 0 if batch is done else 1
            dist.all_reduce(flag)
            num_with_data = int(flag[0])
            if num_with_data == 0:
                return
            self._all_had_data &= num_with_data == self.world_size
            yield None if batch is done else batch

    # ---------------------------------------------------------------- gradients and parameters

    def wrap_model(self, module: torch.nn.Module, device: str) -> None:
        """With reduce_type "grad": wrap the module in DistributedDataParallel (see :mod:`returnn.torch.ddp`); the
        module itself stays what the step functions get and what is saved. With "fsdp": shard the module in place
        (see :mod:`returnn.torch.fsdp`)."""
        if self.options.reduce_type == "grad":
            self.ddp = DdpStep(module, self.options.options or {}, self.options.comm_hook, device)
        elif self.options.reduce_type == "fsdp":
            self.fsdp = FsdpStep(
                module,
                fsdp_modules=self.options.fsdp_modules,
                fsdp_forward_methods=self.options.fsdp_forward_methods,
                param_dtype=self.options.param_dtype,
                reduce_dtype=self.options.reduce_dtype,
                cpu_offload=self.options.cpu_offload,
            )

    @property
    def needs_every_forward(self) -> bool:
        """Whether every process must run each step's forward (FSDP gathers the parameters in it), also a process
        without data and in evaluation."""
        return self.fsdp is not None

    def release_model(self) -> None:
        """Drop the DDP wrapper (and the FSDP state) while the process group still exists. Else the group would be
        destroyed later, when the wrapper is garbage collected, with the Python lock held, while gloo's threads may
        still need it to free the tensors of finished collectives: a deadlock at exit."""
        self.ddp = None
        self.fsdp = None
        gc.collect()

    def gradient_step(self, *, sync: bool) -> contextlib.AbstractContextManager[None]:
        """Around one train step's forward and backward pass; ``sync``: it is an update step."""
        if self.fsdp is not None:
            return self.fsdp.step(sync=sync)
        return self.ddp.step(sync=sync) if self.ddp is not None else contextlib.nullcontext()

    def before_backward(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss to call ``backward`` on (inside :meth:`gradient_step`)."""
        return self.ddp.before_backward(loss) if self.ddp is not None else loss

    def backward_without_data(self) -> None:
        """In a step in which this process has no batch but others have (inside :meth:`gradient_step`): take part
        in their gradient all-reduce."""
        if self.ddp is not None:
            self.ddp.backward_without_data()

    def reduce_gradients(self, params: list[torch.nn.Parameter], *, contributed: bool) -> None:
        """At an update step, before the gradients are used: make them the average over the processes that
        computed gradients since the last update.

        With "grad_explicit" (or "grad" before the model is wrapped): replace each gradient by its sum over the
        processes, divided by the number of processes that computed any. A parameter without gradient in some
        process counts as zero there; one without gradient in every process keeps ``grad = None``. With DDP or FSDP,
        which averaged over all processes already, rescale if some had no data.

        :param contributed: whether this process computed gradients since the last update
        """
        all_had_data, self._all_had_data = self._all_had_data, True
        if self.options.reduce_type == "param":
            return
        if self.ddp is not None or self.fsdp is not None:
            if not all_had_data:
                self._rescale_to_contributors(params, contributed)
            return
        presence = torch.tensor([p.grad is not None for p in params] + [contributed], dtype=torch.int32)
        dist.all_reduce(presence)
        *counts, num_contributors = presence.tolist()
        grads = []
        for param, count in zip(params, counts):
            if count == 0:
                continue
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            elif param.grad.is_sparse:
                raise TrainingError(
                    f"a parameter of shape {tuple(param.shape)} has a sparse gradient, which training with several "
                    "processes does not support; use dense gradients (e.g. Embedding(sparse=False))"
                )
            grads.append(param.grad)
        bucketed.all_reduce(grads, divide_by=max(num_contributors, 1))

    def _rescale_to_contributors(self, params: list[torch.nn.Parameter], contributed: bool) -> None:
        count = torch.tensor([int(contributed)], dtype=torch.int32)
        dist.all_reduce(count)
        num_contributors = int(count[0])
        if 0 < num_contributors < self.world_size:
            with torch.no_grad():
                for param in params:
                    if param.grad is not None:
                        param.grad.mul_(self.world_size / num_contributors)

    def after_update(self, params: list[torch.nn.Parameter], *, num_updates: int) -> None:
        """With reduce_type "param": average the parameters every ``param_sync_step`` updates.

        :param num_updates: the updates done so far, this one included
        """
        if self.options.reduce_type == "param" and num_updates % self.options.param_sync_step == 0:
            with torch.no_grad():
                bucketed.all_reduce([p.data for p in params], divide_by=self.world_size)

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Give every process rank 0's parameters and buffers."""
        with torch.no_grad():
            bucketed.broadcast([t.data for t in (*module.parameters(), *module.buffers())])

    def sync_module(self, module: torch.nn.Module) -> None:
        """At the end of an epoch's training, make the module equal in all processes (saved and evaluated next):
        with "grad", rank 0's buffers (e.g. batch norm statistics, which each process gathered from its own data);
        with "param", the average of the parameters and floating point buffers."""
        buffers = [b.data for b in module.buffers()]
        with torch.no_grad():
            if self.options.reduce_type == "param":
                floating = [b for b in buffers if b.is_floating_point()]
                bucketed.all_reduce([p.data for p in module.parameters()] + floating, divide_by=self.world_size)
                buffers = [b for b in buffers if not b.is_floating_point()]
            bucketed.broadcast(buffers)

    # ---------------------------------------------------------------- values

    def sum_totals(self, sums: dict[str, list[float]], counts: list[int]) -> tuple[dict[str, list[float]], list[int]]:
        """Add up per-name sums (``{loss name: [Σloss, Σinv_norm_factor]}``) and counts over the processes. A
        process may lack names (e.g. it had no batch); the result is the same in every process.

        :return: the total sums (names in the order of their first appearance by rank) and the total counts
        """
        gathered = self.all_gather((sums, counts))
        total_sums: dict[str, list[float]] = {}
        for process_sums, _ in gathered:
            for name, values in process_sums.items():
                total = total_sums.setdefault(name, [0.0] * len(values))
                for i, value in enumerate(values):
                    total[i] += value
        total_counts = [sum(process_counts[i] for _, process_counts in gathered) for i in range(len(counts))]
        return total_sums, total_counts

    def all_gather(self, value: T) -> list[T]:
        """``value`` of every process, by rank (pickled; for small values)."""
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def gather_to_main(self, value: T) -> list[T] | None:
        """``value`` of every process, by rank, on rank 0 (None elsewhere). Tensors must be on the CPU: they are
        pickled, and would otherwise be unpickled onto the sender's GPU."""
        gathered: list[Any] | None = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(value, gathered, dst=0)
        return gathered

    def check_same(self, value: Any, what: str) -> None:
        """Raise an error in every process if the processes see different values of ``what``."""
        values = self.all_gather(value)
        if any(other != values[0] for other in values):
            by_rank = ", ".join(f"rank {i}: {other!r}" for i, other in enumerate(values))
            raise CheckpointError(
                f"the training processes disagree on {what} ({by_rank}); all processes must see the same files "
                "(put the model directory and the learning_rates file on a file system shared by all machines)"
            )


def quiet_non_main_logging(rank_: int) -> None:
    """On ranks other than 0, from now on: only warnings and errors, prefixed with the rank."""
    log.quiet_non_main_rank(rank_)
