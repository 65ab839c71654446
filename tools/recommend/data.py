"""Ratings for the recommender experiment (`python -m tools.recommend`): MovieLens, synthetic ratings, the cold-item split.

- `load_movielens(data_dir)`: GroupLens' ml-latest-small (about 100k ratings, 610 users, 9.7k movies, genres),
  read from DATA_DIR/ml-latest-small/ or from DATA_DIR/ml-latest-small.zip, which is downloaded and checked
  when missing. Offline, one message says where to put the zip.
- `synthetic_ratings(...)`: built in, offline, deterministic from a seed. Items belong to planted groups
  (their "genres") whose members share a taste vector, so item codes have something to find.
- `cold_item_split(...)`: train / val / test ratings where a set of held-out cold items keeps only a
  few (1 to `max_train`) training ratings; everything else is split at random.
- `item_groups(...)`: the items by what training has seen of them: cold, warm, rare, unseen (`GROUPS`).
"""

import csv
import hashlib
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from foundation.cli import UserError
from foundation.files import atomic_path

MOVIELENS_URL = "https://files.grouplens.org/datasets/movielens/ml-latest-small.zip"
# The release of 2018-09-26 (978,202 bytes, 100,836 ratings, 9,742 movies), as pinned by several independent
# projects; GroupLens itself publishes only an MD5 beside the zip (MOVIELENS_URL + ".md5").
MOVIELENS_SHA256 = "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436"
MOVIELENS_FILES = ("ratings.csv", "movies.csv")


@dataclass
class Ratings:
    users: np.ndarray  # (R,) int64 in [0, n_users)
    items: np.ndarray  # (R,) int64 in [0, n_items)
    ratings: np.ndarray  # (R,) float32
    genres: np.ndarray  # (n_items, n_genres) float32, 1 where the item has the genre
    genre_names: list
    item_ids: list  # the dataset's id of each item (MovieLens movieId)
    n_users: int

    @property
    def n_items(self) -> int:
        return self.genres.shape[0]

    def __len__(self) -> int:
        return self.ratings.shape[0]


@dataclass
class Split:
    train: np.ndarray  # indices into the ratings
    val: np.ndarray
    test: np.ndarray
    cold_items: np.ndarray  # items that keep only a few training ratings


