#!/usr/bin/env python3
"""Procedural captioned shapes for the sdd demo model (64x64 RGB, deterministic per seed).

One shape (circle, square, triangle) of one colour and size (small, large) at one position
(top left, top right, bottom left, bottom right, center) on a plain background of another
colour, captioned "a small red circle in the top left on a blue background".

Some (colour, shape, position) combinations are never drawn for training (HELD_OUT, every size
and background): the held-out tests ask the model for them.

    python tools/demo-model/dataset.py [--out grid.png]   # preview a grid of samples
"""
import argparse
import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
SUPER = 4  # drawn at 4x and box-downsampled: anti-aliased edges

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 215, 30),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SHAPES = ["circle", "square", "triangle"]
SIZES = {"small": 8.0, "large": 13.0}  # half extent in pixels
POSITIONS = {  # shape centre in pixels (x, y)
    "top left": (16, 16),
    "top right": (48, 16),
    "bottom left": (16, 48),
    "bottom right": (48, 48),
    "center": (32, 32),
}
JITTER = 2  # +- pixels of centre jitter; +- 1 pixel of size jitter

# (colour, shape, position) never seen in training, in any size or on any background.
HELD_OUT = [
    ("red", "circle", "top left"),
    ("green", "square", "bottom right"),
    ("blue", "triangle", "top right"),
    ("yellow", "circle", "bottom left"),
    ("white", "square", "center"),
    ("black", "triangle", "bottom left"),
    ("blue", "circle", "center"),
    ("red", "triangle", "bottom right"),
]


def caption(colour, shape, size, position, background):
    where = "in the center" if position == "center" else f"in the {position}"
    return f"a {size} {colour} {shape} {where} on a {background} background"


def render(colour, shape, size, position, background, dx=0.0, dy=0.0, ds=0.0):
    """uint8 HxWx3 image."""
    s = SUPER
    img = Image.new("RGB", (SIZE * s, SIZE * s), COLOURS[background])
    d = ImageDraw.Draw(img)
    cx, cy = POSITIONS[position]
    cx, cy, h = (cx + dx) * s, (cy + dy) * s, (SIZES[size] + ds) * s
    fill = COLOURS[colour]
    if shape == "circle":
        d.ellipse([cx - h, cy - h, cx + h, cy + h], fill=fill)
    elif shape == "square":
        d.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
    else:  # apex up, base down
        d.polygon([(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)], fill=fill)
    img = img.resize((SIZE, SIZE), Image.BOX)
    return np.asarray(img, dtype=np.uint8)


def sample(seed, index, train=True):
    """Deterministic random sample: (uint8 image, caption, attributes)."""
    rng = np.random.default_rng([seed, index])
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    while True:
        shape = SHAPES[rng.integers(len(SHAPES))]
        position = list(POSITIONS)[rng.integers(len(POSITIONS))]
        if not train or (colour, shape, position) not in HELD_OUT:
            break
        colour = list(COLOURS)[rng.integers(len(COLOURS))]
    size = list(SIZES)[rng.integers(len(SIZES))]
    bgs = [c for c in COLOURS if c != colour]
    background = bgs[rng.integers(len(bgs))]
    dx, dy = rng.uniform(-JITTER, JITTER, 2)
    ds = rng.uniform(-1, 1)
    img = render(colour, shape, size, position, background, dx, dy, ds)
    attrs = dict(colour=colour, shape=shape, size=size, position=position, background=background)
    return img, caption(colour, shape, size, position, background), attrs


def _make_range(args):
    seed, start, stop, train = args
    imgs = np.empty((stop - start, SIZE, SIZE, 3), np.uint8)
    caps = []
    for i in range(start, stop):
        imgs[i - start], c, _ = sample(seed, i, train)
        caps.append(c)
    return imgs, caps


def make(seed, n, train=True, workers=1):
    """n samples; the same for any number of worker processes (each index has its own RNG)."""
    if workers <= 1 or n < 2000:
        return _make_range((seed, 0, n, train))
    from multiprocessing import Pool
    chunk = (n + 4 * workers - 1) // (4 * workers)
    jobs = [(seed, i, min(n, i + chunk), train) for i in range(0, n, chunk)]
    with Pool(workers) as pool:
        parts = pool.map(_make_range, jobs)
    return np.concatenate([p[0] for p in parts]), [c for p in parts for c in p[1]]


def grid(images, cols):
    rows = (len(images) + cols - 1) // cols
    h, w = images[0].shape[:2]
    g = np.zeros((rows * h, cols * w, 3), np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        g[r * h:(r + 1) * h, c * w:(c + 1) * w] = im
    return Image.fromarray(g)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/sdd-demo-dataset.png")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    imgs, caps = make(a.seed, 32)
    for c in caps[:8]:
        print(c)
    grid(list(imgs), 8).resize((8 * 128, 4 * 128), Image.NEAREST).save(a.out)
    print("wrote", a.out)
