#!/usr/bin/env python3
"""Single-file VAE fixtures: Tests/Fixtures/tiny-vae-kl as one CompVis/LDM-named .safetensors, as people hold
VAEs such as vae-ft-mse-840000-ema-pruned.safetensors, checked with diffusers' own AutoencoderKL.from_single_file.

Writes (Tests/Fixtures/single-file/):
  tiny-vae-kl-compvis.safetensors      bare CompVis names (encoder.down.0.block.0.norm1.weight,
                                       decoder.mid.attn_1.q.weight [C,C,1,1], quant_conv.weight, ...)
  tiny-vae-kl-first-stage.safetensors  the same under first_stage_model. (as a VAE cut from a whole checkpoint)
Both keep tiny-vae-kl's F16 values bit for bit. Each is loaded with
AutoencoderKL.from_single_file(FILE, config=tiny-vae-kl) and must give exactly the folder's tensors; then the
existing reference/vae-kl case (tiny-sd with vae=tiny-vae-kl, made by make_sd2_fixtures.py) is replayed with the
single-file VAE and must give the same latents and image, so the Swift tests compare against reference/vae-kl.

Usage: venv-ref/bin/python tools/reference/make_single_file_vae.py   (~10 s on 2 cores; deterministic)
"""
import json
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_reference as mr  # noqa: E402  (sets threads, logging, imports diffusers)
from make_single_file import compvis_vae  # noqa: E402  (diffusers -> CompVis VAE names)

from diffusers import AutoencoderKL, StableDiffusionPipeline  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.numpy import load_file as load_numpy  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

FIXTURES = os.path.join(mr.ROOT, "Tests", "Fixtures")
KL = os.path.join(FIXTURES, "tiny-vae-kl")
OUT = os.path.join(FIXTURES, "single-file")


def compvis_file(prefix):
    cfg = json.load(open(os.path.join(KL, "config.json")))
    levels = len(cfg["block_out_channels"])
    out = {}
    with safe_open(os.path.join(KL, "diffusion_pytorch_model.safetensors"), "pt") as f:
        for k in f.keys():
            v = f.get_tensor(k)
            name, conv = compvis_vae(k, levels)
            out[prefix + name] = v.reshape(*v.shape, 1, 1) if conv else v
    return dict(sorted(out.items()))


def check(path, folder_vae):
    vae = AutoencoderKL.from_single_file(path, config=KL, torch_dtype=torch.float32, local_files_only=True)
    a, b = vae.state_dict(), folder_vae.state_dict()
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))[:5]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    print(f"  from_single_file({os.path.basename(path)}, config=tiny-vae-kl): {len(a)} tensors equal to the folder's")
    return vae


def replay_vae_kl(vae):
    """The reference/vae-kl cases with the single-file VAE give the stored latents and image exactly."""
    ref = os.path.join(FIXTURES, "reference", "vae-kl")
    index = json.load(open(os.path.join(ref, "pipeline.json")))
    pipe = StableDiffusionPipeline.from_pretrained(os.path.join(FIXTURES, "tiny-sd"), vae=vae,
                                                   torch_dtype=torch.float32, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    for c in index["cases"]:
        assert c["scheduler"] == "own" and c["count"] == 1, c["name"]
        stored = load_numpy(os.path.join(ref, c["file"]))
        kwargs = dict(prompt=c["prompt"], negative_prompt=c["negative_prompt"], num_inference_steps=c["steps"],
                      guidance_scale=c["guidance"], height=c["height"], width=c["width"])
        latents = pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(c["seed"]),
                       output_type="latent").images.numpy()
        image = pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(c["seed"]), output_type="np").images
        image = (image * 255).round().astype(np.float32)
        assert np.array_equal(latents, stored["latents"]), c["name"]
        assert np.array_equal(image, stored["image"]), c["name"]
        print(f"  reference/vae-kl {c['name']}: same latents and image with the single-file VAE")


def main():
    print(f"torch {torch.__version__}, diffusers {mr.diffusers.__version__}")
    os.makedirs(OUT, exist_ok=True)
    folder_vae = AutoencoderKL.from_pretrained(KL, torch_dtype=torch.float32)
    single = None
    for name, prefix in (("tiny-vae-kl-compvis.safetensors", ""),
                         ("tiny-vae-kl-first-stage.safetensors", "first_stage_model.")):
        path = os.path.join(OUT, name)
        save_file(compvis_file(prefix), path, metadata={"format": "pt"})
        single = check(path, folder_vae)
        print(f"wrote {os.path.relpath(path, mr.ROOT)} ({os.path.getsize(path)} bytes)")
    replay_vae_kl(single)


if __name__ == "__main__":
    main()
