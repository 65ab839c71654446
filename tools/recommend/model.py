"""The rating model of the recommender experiment (`python -m tools.recommend`): matrix factorisation with biases,
optional genre side information, and an optional quantizer on the item vectors. No I/O here.

    rating(u, i) = mean + b_u + b_i + p_u . q_i

- Side information: with `genre_features`, an item's vector q_i is its ID embedding plus the mean of its
  genres' embeddings, and its bias b_i gets the mean of its genres' biases. A cold item then starts
  from what its genres say, whatever its few ratings say.
- Quantized items (the source's idea): q_i goes through a vector quantizer with the straight-through
  estimator, so it is replaced by a code vector (plain), G per-group codes (grouped) or a sum of N
  residual codes (residual); items that share codes share what those codes learned.
"""

import torch
import torch.nn as nn

INIT_STD = 0.05


def embedding(count: int, dim: int, std: float = INIT_STD) -> nn.Embedding:
    table = nn.Embedding(count, dim)
    nn.init.normal_(table.weight, std=std)
    return table


class RatingModel(nn.Module):
    def __init__(self, n_users: int, n_items: int, dim: int, mean: float, genre_features: torch.Tensor | None = None,
                 quantizer: nn.Module | None = None):
        super().__init__()
        self.user, self.item = embedding(n_users, dim), embedding(n_items, dim)
        self.user_bias, self.item_bias = embedding(n_users, 1, 0.0), embedding(n_items, 1, 0.0)
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("genres", None)  # (n_items, n_genres): each item's mean over its genres
        if genre_features is not None:
            per_item = genre_features.float() / genre_features.sum(1, keepdim=True).clamp_min(1)
            self.genres = per_item
            self.genre_vector = nn.Linear(per_item.shape[1], dim, bias=False)
            self.genre_bias = nn.Linear(per_item.shape[1], 1, bias=False)
            nn.init.normal_(self.genre_vector.weight, std=INIT_STD)
            nn.init.zeros_(self.genre_bias.weight)
        self.quantizer = quantizer  # channels-last: (B, D) item vectors

    def item_vectors(self, items: torch.Tensor):
        """(item vectors (B, D) as the ratings see them, quantizer loss, codes (B, C) or None)."""
        vectors = self.item(items)
        if self.genres is not None:
            vectors = vectors + self.genre_vector(self.genres[items])
        if self.quantizer is None:
            return vectors, vectors.new_zeros(()), None
        return self.quantizer(vectors)

    def forward(self, users: torch.Tensor, items: torch.Tensor):
        """Predicted ratings (B,) and the quantizer's loss (0 without one)."""
        item_vectors, vq_loss, _ = self.item_vectors(items)
        bias = self.user_bias(users).squeeze(1) + self.item_bias(items).squeeze(1)
        if self.genres is not None:
            bias = bias + self.genre_bias(self.genres[items]).squeeze(1)
        return self.mean + bias + (self.user(users) * item_vectors).sum(1), vq_loss

    def penalty(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Mean squared norm of the ID embeddings and biases a batch uses (the usual MF regulariser)."""
        rows = [self.user(users), self.item(items), self.user_bias(users), self.item_bias(items)]
        return sum(r.pow(2).sum(1).mean() for r in rows)
