#!/usr/bin/env python3
"""A stable-diffusion.cpp-style GGUF of the tiny model, written with PyPI's `gguf` package, and diffusers'
generation from exactly the weights it holds.

    venv-ref/bin/python tools/reference/make_single_file.py      # writes /tmp/sdd-tiny-sd1.safetensors
    venv-ref/bin/python tools/gguf/make_sdcpp_fixture.py [--single /tmp/sdd-tiny-sd1.safetensors]

writes
  Tests/Fixtures/gguf/sdcpp-tiny-sd1.gguf   tiny-sd under CompVis names (model.diffusion_model.*,
        first_stage_model.*, cond_stage_model.transformer.text_model.*), no sdd metadata, typed as
        stable-diffusion.cpp stores a model: 1-D tensors F32, attention/feed-forward matrices Q8_0, the token
        embedding Q4_0, everything else (conv kernels included, 4-D) F16; integer tensors and EMA left out.
  Tests/Fixtures/reference/sdcpp-gguf-sd1/  pipeline.json + pipeline_*.safetensors: diffusers'
        from_single_file(config=tiny-sd) run on the GGUF's weights (each dequantized with gguf.quants).
"""
import argparse
import os
import sys

import numpy as np
import torch

import gguf
from gguf import GGMLQuantizationType as Q
from safetensors import safe_open
from safetensors.torch import save_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tools", "reference"))
import make_reference as mr  # noqa: E402
from diffusers import StableDiffusionPipeline  # noqa: E402


def storage(name, shape):
    if len(shape) <= 1:
        return Q.F32
    if "token_embedding" in name:
        return Q.Q4_0
    if len(shape) == 2 and shape[-1] % 32 == 0 and name.startswith("model.diffusion_model.") and (
            "transformer_blocks" in name):
        return Q.Q8_0
    return Q.F16


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--single", default="/tmp/sdd-tiny-sd1.safetensors")
    args = ap.parse_args()
    out = os.path.join(ROOT, "Tests", "Fixtures", "gguf", "sdcpp-tiny-sd1.gguf")
    writer = gguf.GGUFWriter(out, "stable-diffusion")  # general.architecture only; no sdd.* keys
    dequantized = {}
    counts = {}
    with safe_open(args.single, "pt") as f:
        for name in f.keys():
            t = f.get_tensor(name)
            if name.startswith("model_ema.") or not t.is_floating_point():
                continue
            x = t.to(torch.float32).numpy()
            qtype = storage(name, x.shape)
            if qtype == Q.F32:
                data = x
            elif qtype == Q.F16:
                data = x.astype(np.float16)
            else:
                data = gguf.quants.quantize(x, qtype)
            writer.add_tensor(name, data, raw_dtype=qtype)
            counts[qtype.name] = counts.get(qtype.name, 0) + 1
            back = np.asarray(gguf.quants.dequantize(data, qtype), dtype=np.float32).reshape(x.shape)
            dequantized[name] = torch.from_numpy(back.copy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"wrote {out}: {sum(counts.values())} tensors {counts}, {os.path.getsize(out) / 1e6:.2f} MB")

    # Read it back with gguf's reader: every tensor decodes to what was written.
    reader = gguf.GGUFReader(out)
    assert not any(k.startswith("sdd.") for k in reader.fields)
    for t in reader.tensors:
        v = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(dequantized[t.name].shape)
        assert np.array_equal(v, dequantized[t.name].numpy()), t.name

    tmp = "/tmp/sdd-sdcpp-dequantized.safetensors"
    save_file(dequantized, tmp)
    tiny = os.path.join(ROOT, "Tests", "Fixtures", "tiny-sd")
    pipe = StableDiffusionPipeline.from_single_file(tmp, config=tiny, torch_dtype=torch.float32,
                                                    local_files_only=True, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    ref = os.path.join(ROOT, "Tests", "Fixtures", "reference", "sdcpp-gguf-sd1")
    os.makedirs(ref, exist_ok=True)
    cases = [c for c in mr.PIPELINE_CASES if c["name"] == "pndm_default"]
    mr.ref_pipeline(pipe, ref, cases=cases, model="gguf/sdcpp-tiny-sd1.gguf (weights dequantized by gguf.quants; "
                    "from_single_file, config=tiny-sd)")
    mr.print_tree(ref)


if __name__ == "__main__":
    main()
