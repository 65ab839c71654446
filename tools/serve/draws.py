"""The `tools.serve` page's draws, streamed as the prior writes them: every finished row of codes is an event.

A draw calls `emit(event)` with JSON-ready dicts: {"event": "start", "total"}, then {"event": "row", "level",
"row", "done", "total", "image"} as each row of codes is final (the samplers' `on_row`), then {"event": "done",
"image", "codes", "seconds"}. A row's image is the maps decoded so far, the rows not drawn yet greyed out (each
row has one in maps of up to MAX_FRAMES rows; taller maps every few rows and the last). With two levels the top
level's rows are progress only, without an image: the decoder needs the bottom map, and a bottom of zeros would
show a made-up picture. `emit` raising (the page went away) stops the draw inside the sampler. Used by
`tools.serve.app`.
"""

import base64
import collections
import contextlib
import io
import math
import threading
import time

import numpy as np
import torch
from torchvision.transforms.functional import to_pil_image

from foundation.cli import UserError
from foundation.files import code_dtype
from foundation.images import grid_of, labelled_rows
from foundation.levels import level_names, name_suffix, top_first
from stage1_vqvae.data import to_model_range
from tools.common.drawing import decode_uint8
from tools.complete import complete, grey_out, repeat_maps

MAX_FRAMES = 16  # pictures per level: decoding every row of a tall map would slow its draw down
WAIT_SECONDS = 0.5  # how often a queued draw says it is still waiting (and finds out whether its page is gone)


class Cancelled(Exception):
    """The page that asked for the draw went away."""


class Slots:
    """At most `running` draws at once and `waiting` more queued in turn; any further one is told it is busy."""

    def __init__(self, running: int = 2, waiting: int = 8):
        self._free = threading.Semaphore(running)
        self._lock = threading.Lock()
        self._room = running + waiting
        self.inside = 0  # draws running or queued
        self.outcomes = collections.Counter()  # finished, cancelled, failed

    @contextlib.contextmanager
    def turn(self, emit):
        """Hold a slot for the block; while queued, emit a "waiting" event at once and every WAIT_SECONDS."""
        with self._lock:
            if self.inside >= self._room:
                raise UserError("the server is busy (every draw slot and place in the queue is taken): try again soon")
            self.inside += 1
        try:
            turn_now = self._free.acquire(blocking=False)
            while not turn_now:
                emit({"event": "waiting"})
                turn_now = self._free.acquire(timeout=WAIT_SECONDS)
            try:
                yield
            finally:
                self._free.release()
        finally:
            with self._lock:
                self.inside -= 1

    def count(self, outcome: str) -> None:
        """Record how a draw ended."""
        with self._lock:
            self.outcomes[outcome] += 1


def png_data_url(picture) -> str:
    """A PIL image as a data: URL of its PNG."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def codes_data_url(names: tuple, codes: tuple, cfg, labels) -> str:
    """The code maps (each level under its name in `names`) and labels as a data: URL of an .npz."""
    sizes = top_first(cfg.top_codebook_size, cfg.codebook_size, len(codes))
    arrays = {name: level.cpu().numpy().astype(code_dtype(size)) for name, level, size in zip(names, codes, sizes)}
    if labels is not None:
        arrays[names[-1].split("_")[0] + "_labels"] = labels.cpu().numpy().astype(np.int64)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return "data:application/octet-stream;base64," + base64.b64encode(buffer.getvalue()).decode()


class LiveDraw:
    """The sampler's `on_row(level, i, codes)` as row events, with a picture once every level above is final."""

    def __init__(self, emit, vqvae, maps: tuple, total: int, picture):
        self.emit, self.vqvae, self.picture = emit, vqvae, picture
        self.maps, self.total = list(maps), total  # the maps being filled, top level first
        self.done, self.images = 0, None

    def on_row(self, level: int, i: int, codes: torch.Tensor) -> None:
        """Send row i of `level` (the picture when due); raises when the page went away, which stops the draw."""
        self.maps[level] = codes
        self.done += 1
        event = {"event": "row", "level": level, "row": i, "done": self.done, "total": self.total}
        height = codes.shape[1]
        if level == len(self.maps) - 1 and ((i + 1) % math.ceil(height / MAX_FRAMES) == 0 or i == height - 1):
            images = to_model_range(decode_uint8(self.vqvae, tuple(self.maps), codes.device))
            self.images = grey_out(images, i + 1, height)
            event["image"] = png_data_url(self.picture(self.images))
        self.emit(event)


