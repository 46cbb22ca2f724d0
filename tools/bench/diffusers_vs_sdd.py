#!/usr/bin/env python3
"""Runs diffusers and sdd on the same model, one after the other on this machine, and prints
seconds per UNet step, VAE decode seconds and peak RSS for both, with the ratios.

Usage (venv from tools/reference/README.md):
    venv-ref/bin/python tools/bench/diffusers_vs_sdd.py --model /tmp/sd15-random \
        --sdd .build/release/sdd --steps 3 --width 512 --height 512
    # sdd on the Q8_0 file made from the same folder, under a budget, 2 alternating rounds:
    venv-ref/bin/python tools/bench/diffusers_vs_sdd.py --model /tmp/sd15-random \
        --sdd-model sd15-q8_0.gguf --sdd-arg=--memory-budget --sdd-arg=200M --rounds 2

Each side runs in its own child process so peak RSS (ru_maxrss of that child) is its own.
sdd's per-step times come from its --timings JSON line on stderr.
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


def run_diffusers(args):
    """Child process body: one diffusers generation with per-step timestamps."""
    import torch
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(args.threads)
    pipe = StableDiffusionPipeline.from_pretrained(args.model, torch_dtype=torch.float32,
                                                   safety_checker=None, requires_safety_checker=False)
    stamps = []

    def on_step_end(p, i, t, kw):
        stamps.append(time.perf_counter())
        return {}

    g = torch.Generator("cpu").manual_seed(0)
    t0 = time.perf_counter()
    with torch.no_grad():
        latents = pipe(args.prompt, num_inference_steps=args.steps, width=args.width, height=args.height,
                       generator=g, output_type="latent", callback_on_step_end=on_step_end).images
        t1 = time.perf_counter()
        pipe.vae.decode(latents / pipe.vae.config.scaling_factor)
        t2 = time.perf_counter()
    # Intervals between step callbacks; the first step (after text encoding) is timed from t0 only
    # when there is nothing else.
    step_times = [b - a for a, b in zip(stamps[:-1], stamps[1:])] or [stamps[0] - t0]
    print(json.dumps({"unet_step_seconds": statistics.median(step_times),
                      "vae_decode_seconds": t2 - t1,
                      "torch_threads": torch.get_num_threads(),
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def child_peak_rss(cmd, env=None):
    start = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    if proc.returncode != 0:
        sys.exit(f"command failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return proc, peak if peak > start * 1024 else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--sdd", default=".build/release/sdd")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--prompt", default="a photograph of an astronaut riding a horse")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--skip-diffusers", action="store_true")
    ap.add_argument("--sdd-model", help="model for sdd (default: --model), e.g. a .gguf made from it")
    ap.add_argument("--sdd-arg", action="append", default=[], help="extra argument for sdd generate")
    ap.add_argument("--rounds", type=int, default=1, help="alternate diffusers and sdd this many times; "
                    "medians over rounds are compared")
    args = ap.parse_args()
    if args.child:
        run_diffusers(args)
        return

    rounds = {"diffusers": [], "sdd": []}
    for r in range(args.rounds):
        if not args.skip_diffusers:
            proc, _ = child_peak_rss([sys.executable, __file__, "--child", "--model", args.model, "--steps",
                                      str(args.steps), "--width", str(args.width), "--height", str(args.height),
                                      "--threads", str(args.threads), "--prompt", args.prompt])
            rounds["diffusers"].append(json.loads(proc.stdout.strip().splitlines()[-1]))

        with tempfile.TemporaryDirectory() as tmp:
            cmd = [args.sdd, "generate", "--model", args.sdd_model or args.model, "--steps", str(args.steps),
                   "--width", str(args.width), "--height", str(args.height), "--seed", "0", "--timings",
                   *args.sdd_arg, "-o", os.path.join(tmp, "out.png"), args.prompt]
            proc, _ = child_peak_rss(cmd)
            line = [l for l in proc.stderr.splitlines() if l.startswith("{")][-1]
            rounds["sdd"].append(json.loads(line))
        print(f"round {r + 1}: " + json.dumps({k: v[-1] for k, v in rounds.items() if v}), flush=True)

    keys = ("unet_step_seconds", "vae_decode_seconds", "peak_rss_bytes")
    results = {side: {k: statistics.median(x[k] for x in v) for k in keys} for side, v in rounds.items() if v}
    print(json.dumps({"sdd_model": args.sdd_model or args.model, "sdd_args": args.sdd_arg, "rounds": args.rounds,
                      "medians": results}, indent=1))
    if "diffusers" in results:
        d, s = results["diffusers"], results["sdd"]
        for key in keys:
            print(f"{key}: sdd {s[key]:.3f}  diffusers {d[key]:.3f}  ratio sdd/diffusers {s[key] / d[key]:.3f}")


if __name__ == "__main__":
    main()