def synthetic_ratings(n_users: int = 1000, n_items: int = 1500, n_genres: int = 12, mean_per_user: int = 60,
                      seed: int = 0) -> Ratings:
    """Half-star ratings from planted item groups: rating = 3.5 + user bias + item bias + taste . item + noise.

    An item's vector is its group's centre plus a little noise; its genres are its group, plus one other
    genre at random for 30% of the items (side information that is useful but not exact). Item
    popularity is long-tailed, so many items have few ratings, as in MovieLens.
    """
    rng = np.random.default_rng(seed)
    group = rng.integers(0, n_genres, n_items)
    centres = rng.normal(size=(n_genres, 8))
    item_vectors = centres[group] + 0.3 * rng.normal(size=(n_items, 8))
    item_bias = 0.4 * rng.normal(size=n_genres)[group] + 0.2 * rng.normal(size=n_items)
    taste, user_bias = 0.35 * rng.normal(size=(n_users, 8)), 0.3 * rng.normal(size=n_users)
    popularity = 1.0 / (rng.permutation(n_items) + 10.0) ** 0.9
    popularity /= popularity.sum()
    counts = np.minimum(10 + rng.geometric(1.0 / (mean_per_user - 10), n_users), n_items // 2)
    users = np.repeat(np.arange(n_users), counts)
    items = np.concatenate([rng.choice(n_items, c, replace=False, p=popularity) for c in counts])
    raw = 3.5 + user_bias[users] + item_bias[items] + (taste[users] * item_vectors[items]).sum(1)
    raw += 0.5 * rng.normal(size=raw.shape)
    genres = np.zeros((n_items, n_genres), np.float32)
    genres[np.arange(n_items), group] = 1
    extra = rng.random(n_items) < 0.3
    genres[np.flatnonzero(extra), rng.integers(0, n_genres, extra.sum())] = 1
    return Ratings(users.astype(np.int64), items.astype(np.int64), half_stars(raw), genres,
                   [f"group {g}" for g in range(n_genres)], list(range(n_items)), n_users)


def half_stars(raw: np.ndarray) -> np.ndarray:
    """Round to the MovieLens scale: 0.5 to 5.0 in steps of 0.5."""
    return (np.clip(np.round(raw * 2) / 2, 0.5, 5.0)).astype(np.float32)


def cold_item_split(ratings: Ratings, cold_fraction: float = 0.1, max_train: int = 5, holdout: float = 0.1,
                    seed: int = 0) -> Split:
    """Train/val/test indices with cold items: `cold_fraction` of the items that have more than `max_train` + 1
    ratings keep 1 to `max_train` of them (drawn uniformly) for training; their other ratings go half to
    val, half to test. Every other rating goes to val or test with probability `holdout` each."""
    rng = np.random.default_rng(seed)
    counts = np.bincount(ratings.items, minlength=ratings.n_items)
    eligible = np.flatnonzero(counts > max_train + 1)
    cold = np.sort(rng.choice(eligible, round(cold_fraction * eligible.size), replace=False))
    draw = rng.random(len(ratings))
    role = np.where(draw < holdout, 1, np.where(draw < 2 * holdout, 2, 0))  # 0 train, 1 val, 2 test
    for item in cold:
        mine = rng.permutation(np.flatnonzero(ratings.items == item))
        keep = rng.integers(1, max_train + 1)
        role[mine[:keep]] = 0
        role[mine[keep:]] = 1 + np.arange(mine.size - keep) % 2
    return Split(*(np.flatnonzero(role == r) for r in range(3)), cold)


GROUPS = ("cold", "warm", "rare", "unseen")  # the keys of `group_definitions` and `item_groups`, in order


def group_definitions(max_train: int, warm_min_train: int) -> dict:
    """{group: what puts an item in it}, in the order of `item_groups`; the one place the groups are defined."""
    return {"cold": f"held-out cold items: 1 to {max_train} training ratings by construction",
            "warm": f"other items with at least {warm_min_train} training ratings",
            "rare": f"other items with 1 to {warm_min_train - 1} training ratings",
            "unseen": "other items with no training rating (their ratings are all in val or test)"}


def item_groups(ratings: Ratings, split: Split, warm_min_train: int) -> dict:
    """{group: its items (sorted)} for `GROUPS`, a partition of the items (see `group_definitions`)."""
    train_counts = np.bincount(ratings.items[split.train], minlength=ratings.n_items)
    other = ~np.isin(np.arange(ratings.n_items), split.cold_items)
    return {"cold": split.cold_items,
            "warm": np.flatnonzero(other & (train_counts >= warm_min_train)),
            "rare": np.flatnonzero(other & (train_counts >= 1) & (train_counts < warm_min_train)),
            "unseen": np.flatnonzero(other & (train_counts == 0))}


def load_movielens(data_dir) -> Ratings:
    """ml-latest-small from DATA_DIR/ml-latest-small/, extracted from the (downloaded, checked) zip when missing."""
    data_dir = Path(data_dir)
    folder = data_dir / "ml-latest-small"
    if not all((folder / name).is_file() for name in MOVIELENS_FILES):
        archive = data_dir / "ml-latest-small.zip"
        if not archive.is_file():
            download(MOVIELENS_URL, archive)
        extract(archive, folder)
    return read_movielens(folder)


def download(url: str, path: Path) -> None:
    """Fetch `url` into `path` (atomically), or a UserError saying where to put the file by hand."""
    print(f"downloading {url} into {path.parent}/")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, atomic_path(path) as tmp:
            tmp.write_bytes(response.read())
    except OSError as err:  # offline, refused, timed out: all end the same way for the user
        raise UserError(f"could not download {url} ({err}). If this machine is offline, download it elsewhere "
                        f"and put {path.name} in '{path.parent}/' (or its extracted ml-latest-small/ folder), then "
                        "run again. DATASET=synthetic works offline.") from None


def extract(archive: Path, folder: Path) -> None:
    """Check the zip against the pinned SHA-256 and its layout, then extract ratings.csv and movies.csv."""
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != MOVIELENS_SHA256:
        raise UserError(f"{archive}: SHA-256 {digest} is not the expected {MOVIELENS_SHA256} (an incomplete download, "
                        f"or a newer release?). Delete it to download again, or extract a release you trust into "
                        f"'{folder}/' yourself")
    with zipfile.ZipFile(archive) as zf:
        for name in MOVIELENS_FILES:
            with atomic_path(folder / name) as tmp:
                tmp.write_bytes(zf.read(f"ml-latest-small/{name}"))


def read_csv(path: Path, columns: tuple) -> list:
    """The rows of a CSV file with (at least) the named columns, as dicts."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"{path}: cannot read it ({err})") from None
    if not rows or not set(columns) <= set(rows[0]):
        raise UserError(f"{path}: expected a CSV file with the columns {', '.join(columns)}")
    return rows


def read_movielens(folder: Path) -> Ratings:
    """Ratings and genres of an extracted MovieLens folder; items are the rated movies, by increasing movieId."""
    rating_rows = read_csv(folder / "ratings.csv", ("userId", "movieId", "rating"))
    genre_text = {int(row["movieId"]): row["genres"] for row in read_csv(folder / "movies.csv", ("movieId", "genres"))}
    try:
        user_ids, movie_ids = (np.array([int(row[c]) for row in rating_rows]) for c in ("userId", "movieId"))
        values = np.array([float(row["rating"]) for row in rating_rows], np.float32)
    except ValueError as err:
        raise UserError(f"{folder / 'ratings.csv'}: not a MovieLens ratings file ({err})") from None
    item_ids, items = np.unique(movie_ids, return_inverse=True)
    users = np.unique(user_ids, return_inverse=True)[1]
    tags = [[g for g in genre_text.get(int(m), "").split("|") if g and g != "(no genres listed)"] for m in item_ids]
    names = sorted({g for item_tags in tags for g in item_tags})
    genres = np.zeros((item_ids.size, len(names)), np.float32)
    for row, item_tags in enumerate(tags):
        genres[row, [names.index(g) for g in item_tags]] = 1
    return Ratings(users.astype(np.int64), items.astype(np.int64), values, genres, names, item_ids.tolist(),
                   int(users.max()) + 1)
