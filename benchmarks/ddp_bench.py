"""Per-update cost of the gradient synchronisation: DDP (``reduce_type = "grad"``) against the explicit all_reduce
(``"grad_explicit"``) and against no synchronisation at all, through the trainer's own DataParallel and Updater.

Starts ``--nproc`` processes (gloo on the CPU, nccl on CUDA, one GPU each); each trains the same model on its own
random batches, one update per step, for each mode in turn. The table: milliseconds per update (the median over
the measured steps of the slowest process; the median of that over ``--rounds`` rounds in which the modes
alternate) and the overhead over "local" (the same steps without any synchronisation).

    OMP_NUM_THREADS=1 python benchmarks/ddp_bench.py --nproc 2 --steps 60
    python benchmarks/ddp_bench.py --device cuda --nproc 2 --model encoder --batch 16 --amp bfloat16
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import sys
import time

import torch
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from returnn.torch.device import autocast
from returnn.torch.distributed import DataParallel, DistributedOptions
from returnn.torch.updater import Updater

MODES = ("local", "grad_explicit", "grad")


def build_model(kind: str) -> torch.nn.Module:
    """``mlp``: 80 -> 3 x Linear(1024) -> 100 (3.3M parameters); ``encoder``: a conformer-sized Transformer
    encoder (12 x 512)."""
    if kind == "mlp":
        layers = [torch.nn.Linear(80, 1024), torch.nn.ReLU()]
        for _ in range(3):
            layers += [torch.nn.Linear(1024, 1024), torch.nn.ReLU()]
        return torch.nn.Sequential(*layers, torch.nn.Linear(1024, 100))
    layer = torch.nn.TransformerEncoderLayer(512, 8, 2048, batch_first=True)
    return torch.nn.Sequential(
        torch.nn.Linear(80, 512), torch.nn.TransformerEncoder(layer, 12, enable_nested_tensor=False),
        torch.nn.Linear(512, 100),
    )  # fmt: skip


def run_mode(mode: str, args: argparse.Namespace, device: str, data_parallel: DataParallel | None) -> list[float]:
    """Seconds per update of each measured step."""
    torch.manual_seed(0)
    model = build_model(args.model).to(device)
    if data_parallel is not None:
        data_parallel.options = DistributedOptions(reduce_type=mode)
        data_parallel.ddp = None
        data_parallel.wrap_model(model, device)
    amp = getattr(torch, args.amp) if args.amp else None
    updater = Updater(
        model, optimizer_options={"class": "sgd"}, learning_rate=1e-4, device=device, amp_dtype=amp,
        data_parallel=data_parallel,
    )  # fmt: skip
    x = torch.randn(args.batch, args.time, 80, device=device)
    target = torch.randint(0, 100, (args.batch, args.time), device=device)
    times = []
    for step in range(args.warmup + args.steps):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        with data_parallel.gradient_step(sync=True) if data_parallel is not None else contextlib.nullcontext():
            with autocast(device, amp):
                logits = model(x)
                loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), target.flatten())
            updater.backward(loss)
        updater.step(step)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    return times


def worker(rank: int, args: argparse.Namespace, port: int, queue: mp.Queue) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(args.nproc))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = f"cuda:{rank}" if args.device == "cuda" else "cpu"
    results: dict[str, list[list[float]]] = {mode: [] for mode in MODES}
    with DataParallel.started(DistributedOptions(timeout_sec=300), device) as data_parallel:
        for _ in range(args.rounds):  # the modes alternate, so that load from elsewhere hits them alike
            for mode in MODES:
                times = run_mode(mode, args, device, None if mode == "local" else data_parallel)
                results[mode].append(data_parallel.all_gather(statistics.median(times)))
    if rank == 0:
        queue.put(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--model", choices=("mlp", "encoder"), default="mlp")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--time", type=int, default=50)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--amp", choices=("bfloat16", "float16"), default=None)
    args = parser.parse_args()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(worker, args=(args, port, queue), nprocs=args.nproc, join=True)
    results = queue.get()
    params = sum(p.numel() for p in build_model(args.model).parameters())
    print(f"model={args.model} params={params} nproc={args.nproc} device={args.device} amp={args.amp}")
    print("| mode | ms/update (slowest process, median) | sync overhead ms/update |")
    print("|---|---|---|")

    def slowest(mode: str) -> float:  # the median over the rounds of the slowest process's median step
        return statistics.median(max(per_process) for per_process in results[mode])

    local = slowest("local")
    for mode in MODES:
        seconds = slowest(mode)
        print(f"| {mode} | {seconds * 1e3:.1f} | {(seconds - local) * 1e3:+.1f} |")


if __name__ == "__main__":
    main()
