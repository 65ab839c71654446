"""Stage 1's capacity and schedule levers: attention blocks at the code grid, a moving average of the weights;
the per-image PSNR that published comparisons use."""

import math

import torch

from foundation.files import load_checkpoint
from stage1_vqvae import train as stage1
from stage1_vqvae.checkpoint import STAGE, load_vqvae
from stage1_vqvae.config import VQVAEConfig
from stage1_vqvae.metrics import evaluate, psnr, psnr_of_each_image
from stage1_vqvae.model import VQVAE, AttentionBlock
from stage1_vqvae.shapes import make_shapes

TINY = ["--dataset", "shapes", "--shapes-train", "256", "--shapes-test", "32", "--image-size", "16",
        "--codebook-size", "16", "--hidden-channels", "16", "--batch-size", "32", "--epochs", "1", "--device", "cpu"]


def test_a_new_attention_block_is_the_identity_and_then_mixes_every_position_of_one_image():
    block = AttentionBlock(16)
    x = torch.randn(2, 16, 4, 4)
    assert torch.equal(block(x), x)  # proj starts at zero: a network gaining the block starts unchanged
    torch.nn.init.normal_(block.proj.weight)
    x.requires_grad_(True)
    block(x)[0, :, 0, 0].sum().backward()
    assert x.grad[0, :, 3, 3].abs().sum() > 0  # the first position sees the last one: not a local operation
    assert x.grad[1].abs().sum() == 0  # images stay apart


def test_attention_blocks_run_at_the_code_grid_in_encoder_and_decoder_and_learn():
    cfg = VQVAEConfig(codebook_size=16, embed_dim=8, hidden_channels=16, res_blocks=1, attention_blocks=1,
                      precision="fp32", device="cpu")
    model = VQVAE(cfg).train()
    blocks = [m for m in model.modules() if isinstance(m, AttentionBlock)]
    seen = []
    for block in blocks:
        block.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape[-2:])))
    x = make_shapes(4, seed=0).images.float() / 127.5 - 1
    _, loss, _ = model(x)
    loss.backward()
    assert len(blocks) == 2 and seen == [(8, 8), (8, 8)]  # 32 px, downsample 4: the 8x8 code grid
    assert all(block.proj.weight.grad.abs().sum() > 0 for block in blocks)
    plain = VQVAE(VQVAEConfig(codebook_size=16, embed_dim=8, hidden_channels=16, res_blocks=1))
    assert not any("qkv" in name for name in plain.state_dict())  # runs without the flag keep their weights' names


def test_weight_ema_evaluates_chooses_and_saves_the_average(tmp_path):
    stage1.main([*TINY, "--weight-ema", "0.5", "--out-dir", str(tmp_path / "ema")])
    state = load_checkpoint(tmp_path / "ema/state.pt", STAGE)
    saved = torch.load(tmp_path / "ema/ckpt.pt", weights_only=True)["model"]
    averaged = {name[len("module."):]: value for name, value in state["ema"].items() if name.startswith("module.")}
    assert saved.keys() == averaged.keys() == state["model"].keys()
    assert all(torch.equal(saved[name], averaged[name]) for name in saved)  # one epoch: the best is the last
    assert any(not torch.equal(saved[name], state["model"][name]) for name in saved)  # not the raw weights
    assert load_vqvae(tmp_path / "ema/ckpt.pt", "cpu").cfg.weight_ema == 0.5


def test_the_mean_of_each_images_psnr_is_what_folder_scripts_report_and_exceeds_the_pooled_psnr():
    x = -torch.ones(2, 3, 4, 4)  # uint8 level 0
    x_hat = x.clone()
    x_hat[0] += 2 * 10 / 255  # 10 uint8 levels off
    x_hat[1] += 2 * 40 / 255
    each = psnr_of_each_image(x_hat, x)
    assert torch.allclose(each, torch.tensor([20 * math.log10(255 / 10), 20 * math.log10(255 / 40)]), atol=1e-4)
    pooled = psnr(((10 / 255) ** 2 + (40 / 255) ** 2) / 2)
    assert each.mean() > pooled + 3  # 22.1 against 18.8 dB: averaging logs favours the easy image


def test_evaluate_reports_the_mean_per_image_psnr_beside_the_pooled_one():
    model = VQVAE(VQVAEConfig(codebook_size=16, embed_dim=8, hidden_channels=16, res_blocks=1, precision="fp32"))
    metrics = evaluate(model, make_shapes(12, seed=0).images, torch.device("cpu"), "fp32")
    assert 0 < metrics["psnr"] - 0.01 < metrics["psnr_per_image"] < 60  # the same [0, 1] scale, never below
