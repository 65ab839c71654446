"""--tensorboard: per-epoch curves and pictures through SummaryWriter; one clear error without the package."""

import sys
import types

import pytest

from foundation.cli import UserError
from foundation.curves import Curves
from stage1_vqvae import train as stage1_train
from stage2_prior import train as stage2_train
from tests.tiny_run import make_tiny_run, one_thread  # noqa: F401 (autouse)

STAGE1 = ["--dataset", "shapes", "--shapes-train", "24", "--shapes-test", "8", "--val-size", "4", "--codebook-size", "16",
          "--hidden-channels", "16", "--res-blocks", "1", "--embed-dim", "8", "--batch-size", "12", "--epochs", "2",
          "--device", "cpu"]


class FakeWriter:
    """Records what a SummaryWriter would write."""

    made = []

    def __init__(self, log_dir):
        self.log_dir, self.scalars, self.images, self.closed = log_dir, {}, {}, False
        FakeWriter.made.append(self)

    def add_scalar(self, tag, value, step):
        self.scalars.setdefault(tag, []).append((step, value))

    def add_image(self, tag, image, step):
        self.images.setdefault(tag, []).append((step, tuple(image.shape)))

    def flush(self):
        pass

    def close(self):
        self.closed = True


@pytest.fixture
def fake_tensorboard(monkeypatch):
    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    FakeWriter.made = []
    return FakeWriter.made


def test_stage1_logs_losses_psnr_codes_and_reconstructions_per_epoch(tmp_path, fake_tensorboard):
    stage1_train.main([*STAGE1, "--out-dir", str(tmp_path / "vqvae"), "--tensorboard"])
    (writer,) = fake_tensorboard
    assert writer.log_dir == str(tmp_path / "vqvae" / "tensorboard") and writer.closed
    for tag in ["train/loss", "val/psnr", "test/psnr", "test/codes_used", "val/mse", "lr"]:
        assert [step for step, _ in writer.scalars[tag]] == [1, 2], tag
    assert "step" not in writer.scalars and "epoch" not in writer.scalars
    assert [step for step, _ in writer.images["test/reconstructions"]] == [1, 2]
    assert writer.images["test/reconstructions"][0][1][0] == 3  # a (3, H, W) picture


def test_stage2_logs_bits_per_code_per_epoch(tmp_path, fake_tensorboard):
    run = make_tiny_run(tmp_path / "run", recon_loss="l1")
    stage2_train.main(["--codes-dir", str(run / "codes"), "--out-dir", str(tmp_path / "prior"), "--hidden-channels", "8",
                       "--layers", "2", "--epochs", "2", "--device", "cpu", "--tensorboard"])
    (writer,) = fake_tensorboard
    for tag in ["train/bits_per_code", "val/bits_per_code", "test/bits_per_code"]:
        assert [step for step, _ in writer.scalars[tag]] == [1, 2], tag


def test_without_the_package_the_flag_is_one_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with pytest.raises(UserError, match=r"pip install -e '\.\[tensorboard\]'"):
        Curves(tmp_path, enabled=True)
    with pytest.raises(SystemExit) as info:
        stage1_train.main([*STAGE1, "--out-dir", str(tmp_path / "vqvae"), "--tensorboard"])
    err = capsys.readouterr().err
    assert info.value.code == 1 and err.count("\n") == 1 and "tensorboard" in err
    assert not (tmp_path / "vqvae" / "ckpt.pt").exists()


def test_without_the_flag_nothing_is_written(tmp_path, fake_tensorboard):
    stage1_train.main([*STAGE1, "--epochs", "1", "--out-dir", str(tmp_path / "vqvae")])
    assert fake_tensorboard == [] and not (tmp_path / "vqvae" / "tensorboard").exists()
    curves = Curves(tmp_path / "x", enabled=False)
    curves.log(1, {"val_psnr": 1.0})
    assert not (tmp_path / "x").exists()
