"""`tools.compare_quantizers`: every quantizer fitted to a stage 1's encoder outputs, its held-out figures written."""

import json

from tests.tiny_run import make_tiny_run
from tools import compare_quantizers


def test_every_quantizer_gets_a_row_of_held_out_figures(tmp_path):
    run = make_tiny_run(tmp_path / "run", recon_loss="l1")
    out = tmp_path / "quantizers.json"
    compare_quantizers.main(["--vqvae", str(run / "vqvae" / "ckpt.pt"), "--device", "cpu", "--train-vectors", "2000",
                             "--epochs", "1", "--batch-size", "500", "--fsq-levels", "4,4", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    ours = [row for row in rows if row["library"] == "this project"]
    assert [row["quantizer"] for row in ours] == list(compare_quantizers.OURS)
    for row in ours:
        assert row["relative_error"] > 0 and 1 <= row["codes_used"] <= 16 and 1 <= row["perplexity"] <= 16
        if row["quantizer"] in ("ema", "codebook", "rotation"):  # codebooks start at the data: better than its mean
            assert row["relative_error"] < 1
