"""The checks that need CUDA GPUs, in a few minutes, with one table at the end (``scripts/gpu_check.sh`` runs it).

Rows: the CUDA tests (``pytest -m gpu``, skipped on CPU machines); DDP over NCCL on 1 GPU, 2 GPUs and all GPUs
(``ddp_bench.py``, the conformer-sized encoder: ms per update, samples/s, scaling efficiency); the same with bf16 and
fp16 AMP; ``rnn.py`` itself under torchrun with reduce_type "grad" (DDP) and "fsdp" (FSDP2) on 1 and all GPUs (an
epoch's samples/s, and a checkpoint that loads with ``weights_only=True``); and the throughput of a training loop fed
by the data pipeline with one DataLoader worker (samples/s and the GPU-busy fraction: CUDA kernel time from the
profiler over wall time).

    python benchmarks/gpu_check.py            # all visible GPUs
    python benchmarks/gpu_check.py --quick    # fewer steps
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)


def run(command: list[str], timeout: float) -> tuple[int, str]:
    """Exit code and output (stdout and stderr) of a command run from the repository root."""
    try:
        result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout:.0f} s"
    return result.returncode, result.stdout + result.stderr


def gpu_tests() -> tuple[str, str]:
    code, output = run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests"], timeout=300)
    summary = output.strip().splitlines()[-1] if output.strip() else ""
    return ("ok" if code == 0 else f"FAILED (exit {code})"), summary  # 5: no test collected (markers lost?)


def ddp(nproc: int, steps: int, amp: str | None = None) -> tuple[str, str, float | None]:
    """(status, detail, samples/s of DDP) from ddp_bench.py with the encoder model."""
    batch = 16
    command = [sys.executable, "benchmarks/ddp_bench.py", "--device", "cuda", "--nproc", str(nproc)]
    command += ["--model", "encoder", "--batch", str(batch), "--time", "200", "--steps", str(steps), "--rounds", "1"]
    if amp:
        command += ["--amp", amp]
    code, output = run(command, timeout=400)
    rows = dict(re.findall(r"^\| (\w+) \| ([\d.]+) \|", output, flags=re.MULTILINE))
    if code != 0 or "grad" not in rows:
        return f"FAILED (exit {code})", output.strip().splitlines()[-1] if output.strip() else "", None
    samples_per_s = batch * nproc / (float(rows["grad"]) / 1e3)
    detail = " ".join(f"{mode}={ms}ms" for mode, ms in rows.items()) + f" samples/s={samples_per_s:.1f}"
    return "ok", detail, samples_per_s


# The trainer itself under torchrun: rnn.py with the benchmark model, one epoch of DummyDataset batches of 16
ENGINE_CONFIG = """\
#!rnn.py
import sys
sys.path.insert(0, {repo!r})
import torch
from benchmarks.ddp_bench import build_model

backend = "torch"
device = {device!r}
num_epochs = 1
model = "models/epoch"
learning_rate_file = "learning_rates"
log = ["returnn.log"]
log_verbosity = 4
train = {{"class": "DummyDataset", "input_dim": 80, "output_dim": 100, "num_seqs": {num_seqs}, "seq_len": {seq_len}}}
dev = None
batch_size = {batch_frames}
max_seqs = 16
optimizer = {{"class": "adamw"}}
learning_rate = 1e-4
torch_amp = {amp!r}
torch_distributed = {distributed!r}


def get_model(**_kwargs):
    return build_model({model!r})


def train_step(*, model, data, run_ctx, **_kwargs):
    logits = model(data["data"])
    targets = data["classes"].long()
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum")
    run_ctx.mark_as_loss(ce, "ce", inv_norm_factor=targets.numel())
