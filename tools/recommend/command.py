"""The recommender experiment: do quantized item embeddings help items with few ratings (cold items)?

    python -m tools.recommend                                      # built-in synthetic ratings, offline
    python -m tools.recommend --dataset movielens --data-dir data  # ml-latest-small (downloaded when missing)
    make recommend                                                 # the same, into $(RUN_DIR)/recommend/

Held-out cold items keep only 1 to --max-cold-train training ratings (`tools.recommend.data.cold_item_split`).
Every model gets the same budget (epochs, batch size, Adam learning rate, regularisation, embedding
size), the same starting user and item vectors, and the epoch with the best validation RMSE; the table
gives test RMSE on all test ratings and on each group of items (`tools.recommend.data.item_groups`): cold,
warm (at least --warm-min-train training ratings), rare (fewer) and unseen (none). Models
(`tools.recommend.model`): matrix factorisation with biases (`mf`), the same with item vectors through a
vector quantizer and the straight-through estimator as in the source (`vq`), and with genres as side
information for all of them, plus grouped (product) and residual quantizers. Writes to --out-dir:
config.json, results.json, and item_codes.npy ((n_items, C), smallest unsigned dtype) with meta.json
for the quantized model with the best validation RMSE.
"""

import copy
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from foundation.checks import check_ranges
from foundation.cli import UserError, build_parser, config_from, given_config_values, main_entry, opt
from foundation.files import code_dtype, save_array, write_json
from foundation.runtime import cpu_threads, pick_device, progress_disabled
from stage1_vqvae.multi_quantizer import build_quantizer
from tools.recommend.data import (GROUPS, Ratings, Split, cold_item_split, group_definitions, item_groups, load_movielens,
                           synthetic_ratings)
from tools.recommend.model import RatingModel

MODELS = {  # name: (genres as item side information, item quantizer or None)
    "mf": (False, None),
    "vq": (False, "plain"),
    "mf+genres": (True, None),
    "vq+genres": (True, "plain"),
    "grouped+genres": (True, "grouped"),
    "residual+genres": (True, "residual"),
}


@dataclass
class RecommendConfig:
    # the values each numeric flag allows (`foundation.checks`); --warm-min-train is checked below
    RANGES = {"synthetic_users": ">= 1", "synthetic_items": ">= 2",  # each user rates 1 to half of the items
              "cold_fraction": "[0, 1]", "max_cold_train": ">= 1", "embed_dim": ">= 1",
              "codebook_size": ">= 1", "groups": ">= 1", "stages": ">= 1", "beta": ">= 0", "epochs": ">= 1",
              "batch_size": ">= 1", "lr": "> 0", "l2": ">= 0", "threads": ">= 0"}

    dataset: str = opt("synthetic", "which ratings", choices=["synthetic", "movielens"])
    data_dir: str = opt("data", "where ml-latest-small/ (or its zip) is, or is downloaded to")
    out_dir: str = opt("runs/recommend", "where results.json, item_codes.npy and meta.json go")
    synthetic_users: int = opt(1000, "users of --dataset synthetic")
    synthetic_items: int = opt(1500, "items of --dataset synthetic")
    cold_fraction: float = opt(0.1, "share of the items (with enough ratings) held out as cold items")
    max_cold_train: int = opt(5, "training ratings a cold item keeps at most (1 to this many)")
    warm_min_train: int = opt(10, "training ratings that make an item (not cold) warm; with fewer it is rare")
    models: str = opt(",".join(MODELS), "comma-separated models to train, from: " + ", ".join(MODELS))
    embed_dim: int = opt(32, "D, size of the user and item vectors")
    codebook_size: int = opt(64, "K, codes in each item codebook")
    groups: int = opt(4, "G of the grouped quantizer (D split into G groups)")
    stages: int = opt(3, "N of the residual quantizer")
    beta: float = opt(0.25, "commitment weight of the quantizers")
    epochs: int = opt(20, "training epochs of every model")
    batch_size: int = opt(1024, "ratings per step")
    lr: float = opt(5e-3, "Adam learning rate")
    l2: float = opt(0.05, "weight of the squared norms of the embeddings and biases a batch uses")
    seed: int = opt(0, "seed for the synthetic data, the split and the models")
    device: str = opt("auto", "auto (CUDA when present), cpu, cuda, cuda:N")
    threads: int = opt(1, "CPU threads (0: torch's default); the steps are small, so more threads mostly wait")

    def __post_init__(self):
        unknown = [name for name in self.model_names if name not in MODELS]
        if unknown or not self.model_names:
            raise UserError(f"unknown model(s) {unknown or self.models!r}; choose from {', '.join(MODELS)}")
        check_ranges(self, self.RANGES)
        if self.embed_dim % self.groups:
            raise UserError(f"--groups {self.groups} does not divide --embed-dim {self.embed_dim}")
        if self.warm_min_train < 2:
            raise UserError("--warm-min-train must be at least 2 (items with no training rating are unseen)")

    @property
    def model_names(self) -> list:
        return [name.strip() for name in self.models.split(",") if name.strip()]


