"""How close the training steps come to the machine's arithmetic limit (`make bench`'s first table), and the
timing helpers `make bench` uses (medians over repeats, peak memory, the device's name).

Each round times a 2048 x 2048 matrix product in fp32 and in bf16, then a few bare training steps of
each stage (forward, backward, Adam, the stage's precision, batch 128, channels-last as training runs
them). The rounds interleave, so a noisy shared machine slows every workload alike; the report gives
medians over rounds, and each step's rate as a fraction of the GEMM rate of its own precision.
A step's FLOPs are counted once by `torch.utils.flop_counter` (convolutions and matrix products).
`prior_command_rate` times the stage-2 training command itself, to compare with its bare steps;
`attention_sampling_rate` the sampling of a prior with attention blocks (cached with a KV cache, or naive), and
`sampler_operations` how many operations the cached sampler dispatches per position (each one a kernel launch on a
GPU, whatever the batch).
"""

import contextlib
import io
import platform
import resource
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from foundation.files import code_dtype, save_array, write_json
from stage2_prior import train as stage2_train
from stage2_prior.config import PriorConfig
from stage2_prior.model import GatedPixelCNN

GEMM_SIDE = 2048
ATTENTION_BLOCKS = 2  # in the default-size prior whose sampling `attention_sampling_rate` times


def cpu_model() -> str:
    """The CPU's model name (what `lscpu` prints), or the platform's guess."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def gemm(dtype: torch.dtype, device):
    """A workload: one GEMM_SIDE^2 matrix product in `dtype`, and its FLOPs."""
    a, b = (torch.randn(GEMM_SIDE, GEMM_SIDE, device=device, dtype=dtype) for _ in range(2))
    return (lambda: a @ b), 2 * GEMM_SIDE**3


def counted(step) -> tuple:
    """(step, its FLOPs per call), counted on one untimed call (which also warms it up)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return step, counter.get_total_flops()


def interleaved_rates(workloads: dict, rounds: int, device, calls: int = 3) -> dict:
    """{name: median FLOP/s over `rounds`}; each round runs every workload `calls` times, in turn."""
    rates = {name: [] for name in workloads}
    for _ in range(rounds):
        for name, (work, flops) in workloads.items():
            work()
            synchronize(device)
            start = time.perf_counter()
            for _ in range(calls):
                work()
            synchronize(device)
            rates[name].append(flops * calls / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in rates.items()}


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_rate(work, items: int, repeats: int, device, warmup: int = 1) -> float:
    """Median of items/second over `repeats` timed calls of `work()`, after `warmup` untimed calls."""
    for _ in range(warmup):
        work()
    rates = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        work()
        synchronize(device)
        rates.append(items / (time.perf_counter() - start))
    return statistics.median(rates)


def peak_memory_mb(device) -> float:
    """Peak memory since the last reset: CUDA allocator peak, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({cpu_model()}, {torch.get_num_threads()} threads)"


def arithmetic_report(steps: dict, precision: str, device, rounds: int) -> dict:
    """{gemm_fp32_gflops, gemm_bf16_gflops, <step>_gflops, <step>_fraction_of_gemm} for `steps` {name: step}."""
    workloads = {"gemm_fp32": gemm(torch.float32, device), "gemm_bf16": gemm(torch.bfloat16, device)}
    workloads.update({name: counted(step) for name, step in steps.items()})
    rates = interleaved_rates(workloads, rounds, device)
    reference = rates["gemm_bf16" if precision == "bf16" else "gemm_fp32"]
    report = {f"{name}_gflops": rate / 1e9 for name, rate in rates.items()}
    report.update({f"{name}_fraction_of_gemm": rates[name] / reference for name in steps})
    report.update({f"{name}_gflop_per_step": workloads[name][1] / 1e9 for name in steps})
    return report


def prior_command_rate(device, precision: str) -> float:
    """Maps per second of the stage-2 training command itself, evaluation and bookkeeping included: two epochs
    over random 8x8 maps split as a tenth of CIFAR-10's (9,000 mirrored train maps, 500 for validation and
    1,000 for test), in this process (no start-up counted)."""
    counts = {"train": 9000, "val": 500, "test": 1000}
    with tempfile.TemporaryDirectory() as folder:
        for split, n in counts.items():
            save_array(Path(folder) / f"{split}.npy", torch.randint(512, (n, 8, 8)).numpy().astype(code_dtype(512)))
            save_array(Path(folder) / f"{split}_labels.npy", torch.zeros(n, dtype=torch.int64).numpy())
        write_json(Path(folder) / "meta.json", {"codebook_size": 512, "grid_shape": [8, 8], "counts": counts,
                                                "num_classes": 1, "stage1_sha256": "", "stage1_checkpoint": ""})
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            stage2_train.main(["--codes-dir", folder, "--out-dir", f"{folder}/prior", "--epochs", "2",
                               "--device", str(device), "--precision", precision])
        return 2 * counts["train"] / (time.perf_counter() - start)


def attention_sampling_rate(device, side: int, batch: int, naive: bool, repeats: int) -> float:
    """Grids per second drawn by a default-size prior with ATTENTION_BLOCKS attention blocks over side x side codes;
    a naive run off CUDA is timed once, without warm-up (it takes seconds)."""
    cfg = PriorConfig(grid_height=side, grid_width=side, attention_layers=ATTENTION_BLOCKS)
    model = GatedPixelCNN(cfg).to(device).eval()
    generator = torch.Generator(device=device).manual_seed(0)
    slow = naive and device.type != "cuda"
    return median_rate(lambda: model.sample(batch, generator=generator, naive=naive), batch, 1 if slow else repeats,
                       device, warmup=0 if slow else 1)


class _Operations(TorchDispatchMode):
    """Counts every aten operation dispatched while it is active."""

    def __init__(self):
        super().__init__()
        self.counts = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def sampler_operations(attention_layers: int, side: int = 8, batch: int = 64) -> float:
    """Operations the cached sampler of a default-size prior (random weights, CPU) dispatches per position."""
    torch.manual_seed(0)
    model = GatedPixelCNN(PriorConfig(grid_height=side, grid_width=side, attention_layers=attention_layers)).eval()
    counter = _Operations()
    with counter:
        model.sample(batch, generator=torch.Generator().manual_seed(0))
    return sum(counter.counts.values()) / side**2
