"""Stage-2 config checks: settings the model cannot be built with are refused in one line."""

import pytest

from foundation.cli import UserError
from stage2_prior import train
from stage2_prior.config import PriorConfig
from tests.test_code_files import write_codes


@pytest.mark.parametrize("kernel_size", [2, 4, 0, -3])
def test_even_or_non_positive_kernel_sizes_are_refused(kernel_size):
    with pytest.raises(UserError, match=f"--kernel-size must be odd .*got {kernel_size}$"):
        PriorConfig(kernel_size=kernel_size)


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_odd_kernel_sizes_are_accepted(kernel_size):
    assert PriorConfig(kernel_size=kernel_size).kernel_size == kernel_size


def test_train_command_refuses_an_even_kernel_size_in_one_line(tmp_path, capsys):
    codes = write_codes(tmp_path / "codes")
    out_dir = tmp_path / "prior"
    argv = ["--codes-dir", str(codes), "--out-dir", str(out_dir), "--kernel-size", "4", "--hidden-channels", "8",
            "--layers", "2", "--epochs", "1", "--device", "cpu", "--precision", "fp32", "--fresh"]
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 1
    assert err.startswith("error: --kernel-size must be odd") and err.strip().count("\n") == 0
    assert not out_dir.exists()  # refused before the run folder is made (or, with --fresh, cleared)
