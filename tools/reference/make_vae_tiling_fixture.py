"""Tiled VAE decode fixture: diffusers 0.42.1 AutoencoderKL.tiled_decode on the committed tiny VAE.

Writes Tests/Fixtures/reference/vae_tiled.safetensors and vae_tiled.json. For each case the VAE
gets small tiles (tile_latent_min_size / tile_sample_min_size / tile_overlap_factor set on the
module, then enable_tiling()), decodes a seeded z through vae.decode (so _decode's "is the latent
larger than one tile" check is part of the reference), and the untiled decode of the same z is
stored too, so a test can show that tiled and untiled differ but stay close.

    venv-ref/bin/python tools/reference/make_vae_tiling_fixture.py

Deterministic (CPU, float32, fixed seeds): running it twice gives byte-identical files.
"""
import json
import os

import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODEL = os.path.join(ROOT, "Tests", "Fixtures", "tiny-sd", "vae")
OUT = os.path.join(ROOT, "Tests", "Fixtures", "reference")

# name, z shape [1, 4, h, w], tile_latent_min_size, tile_sample_min_size, tile_overlap_factor, seed.
# "small": 4-cell tiles (stride 3) over 7x10 latents -> 3 x 4 tiles, the last row and column only
#   one latent cell wide, so blend_extent shrinks to the edge tile's 8 pixels.
# "wide": 8-cell tiles (stride 6, 16-pixel blends, 48-pixel row_limit: SD 1.5's 64/512 proportion
#   scaled down) over 9x13 latents -> 2 x 3 tiles.
# "fits": 6x5 latents under 8-cell tiles: decode() does not tile at all (the no-op case).
CASES = [
    ("small", [1, 4, 7, 10], 4, 32, 0.25, 11),
    ("wide", [1, 4, 9, 13], 8, 64, 0.25, 12),
    ("fits", [1, 4, 6, 5], 8, 64, 0.25, 13),
]


def main():
    torch.set_num_threads(2)
    vae = AutoencoderKL.from_pretrained(MODEL, torch_dtype=torch.float32).eval()
    tensors = {}
    meta = {"source": "diffusers %s AutoencoderKL.decode with enable_tiling()" % __import__("diffusers").__version__,
            "model": "Tests/Fixtures/tiny-sd/vae", "cases": []}
    for name, shape, latent_tile, sample_tile, overlap, seed in CASES:
        z = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)
        with torch.no_grad():
            vae.disable_tiling()
            untiled = vae.decode(z).sample
            vae.tile_latent_min_size = latent_tile
            vae.tile_sample_min_size = sample_tile
            vae.tile_overlap_factor = overlap
            vae.enable_tiling()
            tiled = vae.decode(z).sample
            vae.disable_tiling()
        overlap_size = int(latent_tile * (1 - overlap))
        rows = len(range(0, shape[2], overlap_size))
        cols = len(range(0, shape[3], overlap_size))
        is_tiled = shape[-1] > latent_tile or shape[-2] > latent_tile
        tensors[f"{name}.z"] = z.contiguous()
        tensors[f"{name}.tiled"] = tiled.contiguous()
        if name != "wide":  # keeps the file small; "small" and "fits" carry the untiled comparison
            tensors[f"{name}.untiled"] = untiled.contiguous()
        diff = (tiled - untiled).abs().max().item() if tiled.shape == untiled.shape else None
        meta["cases"].append({
            "name": name, "latent_shape": shape, "tile_latent_min_size": latent_tile,
            "tile_sample_min_size": sample_tile, "tile_overlap_factor": overlap, "seed": seed,
            "tiled": is_tiled, "tile_rows": rows if is_tiled else 1, "tile_cols": cols if is_tiled else 1,
            "output_shape": list(tiled.shape), "max_abs_tiled_minus_untiled": diff,
        })
        print(name, list(z.shape), "->", list(tiled.shape), "tiles", meta["cases"][-1]["tile_rows"], "x",
              meta["cases"][-1]["tile_cols"], "max|tiled-untiled|", diff)
    path = os.path.join(OUT, "vae_tiled.safetensors")
    save_file(tensors, path)
    with open(os.path.join(OUT, "vae_tiled.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.write("\n")
    for p in (path, os.path.join(OUT, "vae_tiled.json")):
        print(p, os.path.getsize(p), "bytes")


if __name__ == "__main__":
    main()