def load_ratings(cfg: RecommendConfig) -> Ratings:
    if cfg.dataset == "movielens":
        return load_movielens(cfg.data_dir)
    return synthetic_ratings(cfg.synthetic_users, cfg.synthetic_items, seed=cfg.seed)


def build_model(name: str, cfg: RecommendConfig, data: Ratings, mean: float) -> RatingModel:
    """The named model, starting from the same user and item vectors (and genre parts) as every other model."""
    use_genres, kind = MODELS[name]
    genres = torch.from_numpy(data.genres) if use_genres else None
    torch.manual_seed(cfg.seed)
    model = RatingModel(data.n_users, data.n_items, cfg.embed_dim, mean, genres)
    if kind is not None:  # drawn after the shared parts, so that it does not move their start
        sizes = {"grouped": {"groups": cfg.groups}, "residual": {"stages": cfg.stages}}.get(kind, {})
        model.quantizer = build_quantizer(cfg.codebook_size, cfg.embed_dim, **sizes, dim=-1, beta=cfg.beta)
    return model


class Part:
    """One set of ratings as tensors on the device."""

    def __init__(self, data: Ratings, indices: np.ndarray, device):
        as_tensor = lambda a: torch.from_numpy(a[indices]).to(device)  # noqa: E731
        self.users, self.items, self.ratings = as_tensor(data.users), as_tensor(data.items), as_tensor(data.ratings)

    def __len__(self) -> int:
        return self.ratings.shape[0]

    def subset(self, mask: torch.Tensor) -> "Part":
        part = copy.copy(self)
        part.users, part.items, part.ratings = self.users[mask], self.items[mask], self.ratings[mask]
        return part


@torch.no_grad()
def predict(model: RatingModel, part: Part) -> torch.Tensor:
    """The model's ratings for a part, in eval mode."""
    return model.eval()(part.users, part.items)[0]


def scores(predict_part, parts: dict) -> dict:
    """{part name: RMSE} of the predictions, clipped to the rating scale, of `predict_part(part)`; None if empty."""
    return {name: torch.sqrt(F.mse_loss(predict_part(part).clamp(0.5, 5.0), part.ratings)).item() if len(part) else None
            for name, part in parts.items()}


def train_model(model: RatingModel, train: Part, val: Part, cfg: RecommendConfig, name: str) -> tuple:
    """Adam for cfg.epochs; returns (the weights of the epoch with the best validation RMSE, that epoch)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    generator = torch.Generator(device=train.ratings.device).manual_seed(cfg.seed)
    best = (float("inf"), None, 0)
    for epoch in tqdm(range(1, cfg.epochs + 1), desc=name, unit="epoch", leave=False, disable=progress_disabled()):
        model.train()
        order = torch.randperm(len(train), generator=generator, device=train.ratings.device)
        for batch in order.split(cfg.batch_size):
            users, items = train.users[batch], train.items[batch]
            predictions, vq_loss = model(users, items)
            loss = F.mse_loss(predictions, train.ratings[batch]) + vq_loss + cfg.l2 * model.penalty(users, items)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        score = scores(lambda part: predict(model, part), {"val": val})["val"]
        if score < best[0]:
            best = (score, copy.deepcopy(model.state_dict()), epoch)
    if best[1] is None:
        raise UserError(f"{name}: training gave no finite validation RMSE; try a lower --lr")
    return best[1], best[2]


def item_codes(model: RatingModel) -> torch.Tensor:
    """Every item's codes (n_items, C) under a quantized model."""
    with torch.no_grad():
        return model.eval().item_vectors(torch.arange(model.item.num_embeddings, device=model.mean.device))[2]


def run_models(cfg: RecommendConfig, data: Ratings, split: Split, groups: dict, device) -> tuple:
    """({model name: results}, {model name: trained model}) for every model of the config.

    Results: RMSE on val, test, test_<group> for each of `groups` ({group: items}), and test_not_cold (what
    test_warm meant before the warm group needed --warm-min-train training ratings).
    """
    train, val, test = (Part(data, indices, device) for indices in (split.train, split.val, split.test))
    in_group = {name: torch.from_numpy(np.isin(data.items[split.test], items)).to(device)
                for name, items in groups.items()}
    mean = train.ratings.mean().item()
    parts = {"val": val, "test": test, **{f"test_{name}": test.subset(mask) for name, mask in in_group.items()},
             "test_not_cold": test.subset(~in_group["cold"])}
    results = {"global mean": {**scores(lambda part: torch.full_like(part.ratings, mean), parts), "best_epoch": 0,
                               "seconds": 0.0}}
    models = {}
    for name in cfg.model_names:
        start = time.perf_counter()
        model = build_model(name, cfg, data, mean).to(device)
        state, epoch = train_model(model, train, val, cfg, name)
        model.load_state_dict(state)
        results[name] = {**scores(lambda part: predict(model, part), parts), "best_epoch": epoch,
                         "seconds": round(time.perf_counter() - start, 1)}
        if model.quantizer is not None:
            results[name]["codes_used"] = [u["codes_used"] for u in model.quantizer.usage(item_codes(model))]
        models[name] = model
        print(table_row(name, results[name]), flush=True)
    return results, models


