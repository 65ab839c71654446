"""The recommender experiment, in a room of its own: do quantized item embeddings help cold items?

`data` (MovieLens, synthetic ratings, the cold-item split, the item groups), `model` (matrix
factorisation with an optional quantizer on the item vectors) and `command` (`python -m tools.recommend`).
"""
