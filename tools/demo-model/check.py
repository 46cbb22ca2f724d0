#!/usr/bin/env python3
"""Semantic check of the demo model with diffusers' own StableDiffusionPipeline.

For held-out prompts (colour x shape x position combinations never drawn in training) over
several seeds, generates 64x64 images (PNDM, --steps, --guidance) and classifies the mean colour
of the named region and of the background (nearest palette colour, dataset.COLOURS). A case
passes when both match the prompt. Also checks "swap": the same prompt with the shape and
background colour words exchanged must give the exchanged colours.

    python tools/demo-model/check.py [--model models/demo] [--grid tools/demo-model/check_grid.png]

Writes tools/demo-model/semantic_cases.json (--write-cases) so the Swift tests can replay the
same cases through sdd.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import dataset  # noqa: E402

SEEDS = [0, 1, 2]
STEPS = 25
GUIDANCE = 7.5
# background used for the held-out prompts: one per held-out combination (large / small)
BACKGROUNDS = {
    ("red", "circle", "top left"): ("blue", "white"),
    ("green", "square", "bottom right"): ("white", "black"),
    ("blue", "triangle", "top right"): ("yellow", "white"),
    ("yellow", "circle", "bottom left"): ("black", "blue"),
    ("white", "square", "center"): ("red", "green"),
    ("black", "triangle", "bottom left"): ("green", "yellow"),
    ("blue", "circle", "center"): ("white", "red"),
    ("red", "triangle", "bottom right"): ("yellow", "black"),
}


def shape_box(shape, size, position):
    """[x0, y0, x1, y1) pixel box inside the shape (the nominal shape, before jitter)."""
    cx, cy = dataset.POSITIONS[position]
    h = dataset.SIZES[size]
    if shape == "triangle":
        cy, hw = cy + 0.3 * h, 0.3 * h
    else:
        hw = 0.5 * h
    return [int(round(cx - hw)), int(round(cy - hw)), int(round(cx + hw)), int(round(cy + hw))]


def background_boxes(position):
    """Boxes well away from the shape (any size)."""
    if position == "center":
        return [[2, 2, 12, 12], [52, 2, 62, 12], [2, 52, 12, 62], [52, 52, 62, 62]]
    cx, cy = dataset.POSITIONS[position]
    ox, oy = 64 - cx, 64 - cy  # the diagonally opposite quadrant
    return [[ox - 10, oy - 10, ox + 10, oy + 10]]


def case(prompt, seed, steps, guidance, kind, colour, shape, size, position, background):
    """One check case: the generation settings and where to look for which colour."""
    return dict(prompt=prompt, seed=seed, steps=steps, guidance=guidance, width=64, height=64,
                scheduler="pndm", kind=kind, shape=shape, size=size, position=position,
                shape_colour=colour, shape_box=shape_box(shape, size, position),
                background_colour=background, background_boxes=background_boxes(position))


def cases(guidance=GUIDANCE, steps=STEPS):
    out = []
    for (colour, shape, position), (bg_large, bg_small) in BACKGROUNDS.items():
        assert (colour, shape, position) in dataset.HELD_OUT
        for size, bg, kind in (("large", bg_large, "held_out"), ("small", bg_small, "held_out"),
                               ("large", colour, "swap")):
            fg = bg_large if kind == "swap" else colour
            prompt = dataset.caption(fg, shape, size, position, bg)
            for seed in SEEDS:
                out.append(case(prompt, seed, steps, guidance, kind, fg, shape, size, position, bg))
    return out


def validation_cases(guidance=GUIDANCE, steps=STEPS, n=24):
    """Combinations that were in training (never HELD_OUT), new seeds: for choosing settings such
    as the guidance scale without looking at the held-out cases."""
    rng = np.random.default_rng(99)
    colours, positions = list(dataset.COLOURS), list(dataset.POSITIONS)
    out = []
    while len(out) < 2 * n:
        colour, shape = colours[rng.integers(6)], dataset.SHAPES[rng.integers(3)]
        position, size = positions[rng.integers(5)], list(dataset.SIZES)[rng.integers(2)]
        bg = [c for c in colours if c != colour][rng.integers(5)]
        if (colour, shape, position) in dataset.HELD_OUT:
            continue
        prompt = dataset.caption(colour, shape, size, position, bg)
        for seed in (10, 11):
            out.append(case(prompt, seed, steps, guidance, "validation", colour, shape, size, position, bg))
    return out


def mean_colour(img, boxes):
    px = np.concatenate([img[y0:y1, x0:x1].reshape(-1, 3) for x0, y0, x1, y1 in boxes])
    return px.astype(np.float64).mean(0)


def classify(rgb):
    names = list(dataset.COLOURS)
    pal = np.array([dataset.COLOURS[n] for n in names], np.float64)
    return names[int(np.argmin(((pal - rgb) ** 2).sum(1)))]


def colours_anywhere(img, c):
    """Position ignored: the most common palette colour (nearest per pixel) is the background
    colour and the shape colour covers at least 2% of the pixels."""
    names = list(dataset.COLOURS)
    pal = np.array([dataset.COLOURS[n] for n in names], np.float64)
    px = img.reshape(-1, 3).astype(np.float64)
    cls = np.argmin(((px[:, None, :] - pal[None]) ** 2).sum(2), 1)
    counts = np.bincount(cls, minlength=len(names)) / len(cls)
    return (names[int(np.argmax(counts))] == c["background_colour"]
            and counts[names.index(c["shape_colour"])] >= 0.02)


def judge(img, c):
    fg = classify(mean_colour(img, [c["shape_box"]]))
    bg = classify(mean_colour(img, c["background_boxes"]))
    return fg, bg, fg == c["shape_colour"] and bg == c["background_colour"]


def vae_round_trip(a, cs):
    import torch
    from diffusers import AutoencoderKL
    vae = AutoencoderKL.from_pretrained(os.path.join(a.model, "vae"), torch_dtype=torch.float32).eval()
    rng = np.random.default_rng(5)
    ok = 0
    for c in cs:  # jittered like the training images
        dx, dy = rng.uniform(-dataset.JITTER, dataset.JITTER, 2)
        img = dataset.render(c["shape_colour"], c["shape"], c["size"], c["position"], c["background_colour"],
                             dx, dy, rng.uniform(-1, 1))
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 127.5 - 1
        with torch.no_grad():
            r = vae.decode(vae.encode(x).latent_dist.mean).sample
        out = ((r[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        fg, bg, good = judge(out, c)
        ok += good
        if not good:
            print(f'FAIL "{c["prompt"]}": shape region {fg}, background {bg}')
    print(f"VAE round trip: {ok}/{len(cs)} = {100 * ok / len(cs):.1f}% of the drawn images still pass")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "demo"))
    ap.add_argument("--grid", default=os.path.join(HERE, "check_grid.png"))
    ap.add_argument("--cases", default=os.path.join(HERE, "semantic_cases.json"))
    ap.add_argument("--write-cases", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="held-out large only, seed 0")
    ap.add_argument("--guidance", type=float, default=GUIDANCE)
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--validation", action="store_true",
                    help="run the validation cases (training combinations, new seeds) instead")
    ap.add_argument("--vae-only", action="store_true",
                    help="judge the drawn images of the cases after an encode/decode round trip through the "
                    "model's VAE instead: the pass rate the decoder allows any UNet")
    ap.add_argument("--device", default="cpu", help="cuda where one is lent (the seeds' noise is "
                    "still drawn on the CPU, as diffusers does with a CPU generator)")
    a = ap.parse_args()

    cs = cases(a.guidance, a.steps)
    if a.write_cases:
        with open(a.cases, "w") as f:
            json.dump(dict(
                about="Held-out semantic cases for the demo model (tools/demo-model/check.py). "
                      "Boxes are [x0, y0, x1, y1) in pixels of the 64x64 image; a case passes when "
                      "the mean colour of shape_box and of the union of background_boxes is, by "
                      "nearest RGB distance in `palette`, shape_colour and background_colour.",
                palette={k: list(v) for k, v in dataset.COLOURS.items()},
                held_out_combinations=[list(h) for h in dataset.HELD_OUT],
                cases=cs), f, indent=1)
        print("wrote", a.cases, len(cs), "cases")

    import torch
    from diffusers import StableDiffusionPipeline
    torch.set_num_threads(a.threads)
    if a.validation:
        cs = validation_cases(a.guidance, a.steps)
    if a.vae_only:
        return vae_round_trip(a, cs)
    pipe = StableDiffusionPipeline.from_pretrained(a.model, torch_dtype=torch.float32, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(a.device)
    if a.quick:
        cs = [c for c in cs if c["kind"] == "held_out" and c["size"] == "large" and c["seed"] == 0]
    imgs, res, anyw = [], {}, {}
    t0 = time.time()
    for c in cs:
        g = torch.Generator("cpu").manual_seed(c["seed"])
        im = pipe(c["prompt"], num_inference_steps=c["steps"], guidance_scale=c["guidance"],
                  generator=g, height=c["height"], width=c["width"], output_type="np").images[0]
        img = (np.clip(im, 0, 1) * 255).round().astype(np.uint8)
        imgs.append(img)
        fg, bg, ok = judge(img, c)
        key = f'{c["kind"]}/{c["size"]}'
        res.setdefault(key, []).append(ok)
        anyw.setdefault(key, []).append(colours_anywhere(img, c))
        print(f'{"PASS" if ok else "FAIL"} seed {c["seed"]} "{c["prompt"]}": shape region {fg}, '
              f'background {bg}', flush=True)
    print(f"{len(cs)} images in {time.time() - t0:.0f}s")
    allv = []
    for k, v in res.items():
        print(f"  {k}: {sum(v)}/{len(v)} = {100 * sum(v) / len(v):.0f}%")
        allv += v
    for k, v in anyw.items():
        print(f"  {k}, colours only (position ignored): {sum(v)}/{len(v)} = {100 * sum(v) / len(v):.0f}%")
    held = [x for k, v in res.items() if k.startswith("held_out") for x in v]
    if held:
        print(f"held-out pass rate: {sum(held)}/{len(held)} = {100 * sum(held) / len(held):.1f}%")
    print(f"all cases: {sum(allv)}/{len(allv)} = {100 * sum(allv) / len(allv):.1f}%")
    from PIL import Image
    cols = len(SEEDS) * (1 if a.quick else 3)
    dataset.grid(imgs, cols).resize((cols * 128, (len(imgs) + cols - 1) // cols * 128),
                                    Image.NEAREST).save(a.grid)
    print("grid:", a.grid, f"(rows = held-out combinations; columns = seeds {SEEDS} of the large, "
          "small and colour-swapped prompt)" if not a.quick else "")


if __name__ == "__main__":
    main()
