#!/usr/bin/env python3
"""release_fuzz.py: runs the shipped (release) sdd on mutated weight files and fails if any run crashes.

The unit fuzz tests (MMapWeightsTests) run the parsers in a debug build; this checks the binary users get.
Each case mutates one file of the tiny test model — a GGUF that `sdd convert` wrote from it, or one of the
folder's safetensors files (header length, header JSON, tensor bytes, truncation) — and runs
`sdd inspect` and `sdd generate` on it. A run may succeed (a mutation can leave a valid file) or fail with
exit status 1 and a message on stderr; a run killed by a signal, one that exits non-zero without a message,
and one that runs past the time limit count as failures.

Usage: tools/fuzz/release_fuzz.py [--sdd .build/release/sdd] [--cases 500] [--seed 1] [--jobs 2]
Standard library only (CI runs it without a virtual environment).
"""
import argparse
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "Tests", "Fixtures", "tiny-sd")
SAFETENSORS = ["unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
               "text_encoder/model.safetensors"]
INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 32, 1 << 40, 1 << 62,
               (1 << 63) - 1, (1 << 64) - 1]


def gguf_data_start(data):
    """Offset where a GGUF's key-value and tensor-info section ends (the mutations aim at the header)."""
    # Header: magic, version u32, tensor count u64, kv count u64. Walking the KVs exactly is the reader's job;
    # for aiming mutations it is enough to know the tokenizer makes the header large: aim at the first 2 MiB.
    return min(len(data), 2 << 20)


def mutate_bytes(data, rng, region_end):
    out = bytearray(data)
    kind = rng.choice(["flip", "field", "truncate", "splice", "flip", "field"])
    if kind == "truncate":
        return bytes(out[: rng.randrange(0, len(out))]), "truncate"
    if kind == "flip":
        for _ in range(rng.choice([1, 1, 2, 4, 16])):
            pos = rng.randrange(0, max(1, region_end))
            out[pos] ^= 1 << rng.randrange(8)
        return bytes(out), "flip"
    if kind == "field":
        width = rng.choice([4, 8])
        pos = rng.randrange(0, max(1, region_end - width))
        if rng.random() < 0.3:
            pos = rng.choice([4, 8, 16, 24]) if width == 8 else rng.choice([4, 8, 12, 16, 20])
        value = rng.choice(INTERESTING) & ((1 << (8 * width)) - 1)
        out[pos:pos + width] = value.to_bytes(width, "little")
        return bytes(out), "field"
    # splice: copy a run of bytes from elsewhere in the file over the header
    n = rng.randrange(1, 64)
    src = rng.randrange(0, max(1, len(out) - n))
    dst = rng.randrange(0, max(1, region_end - n))
    out[dst:dst + n] = out[src:src + n]
    return bytes(out), "splice"


def mutate_safetensors(data, rng):
    """Mutates the 8-byte header length, the JSON header (numbers, dtypes, names) or the raw bytes."""
    (hlen,) = struct.unpack("<Q", data[:8])
    header = data[8:8 + hlen]
    body = data[8 + hlen:]
    choice = rng.random()
    if choice < 0.45 and hlen < len(data):
        try:
            meta = json.loads(header)
        except ValueError:
            meta = None
        if isinstance(meta, dict):
            names = [k for k in meta if k != "__metadata__"]
            name = rng.choice(names)
            entry = meta[name]
            what = rng.choice(["shape", "offsets", "dtype", "name", "drop", "shape"])
            if what == "shape" and entry.get("shape"):
                i = rng.randrange(len(entry["shape"]))
                entry["shape"][i] = rng.choice([0, 1, -1, 2 ** 31, 2 ** 62, entry["shape"][i] * 2, entry["shape"][i] + 1])
            elif what == "offsets":
                i = rng.randrange(2)
                entry["data_offsets"][i] = rng.choice([0, -5, len(body) + 1, 2 ** 63, entry["data_offsets"][i] + 2])
            elif what == "dtype":
                entry["dtype"] = rng.choice(["F64", "I8", "BOOL", "F8_E4M3", "Q8_0", "", "F16", "BF16", "F32"])
            elif what == "name":
                meta[name + rng.choice(["x", ".weight", "\u0000"])] = meta.pop(name)
            else:
                meta.pop(name)
            new_header = json.dumps(meta).encode()
            return struct.pack("<Q", len(new_header)) + new_header + body, "json-" + what
    if choice < 0.6:
        value = rng.choice([0, 1, 2, hlen - 1, hlen + 1, len(data), len(data) + 8, 2 ** 31, 2 ** 63, 2 ** 64 - 1])
        return struct.pack("<Q", value) + data[8:], "header-length"
    return mutate_bytes(data, rng, 8 + hlen)


