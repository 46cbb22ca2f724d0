#!/usr/bin/env python3
"""Times the VAE decode alone: diffusers' AutoencoderKL (fp32, SD 1.5 decoder config, random weights) and
`sdd bench --stage vae`, one after the other on this machine, and prints both medians and the ratio.

Usage:
    venv-ref/bin/python tools/bench/vae_vs_diffusers.py --model /work/sd15-f16.gguf \
        --sdd .build/release/sdd --size 512 --repeats 3 --threads 2 [--rounds 2]

Random weights are fine for timing: a conv costs the same whatever its values. Each side runs a warm-up
decode, then `--repeats` timed decodes; `--rounds` alternates the two sides that many times so drift in the
machine's load hits both. Each side runs in its own child process.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time


def run_diffusers(args):
    import torch
    from diffusers import AutoencoderKL

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3,
                        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                        block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4,
                        norm_num_groups=32, sample_size=512).eval()
    z = torch.randn(1, 4, args.size // 8, args.size // 8)
    times = []
    with torch.no_grad():
        vae.decode(z)
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            vae.decode(z)
            times.append(time.perf_counter() - t0)
    print(json.dumps({"vae_decode_seconds": statistics.median(times), "vae_decode_seconds_all": times,
                      "torch_threads": torch.get_num_threads(), "torch": torch.__version__}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="model for sdd (its VAE weights are timed)")
    ap.add_argument("--sdd", default=".build/release/sdd")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        run_diffusers(args)
        return

    d_all, s_all = [], []
    for r in range(args.rounds):
        proc = subprocess.run([sys.executable, __file__, "--child", "--size", str(args.size), "--model", args.model,
                               "--repeats", str(args.repeats), "--threads", str(args.threads)],
                              capture_output=True, text=True, check=True)
        d = json.loads(proc.stdout.strip().splitlines()[-1])
        proc = subprocess.run([args.sdd, "bench", "--stage", "vae", "--model", args.model, "--width", str(args.size),
                               "--height", str(args.size), "--repeats", str(args.repeats), "--json"],
                              capture_output=True, text=True, check=True)
        s = json.loads(proc.stdout.strip().splitlines()[-1])
        d_all += d["vae_decode_seconds_all"]
        s_all += s["vae_decode_seconds_all"]
        print(f"round {r + 1}: diffusers {' '.join(f'{t:.2f}' for t in d['vae_decode_seconds_all'])}  "
              f"sdd {' '.join(f'{t:.2f}' for t in s['vae_decode_seconds_all'])}", flush=True)
    dm, sm = statistics.median(d_all), statistics.median(s_all)
    print(f"vae_decode_seconds median: sdd {sm:.3f}  diffusers {dm:.3f}  ratio sdd/diffusers {sm / dm:.3f}  "
          f"(torch {d['torch']}, {d['torch_threads']} threads; {args.size}x{args.size})")


if __name__ == "__main__":
    main()
