"""The quantizers under data parallelism keep exactly the codebook one process keeps for the global batch.

Two gloo processes each quantize half of every batch; one process quantizes whole batches. The vectors
are multiples of 1/4, so the EMA sums are exact in fp32 whatever the order ranks add them in, and the
two runs must agree bitwise: codebook initialisation, usage, dead-code re-seeding and EMA statistics (the
factorized quantizer's projected vectors are not exact: the same codes, statistics equal up to rounding).
The pytest test runs this file under torchrun as the worker:
    torchrun --standalone --nproc_per_node=2 tests/test_ddp_quantizer.py --out DIR --quantizer ema
"""

import argparse
import functools
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from foundation import distributed  # noqa: E402
from stage1_vqvae.modern_quantizers import FactorizedQuantizer  # noqa: E402
from stage1_vqvae.quantizer import EMAVectorQuantizer, VectorQuantizer  # noqa: E402
from tests.ddp_worker import count_reseeds  # noqa: E402

# the rotation quantizer keeps EMAVectorQuantizer's statistics as they are, and FSQ keeps none
QUANTIZERS = {"ema": EMAVectorQuantizer, "codebook": VectorQuantizer,
              "factorized": functools.partial(FactorizedQuantizer, factorized_dim=2)}
STEPS, BATCH, CODES = 40, 64, 16  # a code never chosen falls below the threshold after 23 steps


def quantize_batches(kind: str) -> dict:
    """Train-mode steps of a quantizer on this rank's share of each batch: final buffers, all indices, re-seeds."""
    torch.manual_seed(0)
    quantizer = QUANTIZERS[kind](CODES, 4, dead_code_threshold=3.0, dim=-1).train()
    reseeds = count_reseeds(getattr(quantizer, "lookup", quantizer))  # the factorized one's codebook is its lookup
    centres = torch.randint(-8, 9, (5, 4)) / 4  # fewer clusters than codes: rarely used codes die
    indices = []
    for step in range(STEPS):
        generator = torch.Generator().manual_seed(step)
        batch = centres[torch.randint(5, (BATCH,), generator=generator)]
        batch = batch + torch.randint(-1, 2, (BATCH, 4), generator=generator) / 4  # (BATCH, 4), multiples of 1/4
        _, _, picked = quantizer(batch.chunk(distributed.world_size())[distributed.rank()])
        indices.append(distributed.all_gather_rows(picked))
    return {"state": quantizer.state_dict(), "indices": torch.stack(indices), "reseeds": sum(reseeds)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--quantizer", choices=QUANTIZERS, default="ema")
    args = parser.parse_args()
    distributed.setup("cpu")
    result = quantize_batches(args.quantizer)
    torch.save(result, Path(args.out) / f"rank{distributed.rank()}.pt")
    distributed.teardown()


@pytest.mark.slow
@pytest.mark.parametrize("kind", QUANTIZERS)
def test_two_processes_keep_bitwise_the_codebook_of_one_process(tmp_path, kind):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__,
               "--out", str(tmp_path), "--quantizer", kind]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    one = quantize_batches(kind)
    assert one["reseeds"] > 0  # dead codes were re-seeded along the way
    for rank in (0, 1):
        two = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert torch.equal(two["indices"], one["indices"])
        for name, value in one["state"].items():
            if kind == "factorized":  # projected vectors are no multiples of 1/4: their sums round by rank
                torch.testing.assert_close(two["state"][name], value, rtol=1e-5, atol=1e-6, msg=name)
            else:
                assert torch.equal(two["state"][name], value), name


if __name__ == "__main__":
    main()