"""


def engine_run(
    nproc: int, reduce_type: str, steps: int, *, device: str = "gpu", model: str = "encoder", seq_len: int = 200
) -> tuple[str, str, float | None]:
    """(status, detail, samples/s) of ``rnn.py`` under torchrun with ``nproc`` processes: one epoch of ``steps`` steps
    per process; the checkpoint must load in one process with ``weights_only=True``."""
    import tempfile

    distributed = {"reduce_type": reduce_type}
    if reduce_type == "fsdp":
        distributed["fsdp_modules"] = ["TransformerEncoderLayer"] if model == "encoder" else []
    amp = "bfloat16" if device != "cpu" else None
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as run_dir:
        config = ENGINE_CONFIG.format(
            repo=REPO_ROOT, device=device, num_seqs=16 * nproc * steps, seq_len=seq_len, batch_frames=16 * seq_len,
            amp=amp, distributed=distributed, model=model,
        )  # fmt: skip
        with open(os.path.join(run_dir, "exp.config"), "w") as file:
            file.write(config)
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
        command += [os.path.join(REPO_ROOT, "rnn.py"), "exp.config"]
        try:
            result = subprocess.run(command, cwd=run_dir, capture_output=True, text=True, timeout=400)
        except subprocess.TimeoutExpired:
            return "FAILED (timed out)", "", None
        log_path = os.path.join(run_dir, "returnn.log")
        log = ""
        if os.path.exists(log_path):
            with open(log_path) as file:
                log = file.read()
        found = re.search(r"^.*epoch=1 .*time=([\d.]+)s", log, flags=re.MULTILINE)
        if result.returncode != 0 or found is None:
            last = (result.stdout + result.stderr).strip().splitlines()
            return f"FAILED (exit {result.returncode})", last[-1] if last else "", None
        checkpoint = torch.load(os.path.join(run_dir, "models", "epoch.001.pt"), weights_only=True)
        num_params = sum(value.numel() for value in checkpoint["model"].values())
    seconds = float(found.group(1))
    samples_per_s = 16 * nproc * steps / seconds
    detail = (
        f"epoch of {steps} steps/process in {seconds:.1f}s samples/s={samples_per_s:.1f} checkpoint={num_params} params"
    )
    return "ok", detail, samples_per_s


def pipeline_throughput(steps: int, device: str = "cuda:0") -> tuple[str, str]:
    """Train the encoder on one GPU from the data pipeline (DummyDataset, one DataLoader worker)."""
    from benchmarks.ddp_bench import build_model
    from returnn.datasets.generating import DummyDataset
    from returnn.torch.data import DataPipelineOptions, build_data_loader

    model = build_model("encoder").to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dataset = DummyDataset(input_dim=80, output_dim=100, num_seqs=(steps + 10) * 16, seq_len=200)
    options = DataPipelineOptions.parse(batch_size=200 * 16, max_seqs=16, num_workers_per_gpu=1)
    loader = build_data_loader(dataset, options, device=device)
    batches = loader.iter_epoch(1)

    def train_step() -> int:
        data = next(batches)
        x = data["data"].to(device, non_blocking=True)
        y = data["classes"].to(device, non_blocking=True).long()
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return x.shape[0]

    for _ in range(5):
        train_step()
    synchronize = torch.cuda.synchronize if device.startswith("cuda") else lambda: None
    synchronize()
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    start = time.perf_counter()
    samples = 0
    with torch.profiler.profile(activities=activities) as profiler:
        for _ in range(steps):
            samples += train_step()
        synchronize()
    wall = time.perf_counter() - start
    loader.close()
    kernel_us = sum(
        event.self_device_time_total
        for event in profiler.key_averages()
        if event.device_type == torch.autograd.DeviceType.CUDA
    )
    busy = min(1.0, kernel_us / 1e6 / wall)
    status = "ok" if busy >= 0.95 else "below 95 % busy"
    return status, f"samples/s={samples / wall:.1f} gpu_busy={busy:.1%} (profiled, {steps} steps)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps per measurement")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA GPU is visible")
    num_gpus = torch.cuda.device_count()
    steps = 10 if args.quick else 30
    rows: list[tuple[str, str, str]] = [("CUDA tests (pytest -m gpu)", *gpu_tests())]
    status, detail, one = ddp(1, steps)
    rows.append(("DDP nccl, 1 GPU, fp32", status, detail))
    if num_gpus > 1:
        status, detail, many = ddp(num_gpus, steps)
        if one and many:
            detail += f" scaling_efficiency={many / (num_gpus * one):.1%}"
        rows.append((f"DDP nccl, {num_gpus} GPUs, fp32", status, detail))
    for amp in ("bfloat16", "float16"):
        status, detail, _ = ddp(num_gpus, steps, amp)
        rows.append((f"DDP nccl, {num_gpus} GPUs, AMP {amp}", status, detail))
    if num_gpus > 2:  # the 2-process scaling
        status, detail, two = ddp(2, steps)
        if one and two:
            detail += f" scaling_efficiency={two / (2 * one):.1%}"
        rows.append(("DDP nccl, 2 GPUs, fp32", status, detail))
    engine_one = None
    for nproc in sorted({1, num_gpus}):
        for reduce_type in ("grad", "fsdp"):
            status, detail, samples_per_s = engine_run(nproc, reduce_type, steps)
            if reduce_type == "grad" and nproc == 1:
                engine_one = samples_per_s
            elif reduce_type == "grad" and engine_one and samples_per_s:
                detail += f" scaling_efficiency={samples_per_s / (nproc * engine_one):.1%}"
            rows.append((f"rnn.py under torchrun, {reduce_type}, {nproc} GPU(s), bf16", status, detail))
    rows.append(("pipeline + 1 worker, 1 GPU, bf16", *pipeline_throughput(steps)))
    print(f"gpu_check: {num_gpus} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    print("| check | status | figures |")
    print("|---|---|---|")
    for name, status, detail in rows:
        print(f"| {name} | {status} | {detail} |")


if __name__ == "__main__":
    main()