def finish(emit, live: LiveDraw, final, names: tuple, codes: tuple, cfg, labels, start: float) -> None:
    """The "done" event: the finished picture, the code maps to download, the time taken."""
    emit({"event": "done", "image": png_data_url(final(live.images)), "done": live.done, "total": live.total,
          "codes": codes_data_url(names, codes, cfg, labels), "seconds": round(time.perf_counter() - start, 2)})


def level_rows(cfg) -> tuple:
    """Rows of each level's map, top first."""
    return top_first(cfg.top_grid_height, cfg.grid_height, cfg.levels)


def square_grid(images: torch.Tensor):
    """Images in [-1, 1] as one square grid picture."""
    return to_pil_image(grid_of(images))


@torch.no_grad()
def draw_samples(session, args, labels, emit, picture=square_grid, final=square_grid, prefix="samples") -> None:
    """n samples drawn in one batch from one generator seeded with the seed (`tools.sample`'s draws for n <= 256)."""
    run, start = session.run, time.perf_counter()
    rows = level_rows(run.prior.cfg)
    live = LiveDraw(emit, run.vqvae, (None,) * len(rows), sum(rows), picture)
    emit({"event": "start", "total": live.total})
    generator = torch.Generator(device=session.device).manual_seed(args.seed)
    codes = run.prior.sample_levels(args.n, labels, args.temperature, args.top_k, generator, guidance=args.guidance,
                                    on_row=live.on_row)
    names = tuple(prefix + name_suffix(name) for name in level_names(len(rows)))  # as tools.sample names its files
    finish(emit, live, final, names, codes, run.prior.cfg, labels, start)


def draw_classes(session, args, labels, emit) -> None:
    """A row of `per_class` samples per class, labelled with its name once finished (evaluate's classes.png)."""
    names, per_class = session.run.class_names(), args.per_class
    args.n = labels.shape[0]

    def labelled(images):
        return labelled_rows([images[c * per_class : (c + 1) * per_class] for c in range(len(names))], names)

    draw_samples(session, args, labels, emit, lambda images: to_pil_image(grid_of(images, nrow=per_class)),
                 labelled, prefix="classes")


@torch.no_grad()
def draw_completions(session, args, image: torch.Tensor, labels, emit) -> None:
    """One image completed `n_completions` times below its first `keep_rows` code rows (`tools.complete`'s draws)."""
    run, start, times = session.run, time.perf_counter(), args.n_completions
    x = to_model_range(image.to(session.device))
    codes = run.vqvae.encode_levels(x)
    height = run.prior.cfg.grid_height
    shown = torch.cat([x, grey_out(run.vqvae.decode_indices(codes), args.keep_rows, height)]).cpu()  # as decode_uint8

    def picture(images):
        return to_pil_image(grid_of(torch.cat([shown, images]), nrow=2 + times))

    live = LiveDraw(emit, run.vqvae, repeat_maps(codes, times), height, picture)
    emit({"event": "start", "total": live.total})
    completed = complete(run.prior, codes, args.keep_rows, labels, times, args.seed, session.device,
                         args.temperature, args.top_k, args.guidance, on_row=live.on_row)
    names = top_first("completions_top", "completions", len(codes))  # as tools.complete names its files
    finish(emit, live, picture, names, completed, run.prior.cfg, labels, start)
