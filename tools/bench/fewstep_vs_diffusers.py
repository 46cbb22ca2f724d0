#!/usr/bin/env python3
"""Few-step speed comparison: diffusers and sdd, one after the other on this machine, on the same model with
the same scheduler, steps, guidance, seed, size and VAE (the model's, or --vae: e.g. TAESD); prints whole-generation seconds, UNet and
VAE seconds, peak RSS, the ratios, and how close the two images are (PSNR).

Default: LCM, 4 steps, guidance 1 (no unconditional branch), 512×512 — how LCM-LoRA users run SD 1.5
(StableDiffusionPipeline with LCMScheduler.from_config). Usage (venv from tools/reference/README.md):

    venv-ref/bin/python tools/reference/make_reference.py --full-sd15 /tmp/sd15-random
    .build/release/sdd convert --model /tmp/sd15-random --type q8_0 --output /tmp/sd15-q8_0.gguf
    venv-ref/bin/python tools/bench/fewstep_vs_diffusers.py --model /tmp/sd15-random \
        --sdd-model /tmp/sd15-q8_0.gguf --sdd-arg=--memory-budget --sdd-arg=256M --rounds 2
    # TAESD decode on both sides: --vae DIR (an AutoencoderTiny folder, e.g. madebyollin/taesd's layout)
    # other few-step recipes: --scheduler tcd --eta 0.3, or --scheduler ddim --timestep-spacing trailing
    # (Hyper-SD / PCM); quick check of the script on the tiny test model:
    venv-ref/bin/python tools/bench/fewstep_vs_diffusers.py --model Tests/Fixtures/tiny-sd \
        --sdd .build/debug/sdd --width 64 --height 64

Each side runs in its own child process, so peak RSS (ru_maxrss of that child) is its own. Model loading is
not timed on either side; "generation" is text encoding + every UNet evaluation + the VAE decode (sdd: the
stage sum from its --timings line; diffusers: the same stages timed around the pipeline call).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np


def diffusers_scheduler(pipe, name, spacing):
    import diffusers

    classes = {"lcm": "LCMScheduler", "tcd": "TCDScheduler", "ddim": "DDIMScheduler", "pndm": "PNDMScheduler",
               "euler": "EulerDiscreteScheduler", "euler-a": "EulerAncestralDiscreteScheduler",
               "dpm++2m": "DPMSolverMultistepScheduler", "lms": "LMSDiscreteScheduler"}
    cls = getattr(diffusers, classes[name])
    extra = {"timestep_spacing": spacing} if spacing else {}
    return cls.from_config(pipe.scheduler.config, **extra)


def run_diffusers(args):
    """Child process body: one diffusers generation, stages timed; writes the uint8 image to args.image_out."""
    import torch
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(args.threads)
    extra = {}
    if args.vae:
        # The VAE folder's own class: AutoencoderTiny (TAESD) or AutoencoderKL, as `sdd generate --vae` reads it.
        import diffusers

        with open(os.path.join(args.vae, "config.json")) as f:
            cls = getattr(diffusers, json.load(f).get("_class_name", "AutoencoderKL"))
        extra["vae"] = cls.from_pretrained(args.vae, torch_dtype=torch.float32)
    pipe = StableDiffusionPipeline.from_pretrained(args.model, torch_dtype=torch.float32,
                                                   safety_checker=None, requires_safety_checker=False, **extra)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = diffusers_scheduler(pipe, args.scheduler, args.timestep_spacing)
    stamps = []

    def on_step_end(p, i, t, kw):
        stamps.append(time.perf_counter())
        return {}

    encoded = []
    encode_prompt = pipe.encode_prompt

    def timed_encode(*a, **k):
        out = encode_prompt(*a, **k)
        encoded.append(time.perf_counter())
        return out

    pipe.encode_prompt = timed_encode
    kwargs = {}
    if args.scheduler == "tcd":
        kwargs["eta"] = args.eta  # StableDiffusionPipeline passes eta=0.0 unless told; sdd's TCD default is 0.3
    g = torch.Generator("cpu").manual_seed(args.seed)
    with torch.no_grad():
        t0 = time.perf_counter()
        latents = pipe(args.prompt, num_inference_steps=args.steps, guidance_scale=args.guidance,
                       width=args.width, height=args.height, generator=g, output_type="latent",
                       callback_on_step_end=on_step_end, **kwargs).images
        t1 = time.perf_counter()
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
        t2 = time.perf_counter()
    rgb = pipe.image_processor.postprocess(image, output_type="np")[0]
    np.save(args.image_out, (rgb * 255).round().astype(np.uint8))
    # The first step is timed from the end of text encoding (it also holds prepare_latents: a randn draw).
    steps = [b - a for a, b in zip(encoded[:1] + stamps[:-1], stamps)]
    print(json.dumps({"generation_seconds": t2 - t0, "text_encode_seconds": encoded[0] - t0,
                      "unet_total_seconds": stamps[-1] - encoded[0],
                      "unet_step_seconds": statistics.median(steps),
                      "vae_decode_seconds": t2 - t1, "unet_evaluations": len(stamps),
                      "torch_threads": torch.get_num_threads(),
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def run_child(cmd):
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run(cmd, capture_output=True, text=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    if proc.returncode != 0:
        sys.exit(f"command failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return proc, (peak if peak > before * 1024 else None)


def png_rgb(path):
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8)


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="diffusers folder (diffusers' model; sdd's too unless --sdd-model)")
    ap.add_argument("--sdd", default=".build/release/sdd")
    ap.add_argument("--sdd-model", help="model for sdd, e.g. a .gguf converted from --model")
    ap.add_argument("--sdd-arg", action="append", default=[], help="extra argument for sdd generate (repeatable)")
    ap.add_argument("--scheduler", default="lcm", help="sdd's name: lcm, tcd, ddim, … (default lcm)")
    ap.add_argument("--timestep-spacing", choices=["leading", "trailing", "linspace"],
                    help="override for schedulers that use one (ddim trailing: Hyper-SD / PCM)")
    ap.add_argument("--eta", type=float, default=0.3, help="TCD's eta (default 0.3)")
    ap.add_argument("--vae", help="another VAE folder for both sides (AutoencoderTiny = TAESD, or AutoencoderKL)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--guidance", type=float, default=1.0)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all CPUs)")
    ap.add_argument("--prompt", default="a photograph of an astronaut riding a horse")
    ap.add_argument("--rounds", type=int, default=1, help="alternate diffusers and sdd this many times; medians")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--image-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        run_diffusers(args)
        return

    common = ["--steps", str(args.steps), "--width", str(args.width), "--height", str(args.height),
              "--seed", str(args.seed), "--scheduler", args.scheduler, "--prompt", args.prompt]
    rounds = {"diffusers": [], "sdd": []}
    psnrs = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            ref = os.path.join(tmp, f"diffusers-{r}.npy")
            cmd = [sys.executable, __file__, "--child", "--model", args.model, "--threads", str(args.threads),
                   "--guidance", str(args.guidance), "--eta", str(args.eta), "--image-out", ref, *common]
            if args.timestep_spacing:
                cmd += ["--timestep-spacing", args.timestep_spacing]
            if args.vae:
                cmd += ["--vae", args.vae]
            proc, _ = run_child(cmd)
            rounds["diffusers"].append(json.loads(proc.stdout.strip().splitlines()[-1]))

            out = os.path.join(tmp, f"sdd-{r}.png")
            cmd = [args.sdd, "generate", "--model", args.sdd_model or args.model, "--steps", str(args.steps),
                   "--guidance", str(args.guidance), "--width", str(args.width), "--height", str(args.height),
                   "--seed", str(args.seed), "--scheduler", args.scheduler, "--timings", *args.sdd_arg,
                   "-o", out, args.prompt]
            if args.scheduler == "tcd":
                cmd[2:2] = ["--eta", str(args.eta)]
            if args.timestep_spacing:
                cmd[2:2] = ["--timestep-spacing", args.timestep_spacing]
            if args.vae:
                cmd[2:2] = ["--vae", args.vae]
            proc, _ = run_child(cmd)
            line = [l for l in proc.stderr.splitlines() if l.startswith("{")][-1]
            rounds["sdd"].append(json.loads(line))
            psnrs.append(psnr(png_rgb(out), np.load(ref)))
            print(f"round {r + 1}: " + json.dumps({k: v[-1] for k, v in rounds.items()}) +
                  f" image PSNR sdd vs diffusers {psnrs[-1]:.1f} dB", flush=True)

    keys = ("generation_seconds", "text_encode_seconds", "unet_total_seconds", "unet_step_seconds", "vae_decode_seconds", "peak_rss_bytes")
    med = {side: {k: statistics.median(x[k] for x in v) for k in keys} for side, v in rounds.items()}
    evals = {side: v[-1]["unet_evaluations"] for side, v in rounds.items()}
    print(json.dumps({"scheduler": args.scheduler, "timestep_spacing": args.timestep_spacing, "steps": args.steps,
                      "guidance": args.guidance, "size": f"{args.width}x{args.height}",
                      "sdd_model": args.sdd_model or args.model, "vae": args.vae, "sdd_args": args.sdd_arg,
                      "rounds": args.rounds, "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE", "(auto)"),
                      "unet_evaluations": evals, "image_psnr_db": psnrs, "medians": med}, indent=1))
    d, s = med["diffusers"], med["sdd"]
    for key in keys:
        ratio = s[key] / d[key] if d[key] else float("nan")
        print(f"{key}: sdd {s[key]:.3f}  diffusers {d[key]:.3f}  ratio sdd/diffusers {ratio:.3f}")


if __name__ == "__main__":
    main()