def table_row(name: str, r: dict) -> str:
    used = "/".join(str(c) for c in r.get("codes_used", [])) or "-"
    per_group = " ".join(f"{r[f'test_{group}']:>10.4f}" if r[f"test_{group}"] is not None else f"{'-':>10}"
                         for group in GROUPS)
    return (f"{name:<17} {r['test']:>10.4f} {per_group} {r['val']:>9.4f} {r['best_epoch']:>6} {used:>12} "
            f"{r['seconds']:>6.1f}")


TABLE_HEADER = (f"{'model':<17} {'test RMSE':>10} " + " ".join(f"{group:>10}" for group in GROUPS)
                + f" {'val RMSE':>9} {'epoch':>6} {'codes used':>12} {'sec':>6}")


def write_best_codes(cfg: RecommendConfig, data: Ratings, results: dict, models: dict) -> str | None:
    """item_codes.npy and meta.json of the quantized model with the best validation RMSE; its name."""
    quantized = [name for name, model in models.items() if model.quantizer is not None]
    if not quantized:
        return None
    best = min(quantized, key=lambda name: results[name]["val"])
    quantizer, codes = models[best].quantizer, item_codes(models[best])
    dtype = code_dtype(cfg.codebook_size)
    out_dir = Path(cfg.out_dir)
    save_array(out_dir / "item_codes.npy", codes.cpu().numpy().astype(dtype))
    write_json(out_dir / "meta.json", {
        "model": best, "dataset": cfg.dataset, "n_items": data.n_items, "codes_per_item": codes.shape[1],
        "codebook_size": cfg.codebook_size, "dtype": np.dtype(dtype).name,
        "usage": quantizer.usage(codes), "val_rmse": results[best]["val"],
        "rows": "row r of item_codes.npy holds the codes of the item whose dataset id is item_ids[r]",
        "item_ids": data.item_ids})
    return best


@main_entry
def main(argv=None):
    parser = build_parser(RecommendConfig, __doc__.split("\n")[0])
    cfg = config_from(RecommendConfig, given_config_values(RecommendConfig, parser.parse_args(argv)))
    with cpu_threads(cfg.threads):
        run(cfg)


def run(cfg: RecommendConfig) -> None:
    """Load and split the ratings, train every model, print the table and write the files."""
    device = pick_device(cfg.device)
    data = load_ratings(cfg)
    split = cold_item_split(data, cfg.cold_fraction, cfg.max_cold_train, seed=cfg.seed)
    groups = item_groups(data, split, cfg.warm_min_train)
    test_items = data.items[split.test]
    definitions = group_definitions(cfg.max_cold_train, cfg.warm_min_train)
    group_summary = {name: {"items": int(items.size), "test_ratings": int(np.isin(test_items, items).sum()),
                            "definition": definitions[name]} for name, items in groups.items()}
    cold_test = group_summary["cold"]["test_ratings"]
    print(f"{cfg.dataset}: {len(data)} ratings by {data.n_users} users of {data.n_items} items, {len(data.genre_names)} "
          f"genres; train {split.train.size}, val {split.val.size}, test {split.test.size} ({cold_test} of them on "
          f"{split.cold_items.size} cold items with 1-{cfg.max_cold_train} training ratings); device {device}")
    for name, g in group_summary.items():
        print(f"  {name + ' items':<12} {g['items']:>6} items, {g['test_ratings']:>6} test ratings: {g['definition']}")
    print(TABLE_HEADER)
    out_dir = Path(cfg.out_dir)
    write_json(out_dir / "config.json", dataclasses.asdict(cfg))
    results, models = run_models(cfg, data, split, groups, device)
    print(table_row("global mean", results["global mean"]))
    best = write_best_codes(cfg, data, results, models)
    write_json(out_dir / "results.json", {
        "dataset": cfg.dataset, "ratings": len(data), "users": data.n_users, "items": data.n_items,
        "split": {"train": int(split.train.size), "val": int(split.val.size), "test": int(split.test.size),
                  "cold_items": int(split.cold_items.size), "cold_test_ratings": cold_test,
                  "warm_min_train": cfg.warm_min_train},
        "groups": group_summary, "rmse": results, "best_quantized": best})
    print(f"wrote {out_dir}/results.json" + (f", item_codes.npy and meta.json ({best})" if best else ""))


if __name__ == "__main__":
    main()
