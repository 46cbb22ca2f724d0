#!/usr/bin/env python3
"""TAESD preview fixture: diffusers' AutoencoderTiny decode of every step's latents of a whole-pipeline run, what
`sdd generate --preview FILE --preview-vae Tests/Fixtures/tiny-taesd` must draw.

Reads reference/pipeline_pndm_default.safetensors (tiny-sd, PNDM 8 steps, seed 0; make_reference.py) and writes
reference/taesd-preview/pndm_default_previews.safetensors:
  previews  U8 [n, 64, 64, 3]  for each entry i of step_latents (the latents after scheduler step i+1):
                               tiny-taesd.decode(step_latents[i] / scaling_factor).sample, then the pipeline's
                               postprocessing ((x / 2 + 0.5).clamp(0, 1), * 255, round) — diffusers'
                               StableDiffusionPipeline(vae=AutoencoderTiny) image of those latents.
Usage: venv-ref/bin/python tools/reference/make_taesd_preview_fixture.py   (a few seconds; deterministic)
"""
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_reference as mr  # noqa: E402  (sets threads, logging, imports diffusers)

from diffusers import AutoencoderTiny  # noqa: E402
from diffusers.image_processor import VaeImageProcessor  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

FIXTURES = os.path.join(mr.ROOT, "Tests", "Fixtures")


def main():
    taesd = AutoencoderTiny.from_pretrained(os.path.join(FIXTURES, "tiny-taesd"), torch_dtype=torch.float32).eval()
    steps = load_file(os.path.join(FIXTURES, "reference", "pipeline_pndm_default.safetensors"))["step_latents"]
    processor = VaeImageProcessor(vae_scale_factor=8)
    previews = []
    with torch.no_grad():
        for latents in steps:  # [1, 4, 8, 8] each
            image = taesd.decode(latents[:1] / taesd.config.scaling_factor, return_dict=False)[0]
            np_image = processor.postprocess(image, output_type="np")  # (x / 2 + 0.5).clamp(0, 1), NHWC
            previews.append(torch.from_numpy((np_image[0] * 255).round()).to(torch.uint8))
    out = os.path.join(FIXTURES, "reference", "taesd-preview")
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "pndm_default_previews.safetensors")
    # One metadata key only: safetensors writes its metadata map in no fixed order, and the file must be byte-stable.
    save_file({"previews": torch.stack(previews)}, path, metadata={"format": "pt"})
    print(f"wrote {os.path.relpath(path, mr.ROOT)}: {len(previews)} previews of {tuple(previews[0].shape)} "
          f"({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
