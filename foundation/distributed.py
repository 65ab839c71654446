"""Data-parallel training under torchrun, and the collectives the stages need (no-ops on one process).

`torchrun --nproc_per_node=N -m stage1_vqvae.train ...` sets RANK, WORLD_SIZE and LOCAL_RANK; `setup()`
then joins the process group (NCCL on CUDA, gloo on CPU). Every rank sees the same data order and
takes its own contiguous slice of each global batch; only rank 0 writes files.
"""

import datetime
import os

import torch
import torch.distributed as dist

TIMEOUT = datetime.timedelta(minutes=5)  # a rank that dies makes the others fail within this, not hang


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device_name: str) -> str:
    """Join the process group when launched by torchrun; returns the device this rank should use."""
    if not launched_by_torchrun() or active():
        return device_name
    use_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device_name = f"cuda:{local_rank}"
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=TIMEOUT)
    return device_name


def teardown() -> None:
    if active():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over ranks, in place."""
    if active():
        dist.all_reduce(tensor)
    return tensor


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate equally-shaped (N, ...) tensors of all ranks in rank order."""
    if not active():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def broadcast_(tensor: torch.Tensor) -> torch.Tensor:
    """Rank 0's `tensor` on every rank, in place."""
    if active():
        dist.broadcast(tensor, src=0)
    return tensor


def gather_objects(value) -> list:
    """Every rank's picklable `value`, in rank order, on every rank."""
    if not active():
        return [value]
    values = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def any_rank(flag: bool, device) -> bool:
    """True on every rank if `flag` is true on any (so all ranks stop at the same step)."""
    if not active():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around `model` when running on several processes."""
    if not active():
        return model
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    # Buffers (EMA codebook) are kept identical by the quantizer's own all-reduces, not re-sent every step.
    newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
    no_buffer_sync = {"forward_sync_buffers": False} if newer else {"broadcast_buffers": False}
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   **no_buffer_sync)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def batch_count(n: int, batch_size: int) -> int:
    """Global batches in one epoch of n items (each global batch is batch_size items per rank)."""
    usable = n // world_size() * world_size()
    return -(-usable // (batch_size * world_size()))


def my_batches(n: int, batch_size: int, start_batch: int = 0):
    """(start, stop) of this rank's contiguous share of each global batch over positions 0..n-1.

    Every rank gets the same number of items (at most world_size - 1 items of an epoch are left out).
    """
    world, me = world_size(), rank()
    usable = n // world * world
    step = batch_size * world
    for start in range(start_batch * step, usable, step):
        per_rank = (min(start + step, usable) - start) // world
        yield start + me * per_rank, start + (me + 1) * per_rank