def classify(proc, timed_out):
    if timed_out:
        return "hang"
    if proc.returncode < 0:
        return "signal %s" % signal.Signals(-proc.returncode).name
    if proc.returncode == 0:
        return "ok"
    if not proc.stderr.strip():
        return "silent failure (exit %d)" % proc.returncode
    return "refused"


def run(cmd, timeout):
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout)
        return proc, False
    except subprocess.TimeoutExpired as e:
        class Timed:
            returncode = 0
            stderr = str(e)
        return Timed(), True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sdd", default=os.path.join(ROOT, ".build", "release", "sdd"))
    ap.add_argument("--cases", type=int, default=500, help="mutated files in all (half GGUF, half safetensors)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--keep", help="copy each failing file here")
    args = ap.parse_args()
    if not os.access(args.sdd, os.X_OK):
        sys.exit("release_fuzz: %s is not an executable (build it: swift build -c release --product sdd)" % args.sdd)

    work = tempfile.mkdtemp(prefix="sdd-fuzz-")
    try:
        base_gguf = os.path.join(work, "base.gguf")
        made = subprocess.run([args.sdd, "convert", "--model", TINY, "--type", "q8_0", "--output", base_gguf],
                              capture_output=True, text=True)
        if made.returncode != 0:
            sys.exit("release_fuzz: sdd convert failed:\n" + made.stderr)
        with open(base_gguf, "rb") as f:
            gguf = f.read()
        originals = {rel: open(os.path.join(TINY, rel), "rb").read() for rel in SAFETENSORS}

        rng = random.Random(args.seed)
        cases = []
        for i in range(args.cases):
            if i % 2 == 0:
                data, how = mutate_bytes(gguf, rng, gguf_data_start(gguf))
                cases.append((i, "gguf", None, data, how))
            else:
                rel = rng.choice(SAFETENSORS)
                data, how = mutate_safetensors(originals[rel], rng)
                cases.append((i, "safetensors", rel, data, how))

        def one(case):
            i, kind, rel, data, how = case
            case_dir = os.path.join(work, "case-%d" % i)
            os.makedirs(case_dir)
            if kind == "gguf":
                model = os.path.join(case_dir, "model.gguf")
                with open(model, "wb") as f:
                    f.write(data)
            else:
                model = os.path.join(case_dir, "model")
                shutil.copytree(TINY, model, ignore=lambda d, names: [n for n in names if n.endswith(".safetensors")])
                for other in SAFETENSORS:
                    target = os.path.join(model, other)
                    if other == rel:
                        with open(target, "wb") as f:
                            f.write(data)
                    else:
                        os.symlink(os.path.join(TINY, other), target)
            outcomes = []
            for cmd in ([args.sdd, "inspect", model],
                        [args.sdd, "generate", "--model", model, "--steps", "1", "--seed", "1", "--width", "64",
                         "--height", "64", "-o", os.path.join(case_dir, "out.png"), "a red circle"]):
                proc, timed_out = run(cmd, args.timeout)
                outcomes.append((cmd[1], classify(proc, timed_out), proc.stderr.strip().splitlines()[-1:]))
            bad = [o for o in outcomes if o[1] not in ("ok", "refused")]
            if bad and args.keep:
                os.makedirs(args.keep, exist_ok=True)
                shutil.copy(model if kind == "gguf" else os.path.join(model, rel),
                            os.path.join(args.keep, "case-%d-%s" % (i, os.path.basename(rel or "model.gguf"))))
            shutil.rmtree(case_dir, ignore_errors=True)
            return i, kind, rel, how, outcomes, bad

        counts = {}
        failures = []
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for i, kind, rel, how, outcomes, bad in pool.map(one, cases):
                for command, outcome, _ in outcomes:
                    key = (kind, command, "ok" if outcome == "ok" else "refused" if outcome == "refused" else "FAILED")
                    counts[key] = counts.get(key, 0) + 1
                if bad:
                    failures.append((i, kind, rel, how, bad))
        for (kind, command, outcome), n in sorted(counts.items()):
            print("%-12s %-9s %-8s %d" % (kind, command, outcome, n))
        for i, kind, rel, how, bad in failures:
            print("case %d (%s %s, %s): %s" % (i, kind, rel or "", how, bad), file=sys.stderr)
        print("release_fuzz: %d mutated files (%d GGUF, %d safetensors), %d runs, %d crashed, hung or failed silently"
              % (len(cases), sum(1 for c in cases if c[1] == "gguf"), sum(1 for c in cases if c[1] != "gguf"),
                 2 * len(cases), len(failures)))
        sys.exit(1 if failures else 0)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
