#!/usr/bin/env python3
"""k-quant fixtures for sdd's read-only Q4_K / Q5_K / Q6_K decoders, made with PyPI's `gguf` package.

    python tools/gguf/make_kquant_fixtures.py [--out Tests/Fixtures/gguf]
        writes
          kquants.gguf                  tensors "q4_k", "q5_k", "q6_k" of shape [3, 512] (two super-blocks
                                        of 256 per row), their blocks random bytes with finite f16 scales,
                                        written with gguf.GGUFWriter
          kquants.expected.safetensors  gguf.quants.dequantize of each, F32, shape [3, 512]

Deterministic (numpy seed 14).
"""
import argparse
import os

import numpy as np

import gguf
from gguf import GGMLQuantizationType as Q
from safetensors.numpy import save_file

# Byte offsets of the f16 scale fields in each block: Q4_K/Q5_K d and dmin at 0 and 2; Q6_K d at 208.
LAYOUT = {Q.Q4_K: (144, [0, 2]), Q.Q5_K: (176, [0, 2]), Q.Q6_K: (210, [208])}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    ap.add_argument("--out", default=os.path.join(root, "Tests", "Fixtures", "gguf"))
    args = ap.parse_args()
    rng = np.random.default_rng(14)
    rows, cols = 3, 512
    writer = gguf.GGUFWriter(os.path.join(args.out, "kquants.gguf"), "kquant-fixture")
    expected = {}
    for qtype, (block_bytes, scale_offsets) in LAYOUT.items():
        blocks = rows * cols // 256
        raw = rng.integers(0, 256, size=(blocks, block_bytes), dtype=np.uint8)
        for off in scale_offsets:
            scale = rng.normal(0, 0.02, size=blocks).astype(np.float16)
            raw[:, off:off + 2] = scale.view(np.uint8).reshape(blocks, 2)
        data = raw.reshape(rows, cols // 256 * block_bytes)
        name = qtype.name.lower()
        writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qtype)
        values = np.asarray(gguf.quants.dequantize(data, qtype), dtype=np.float32).reshape(rows, cols)
        assert np.isfinite(values).all()
        expected[name] = values
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    save_file(expected, os.path.join(args.out, "kquants.expected.safetensors"))
    for n, v in expected.items():
        print(f"{n}: {v.shape} min {v.min():+.4f} max {v.max():+.4f}")


if __name__ == "__main__":
    main()
