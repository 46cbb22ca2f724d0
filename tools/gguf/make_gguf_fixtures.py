#!/usr/bin/env python3
"""GGUF interoperability fixtures for sdd, made with PyPI's `gguf` package (the ggml project's own).

    python tools/gguf/make_gguf_fixtures.py [--out Tests/Fixtures/gguf]
        writes
          python-written.gguf                 tensors of every type sdd reads, quantized with gguf.quants,
                                              and metadata of every GGUF value type (incl. nested arrays)
          python-written.expected.safetensors gguf.quants.dequantize of each tensor, F32, original shape
          python-aligned64.gguf (+ .expected.safetensors)   the same with general.alignment = 64
          quant-cases.safetensors             fixed F32 inputs and the exact bytes gguf.quants produces
                                              for them in Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, F16, BF16

    python tools/gguf/make_gguf_fixtures.py --check FILE.gguf --values DIR
        reads FILE.gguf (written by `sdd convert`) with gguf.GGUFReader, dequantizes every tensor with
        gguf.quants.dequantize and compares it with DIR/<tensor name>.npy, the F32 values sdd itself
        uses (`sdd inspect FILE.gguf --dump-dequantized DIR`). Exit status 0 when all are equal.

Needs: pip install gguf numpy safetensors. Deterministic: the same package version gives the same bytes.
"""

import argparse
import os
import sys

import numpy as np

import gguf
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V
from safetensors.numpy import save_file

TYPES = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1]


def quantize(data: np.ndarray, qtype) -> np.ndarray:
    if qtype == Q.F32:
        return data.astype(np.float32)
    if qtype == Q.F16:
        return data.astype(np.float16)
    return gguf.quants.quantize(data, qtype)


def dequantize(q: np.ndarray, qtype, shape) -> np.ndarray:
    return np.asarray(gguf.quants.dequantize(q, qtype), dtype=np.float32).reshape(shape)


def block_cases(rng: np.random.Generator) -> np.ndarray:
    """Blocks of 32 chosen to hit the quantizers' edge cases."""
    blocks = [
        np.zeros(32),                                   # all zero: d = 0, id = 0
        np.full(32, 0.25),                              # constant block (max - min = 0 for the _1 types)
        np.full(32, -3.0),                              # constant negative
        np.r_[np.full(31, 0.01), 1e4],                  # one huge value
        np.r_[-7.5, rng.uniform(-1, 1, 31)],            # negative maximum first
        np.r_[rng.uniform(-1, 1, 31), -2.0],            # negative maximum last
        np.r_[2.0, -2.0, rng.uniform(-1, 1, 30)],       # tie in magnitude: the first wins
        np.arange(32) - 15.5,                           # evenly spaced, many exact halves
        (np.arange(32) - 16) * 0.5,                     # halves after scaling
        np.r_[rng.uniform(0, 1, 32)] * 1e-3,            # small positive
        rng.normal(0, 1e-2, 32),                        # typical weights
        rng.normal(0, 1, 32),
        rng.normal(0, 30, 32),
    ]
    random = [rng.normal(0, rng.uniform(0.01, 3), 32) for _ in range(51)]
    return np.concatenate(blocks + random).astype(np.float32)


def f16_cases() -> np.ndarray:
    v = [0.0, -0.0, 1.0, -1.0, 65504.0, 65519.99, 65520.0, 1e6, -1e6, np.inf, -np.inf,
         6.103515625e-05, 6.1e-05, 5.960464477539063e-08, 2.98023223876953125e-08, 2.9802326e-08,
         8.940696716308594e-08, 1e-8, -1e-7, 1.0009765625, 1.00048828125, 1.00146484375, 0.1, 0.2, 0.3,
         3.14159265, -2.7182818, 1234.5678, 1e-3, 1e-4, 1e-5, 1e-6]
    return np.array(v, dtype=np.float32)


def bf16_cases() -> np.ndarray:
    bits = np.array([0x00000000, 0x80000000, 0x3F800000, 0x3F808000, 0x3F818000, 0x3F80FFFF, 0x7F7FFFFF,
                     0xFF7FFFFF, 0x7F800000, 0xFF800000, 0x7F800001, 0x7FC00000, 0xFFC12345, 0x00000001,
                     0x00008000, 0x00018000, 0x40490FDB, 0xC02DF854], dtype=np.uint32)
    return bits.view(np.float32)


