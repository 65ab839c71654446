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


@pytest.mark.parametrize("field, value, allowed", [
    *(("dropout", bad, r"in \[0, 1\)") for bad in [1.0, 1.5, -0.1, float("nan")]),
    ("lr", 0.0, "> 0"), ("lr", -1e-3, "> 0"), ("weight_decay", -0.01, ">= 0"), ("weight_ema", 1.0, r"in \[0, 1\)"),
    ("weight_ema", -0.5, r"in \[0, 1\)"), ("batch_size", 0, ">= 1"), ("epochs", 0, ">= 1"),
    ("hidden_channels", 0, ">= 1"), ("layers", 0, ">= 1"), ("val_size", -0.1, ">= 0"),
    ("label_dropout", 1.0, r"in \[0, 1\)"), ("warmup_fraction", 1.0, r"in \[0, 1\)"),
    ("attention_channels", 0, ">= 1")])
def test_numeric_flags_out_of_range_are_refused_by_name(field, value, allowed):
    flag = "--" + field.replace("_", "-")
    with pytest.raises(UserError, match=f"^{flag} must be {allowed}, got {value}$"):
        PriorConfig(**{field: value})


@pytest.mark.parametrize("field, value", [("dropout", 0.0), ("dropout", 0.99), ("weight_ema", 0.995),
                                          ("weight_decay", 0.0), ("val_size", 0.0)])
def test_numeric_flags_in_range_are_accepted(field, value):
    assert getattr(PriorConfig(**{field: value}), field) == value


@pytest.mark.parametrize("existing", [False, True])
def test_train_command_refuses_dropout_one_in_one_line_and_leaves_the_run_folder_alone(tmp_path, capsys, existing):
    codes = write_codes(tmp_path / "codes")
    out_dir = tmp_path / "prior"
    if existing:  # an earlier run's files, which --fresh would clear
        out_dir.mkdir()
        (out_dir / "config.json").write_text("{}")
    argv = ["--codes-dir", str(codes), "--out-dir", str(out_dir), "--dropout", "1.0", "--hidden-channels", "8",
            "--layers", "2", "--epochs", "1", "--device", "cpu", "--precision", "fp32", "--fresh"]
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv)
    out, err = capsys.readouterr()
    assert exit_info.value.code == 1 and out == ""
    assert err == "error: --dropout must be in [0, 1), got 1.0\n"
    if existing:
        assert [p.name for p in out_dir.iterdir()] == ["config.json"] and (out_dir / "config.json").read_text() == "{}"
    else:
        assert not out_dir.exists()
