"""Numeric flags outside their range are refused in one line naming the flag, before a run folder is touched."""

import dataclasses

import pytest

from foundation.checks import check_ranges, in_range
from foundation.cli import UserError, saved_config_from
from foundation.config import TrainingFlags
from stage1_vqvae import train as stage1_train
from stage1_vqvae.config import VQVAEConfig
from stage2_prior.config import SIZES, PriorConfig
from tools.recommend import command as recommend
from tools.recommend.command import RecommendConfig

NAN, INF = float("nan"), float("inf")

BAD = {
    TrainingFlags: [("warmup_fraction", 1.0), ("warmup_fraction", -0.1)],
    VQVAEConfig: [("warmup_fraction", 1.0), ("lr", 0.0), ("lr", -4e-3), ("lr", NAN), ("lr", INF), ("batch_size", 0),
                  ("epochs", 0), ("beta", -0.25), ("ema_decay", 1.0), ("ema_decay", -0.1),
                  ("dead_code_threshold", -1.0), ("codebook_size", 0), ("top_codebook_size", 0), ("embed_dim", 0),
                  ("hidden_channels", 1), ("hidden_channels", 0), ("res_blocks", -1), ("discriminator_lr", 0.0),
                  ("discriminator_channels", 0), ("discriminator_layers", 0), ("val_size", 0.0), ("val_size", -0.1),
                  ("shapes_train", 0), ("shapes_test", 0), ("image_size", 0), ("image_size", -32),
                  ("attention_blocks", -1), ("weight_ema", 1.0), ("weight_ema", -0.1)],
    PriorConfig: [("dropout", 1.0), ("dropout", 1.5), ("dropout", -0.1), ("lr", 0.0), ("weight_decay", -0.01),
                  ("weight_ema", 1.0), ("batch_size", 0), ("epochs", 0), ("hidden_channels", 0), ("layers", 0),
                  ("val_size", -0.1), ("warmup_fraction", 1.0), ("attention_channels", -4)],
    RecommendConfig: [("synthetic_users", 0), ("synthetic_items", 1), ("cold_fraction", 1.5), ("cold_fraction", -0.1),
                      ("max_cold_train", 0), ("embed_dim", 0), ("codebook_size", 0), ("groups", 0), ("stages", 0),
                      ("beta", -1.0), ("epochs", 0), ("batch_size", 0), ("lr", 0.0), ("l2", -0.05), ("threads", -1)],
}
EDGES = {  # the ends of each range that are allowed
    TrainingFlags: [("warmup_fraction", 0.0), ("warmup_fraction", 0.99)],
    VQVAEConfig: [("beta", 0.0), ("ema_decay", 0.0), ("dead_code_threshold", 0.0), ("codebook_size", 1),
                  ("embed_dim", 1), ("hidden_channels", 2), ("hidden_channels", 9), ("res_blocks", 0), ("val_size", 1e-3),
                  ("epochs", 1), ("batch_size", 1), ("attention_blocks", 0), ("weight_ema", 0.0)],
    PriorConfig: [("dropout", 0.0), ("weight_decay", 0.0), ("weight_ema", 0.999), ("val_size", 0.0),
                  ("attention_layers", 0)],
    RecommendConfig: [("cold_fraction", 0.0), ("cold_fraction", 1.0), ("synthetic_items", 2), ("threads", 0),
                      ("l2", 0.0), ("beta", 0.0)],
}


def cases(table: dict) -> list:
    return [pytest.param(cls, field, value, id=f"{cls.__name__}-{field}={value}")
            for cls, pairs in table.items() for field, value in pairs]


@pytest.mark.parametrize("cls, field, value", cases(BAD))
def test_a_value_outside_its_range_is_refused_naming_its_flag(cls, field, value):
    flag = "--" + field.replace("_", "-")
    with pytest.raises(UserError, match=f"^{flag} must be .*, got {value}$"):
        cls(**{field: value})


@pytest.mark.parametrize("cls, field, value", cases(EDGES))
def test_the_ends_of_each_range_are_accepted(cls, field, value):
    assert getattr(cls(**{field: value}), field) == value


@pytest.mark.parametrize("make", [TrainingFlags, VQVAEConfig, PriorConfig, RecommendConfig,
                                  *(lambda size=size: PriorConfig(size=size) for size in SIZES),
                                  lambda: VQVAEConfig(levels=2), lambda: PriorConfig(class_conditional=True)])
def test_every_default_config_constructs(make):
    make()


@pytest.mark.parametrize("cls", [VQVAEConfig, PriorConfig])
def test_configs_saved_before_later_fields_still_load(cls):
    saved = {k: v for k, v in dataclasses.asdict(cls()).items() if k not in cls.ADDED_LATER}
    loaded = saved_config_from(cls, saved)
    assert all(getattr(loaded, field) == value for field, value in cls.ADDED_LATER.items())


@pytest.mark.parametrize("rule, inside, outside", [
    ("> 0", [1e-9, 5], [0, -1, NAN, INF]),
    (">= 1", [1, 2], [0, 0.5, -3]),
    ("[0, 1)", [0, 0.5, 0.999], [1, -0.001, NAN]),
    ("[0, 1]", [0, 1], [1.001, -0.001]),
    ("(0, 1]", [1, 0.5], [0, 2]),
])
def test_in_range_reads_comparisons_and_intervals(rule, inside, outside):
    assert all(in_range(v, rule) for v in inside) and not any(in_range(v, rule) for v in outside)


def test_check_ranges_names_the_first_field_out_of_range_as_a_flag():
    config = dataclasses.make_dataclass("C", [("batch_size", int, 0), ("weight_ema", float, 1.0)])()
    with pytest.raises(UserError, match=r"^--batch-size must be >= 1, got 0$"):
        check_ranges(config, {"batch_size": ">= 1", "weight_ema": "[0, 1)"})
    with pytest.raises(UserError, match=r"^--weight-ema must be in \[0, 1\), got 1.0$"):
        check_ranges(config, {"weight_ema": "[0, 1)"})


# tiny runs otherwise, should a check ever let the value through
TINY_VQVAE = ["--dataset", "shapes", "--shapes-train", "32", "--shapes-test", "8", "--image-size", "16", "--epochs", "1",
              "--batch-size", "8", "--codebook-size", "8", "--embed-dim", "4", "--res-blocks", "0", "--precision", "fp32"]
TINY_RECOMMEND = ["--synthetic-users", "20", "--synthetic-items", "30", "--models", "mf", "--epochs", "1"]


@pytest.mark.parametrize("main, flags, message", [
    (stage1_train.main, [*TINY_VQVAE, "--lr", "0"], "--lr must be > 0, got 0.0"),
    (stage1_train.main, [*TINY_VQVAE, "--hidden-channels", "1"], "--hidden-channels must be >= 2, got 1"),
    (recommend.main, [*TINY_RECOMMEND, "--groups", "0"], "--groups must be >= 1, got 0"),  # was a ZeroDivisionError
    (recommend.main, [*TINY_RECOMMEND, "--cold-fraction", "2"], "--cold-fraction must be in [0, 1], got 2.0"),
])
def test_commands_refuse_a_value_out_of_range_in_one_line_before_making_the_folder(tmp_path, capsys, main, flags,
                                                                                    message):
    out_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main([*flags, "--out-dir", str(out_dir), "--device", "cpu"])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 1 and err == f"error: {message}\n" and out == ""
    assert not out_dir.exists()