def make_fixtures(out: str) -> None:
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(20260527)

    # (b) exact quantizer bytes for fixed inputs.
    inputs = block_cases(rng)
    cases = {"input": inputs, "f16_input": f16_cases(), "bf16_input": bf16_cases()}
    for qtype in [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1]:
        cases[qtype.name.lower()] = np.ascontiguousarray(quantize(inputs, qtype)).view(np.uint8).ravel()
    with np.errstate(over="ignore"):
        cases["f16"] = quantize(cases["f16_input"], Q.F16).view(np.uint8).ravel()
    cases["bf16"] = gguf.quants.quantize(cases["bf16_input"], Q.BF16).view(np.uint8).ravel()
    cases["bf16_from_input"] = gguf.quants.quantize(inputs, Q.BF16).view(np.uint8).ravel()
    cases["f16_from_input"] = quantize(inputs, Q.F16).view(np.uint8).ravel()
    save_file(cases, os.path.join(out, "quant-cases.safetensors"))

    # (a) a file Python's GGUFWriter wrote.
    for name, alignment in [("python-written", None), ("python-aligned64", 64)]:
        path = os.path.join(out, name + ".gguf")
        w = gguf.GGUFWriter(path, "sdd-test")
        if alignment:
            w.add_custom_alignment(alignment)
        expected = {}
        if alignment is None:
            w.add_uint8("test.u8", 200)
            w.add_int8("test.i8", -100)
            w.add_uint16("test.u16", 60000)
            w.add_int16("test.i16", -30000)
            w.add_uint32("test.u32", 4000000000)
            w.add_int32("test.i32", -2000000000)
            w.add_float32("test.f32", 1.5)
            w.add_bool("test.bool", True)
            w.add_string("test.string", "héllo, GGUF ✓")
            w.add_uint64("test.u64", 18000000000000000000)
            w.add_int64("test.i64", -9000000000000000000)
            w.add_float64("test.f64", 2.718281828459045)
            w.add_key_value("test.arr_u8", [1, 2, 255], V.ARRAY, sub_type=V.UINT8)
            w.add_key_value("test.arr_i16", [-1, 2, -3], V.ARRAY, sub_type=V.INT16)
            w.add_array("test.arr_i32", [-1, 0, 7])
            w.add_array("test.arr_f32", [0.5, -1.25])
            w.add_key_value("test.arr_f64", [0.1, 1e300], V.ARRAY, sub_type=V.FLOAT64)
            w.add_key_value("test.arr_u64", [0, 2**64 - 1], V.ARRAY, sub_type=V.UINT64)
            w.add_array("test.arr_bool", [True, False, True])
            w.add_array("test.arr_str", ["a", "", "ünï"])
            w.add_array("test.arr_nested", [[1, 2], [3]])
            shapes = {"2d": (3, 64), "3d": (2, 2, 32), "1d": (96,)}
        else:
            shapes = {"2d": (2, 64)}
        for qtype in TYPES if alignment is None else [Q.F32, Q.Q8_0, Q.F16]:
            for label, shape in shapes.items():
                data = rng.normal(0, 0.5, shape).astype(np.float32)
                if label == "2d" and alignment is None:
                    data[0, :32] = 0            # an all-zero block
                    data[1, 5] = -40.0          # a block with one large negative value
                q = quantize(data, qtype)
                tname = f"{qtype.name.lower()}.{label}"
                if qtype in (Q.F32, Q.F16):
                    w.add_tensor(tname, q)
                else:
                    w.add_tensor(tname, q, raw_dtype=qtype)
                expected[tname] = dequantize(q, qtype, shape)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        save_file(expected, os.path.join(out, name + ".expected.safetensors"))
    for f in sorted(os.listdir(out)):
        print(f"{os.path.getsize(os.path.join(out, f)):8d}  {f}")


def check(path: str, values: str) -> int:
    r = gguf.GGUFReader(path)
    keys = {f.name: f for f in r.fields.values()}
    print(f"{path}: {len(r.tensors)} tensors, {len(keys)} metadata keys (GGUFReader)")
    for k in ["general.architecture", "sdd.format_version", "sdd.unet.config", "sdd.tokenizer.vocab"]:
        if k not in keys:
            print(f"  missing metadata key {k}")
            return 1
    arch = keys["general.architecture"]
    print(f"  general.architecture = {bytes(arch.parts[arch.data[0]]).decode()}")
    bad = 0
    checked = 0
    worst = 0.0
    counts = {}
    for t in r.tensors:
        npy = os.path.join(values, t.name + ".npy")
        if not os.path.exists(npy):  # sdd inspect --match dumped a subset
            continue
        checked += 1
        qtype = Q(t.tensor_type)
        counts[qtype.name] = counts.get(qtype.name, 0) + 1
        shape = tuple(int(d) for d in reversed(t.shape))
        ours = np.load(npy)
        theirs = dequantize(np.asarray(t.data), qtype, shape)
        if ours.size != theirs.size:
            print(f"  {t.name}: size {ours.size} != {theirs.size}")
            bad += 1
            continue
        a, b = ours.reshape(-1), theirs.reshape(-1)
        same = np.array_equal(a.view(np.uint32), b.view(np.uint32))
        diff = float(np.max(np.abs(a - b))) if a.size else 0.0
        worst = max(worst, diff)
        if not same:
            bad += 1
            print(f"  {t.name} ({qtype.name} {shape}): max |diff| {diff}")
    print(f"  types: {counts}")
    print(f"  {checked - bad} of {checked} checked tensors bit-identical (file has {len(r.tensors)}); max |diff| {worst}")
    return 1 if bad or not checked else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "..", "Tests", "Fixtures", "gguf"))
    p.add_argument("--check", metavar="FILE.gguf")
    p.add_argument("--values", metavar="DIR", help="with --check: sdd's dequantized tensors as .npy files")
    a = p.parse_args()
    if a.check:
        if not a.values:
            p.error("--check needs --values DIR")
        return check(a.check, a.values)
    make_fixtures(os.path.normpath(a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
