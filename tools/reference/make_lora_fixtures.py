#!/usr/bin/env python3
"""LoRA parity fixtures: small LoRA files in the layouts people hold, and diffusers' results with them.

    venv-ref/bin/python tools/reference/make_lora_fixtures.py      # ~20 s on 2 cores

Writes (deterministic: fixed seeds, CPU, float32 compute):
  Tests/Fixtures/lora/kohya_unet_te.safetensors   kohya/A1111 names (lora_unet_*, lora_te_*, .lora_down/.lora_up,
                                                  .alpha; F16): attention, feed-forward, proj_in/out (1x1 conv),
                                                  ResNet conv1 (3x3) / conv_shortcut (1x1) / time_emb_proj,
                                                  a downsampler (3x3 stride 2); CLIP q/k/v/out_proj, fc1/fc2
  Tests/Fixtures/lora/peft_unet_te.safetensors    diffusers/PEFT names (unet.….lora_A/B.weight,
                                                  text_encoder.….lora_A/B.weight; F32, no alphas)
  Tests/Fixtures/lora/old_diffusers.safetensors   older diffusers names (…attn1.processor.to_q_lora.down.weight,
                                                  …ff.net.2.lora.down.weight, text_encoder …self_attn.to_k_lora…)
  Tests/Fixtures/reference/lora/<case>/pipeline.json + pipeline_<case>.safetensors (same layout as
                                                  make_reference.py's whole-pipeline cases)

Each case loads tiny-sd, then pipe.load_lora_weights(file, adapter_name=…) for each LoRA and
pipe.set_adapters(names, adapter_weights=scales): what sdd's --lora PATH:SCALE must reproduce.
The script checks diffusers adapted every module of every file (a dropped key would make a fixture vacuous).
"""
import importlib.util
import os
import shutil

import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("make_reference", os.path.join(HERE, "make_reference.py"))
ref = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ref)

FIX = os.path.join(ref.ROOT, "Tests", "Fixtures")
MODEL = os.path.join(FIX, "tiny-sd")
LORA_DIR = os.path.join(FIX, "lora")
REF_DIR = os.path.join(FIX, "reference", "lora")


def modules(model, want):
    """(name, module) of the Linear/Conv2d layers of `model` whose name passes `want`."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and want(name):
            out.append((name, m))
    return out


def lora_pair(m, rank, gen, strength):
    """Random A [r, in(, kh, kw)] and B [out, r(, 1, 1)] whose product is `strength` × W's typical size."""
    w = m.weight
    if isinstance(m, torch.nn.Conv2d):
        a = torch.randn(rank, w.shape[1], w.shape[2], w.shape[3], generator=gen)
        b = torch.randn(w.shape[0], rank, 1, 1, generator=gen)
        fan = w.shape[1] * w.shape[2] * w.shape[3]
    else:
        a = torch.randn(rank, w.shape[1], generator=gen)
        b = torch.randn(w.shape[0], rank, generator=gen)
        fan = w.shape[1]
    a = a / fan ** 0.5
    b = b * (w.std().item() * strength / rank ** 0.5)
    return a, b


def unet_targets(name, kinds):
    return any(name.endswith(k) for k in kinds)


def make_kohya(pipe):
    gen = torch.Generator().manual_seed(1500)
    sd = {}
    kinds = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
             "attn2.to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out", "resnets.0.conv1",
             "conv_shortcut", "time_emb_proj", "downsamplers.0.conv")
    for name, m in modules(pipe.unet, lambda n: unet_targets(n, kinds)):
        rank = 4
        a, b = lora_pair(m, rank, gen, 1.0)
        key = "lora_unet_" + name.replace(".", "_")
        sd[key + ".lora_down.weight"] = a.half()
        sd[key + ".lora_up.weight"] = b.half()
        # As kohya's LoCon writes them: network_alpha on linear layers, conv_alpha on convolutions. (diffusers gives
        # every attention layer the file's most common alpha — its alpha_pattern keys miss them —, so a file whose
        # attention layers carry differing alphas would pin that quirk rather than kohya's alpha/rank.)
        sd[key + ".alpha"] = torch.tensor(2.0 if isinstance(m, torch.nn.Linear) else 1.0, dtype=torch.float16)
    for name, m in modules(pipe.text_encoder, lambda n: "encoder.layers" in n):
        rank = 4
        a, b = lora_pair(m, rank, gen, 1.0)
        key = "lora_te_" + name.replace(".", "_")
        sd[key + ".lora_down.weight"] = a.half()
        sd[key + ".lora_up.weight"] = b.half()
        sd[key + ".alpha"] = torch.tensor(2.0, dtype=torch.float16)
    return sd


def make_peft(pipe):
    gen = torch.Generator().manual_seed(1600)
    sd = {}
    kinds = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.2", "proj_out", "conv2", "upsamplers.0.conv")
    for name, m in modules(pipe.unet, lambda n: unet_targets(n, kinds)):
        a, b = lora_pair(m, 2, gen, 1.2)
        sd[f"unet.{name}.lora_A.weight"] = a
        sd[f"unet.{name}.lora_B.weight"] = b
    for name, m in modules(pipe.text_encoder, lambda n: "self_attn" in n or "fc1" in n):
        a, b = lora_pair(m, 2, gen, 1.2)
        sd[f"text_encoder.{name}.lora_A.weight"] = a
        sd[f"text_encoder.{name}.lora_B.weight"] = b
    return sd


def make_old_diffusers(pipe):
    gen = torch.Generator().manual_seed(1700)
    sd = {}
    for name, m in modules(pipe.unet, lambda n: n.endswith(("attn2.to_k", "attn2.to_out.0", "ff.net.2"))):
        a, b = lora_pair(m, 3, gen, 1.0)
        if "attn2" in name:
            block, proj = name.split(".attn2.")
            proj = {"to_k": "to_k_lora", "to_out.0": "to_out_lora"}[proj]
            key = f"unet.{block}.attn2.processor.{proj}"
        else:
            key = f"unet.{name}.lora"
        sd[key + ".down.weight"] = a
        sd[key + ".up.weight"] = b
    for name, m in modules(pipe.text_encoder, lambda n: n.endswith(("self_attn.k_proj", "self_attn.out_proj"))):
        a, b = lora_pair(m, 3, gen, 1.0)
        base, proj = name.rsplit(".", 1)
        proj = {"k_proj": "to_k_lora", "out_proj": "to_out_lora"}[proj]
        sd[f"text_encoder.{base}.{proj}.down.weight"] = a
        sd[f"text_encoder.{base}.{proj}.up.weight"] = b
    return sd


CASES = [
    # (case, [(file, scale)], pipeline case)
    ("kohya_pndm", [("kohya_unet_te.safetensors", 1.0)],
     dict(prompt="a photograph of an astronaut riding a horse", negative_prompt=None, seed=0, steps=6,
          guidance=7.5, width=None, height=None, scheduler="pndm", count=1)),
    ("peft_euler_a_0.6", [("peft_unet_te.safetensors", 0.6)],
     dict(prompt="portrait of a cat wearing a hat", negative_prompt="blurry", seed=3, steps=6,
          guidance=7.5, width=64, height=48, scheduler="euler-a", count=1)),
    ("two_loras_euler", [("kohya_unet_te.safetensors", 0.8), ("old_diffusers.safetensors", 0.5)],
     dict(prompt="a castle on a hill under a starry sky", negative_prompt=None, seed=42, steps=5,
          guidance=7.5, width=64, height=64, scheduler="euler", count=1)),
]


def count_lora_layers(model):
    return sum(1 for _, m in model.named_modules() if hasattr(m, "lora_A") and len(m.lora_A) > 0)


def file_modules(sd, component):
    names = set()
    for k in sd:
        if k.endswith((".alpha",)):
            continue
        is_unet = k.startswith(("lora_unet_", "unet."))
        if (component == "unet") == is_unet:
            names.add(k.rsplit(".", 2)[0].replace("_lora", "").replace(".lora", ""))
    return len(names)


def main():
    os.makedirs(LORA_DIR, exist_ok=True)
    base = ref.load_pipe(MODEL)
    files = {"kohya_unet_te.safetensors": make_kohya(base), "peft_unet_te.safetensors": make_peft(base),
             "old_diffusers.safetensors": make_old_diffusers(base)}
    for name, sd in files.items():
        save_file({k: v.contiguous() for k, v in sorted(sd.items())}, os.path.join(LORA_DIR, name),
                  metadata={"format": "pt"})
        print(f"  {name}: {len(sd)} tensors")
    del base
    if os.path.exists(REF_DIR):
        shutil.rmtree(REF_DIR)
    for case, loras, pcase in CASES:
        pipe = ref.load_pipe(MODEL)
        names = []
        for i, (file, _) in enumerate(loras):
            adapter = f"a{i}"
            pipe.load_lora_weights(LORA_DIR, weight_name=file, adapter_name=adapter)
            names.append(adapter)
        pipe.set_adapters(names, adapter_weights=[s for _, s in loras])
        # Every module of every file must be adapted (no silently dropped keys).
        for component in ("unet", "text_encoder"):
            want = sum(file_modules(files[f], component) for f, _ in loras)
            model = getattr(pipe, component)
            got = sum(sum(1 for _, m in model.named_modules()
                          if hasattr(m, "lora_A") and f"a{i}" in m.lora_A) for i in range(len(loras)))
            assert got == want, (case, component, got, want)
            print(f"  {case}: {component} adapted layers {got}")
        out = os.path.join(REF_DIR, case)
        os.makedirs(out)
        ref.ref_pipeline(pipe, out, cases=[dict(name=case, **pcase)], model="tiny-sd",
                         extra={"loras": [{"file": f, "scale": s} for f, s in loras]})
    ref.print_tree(LORA_DIR)
    ref.print_tree(REF_DIR)


if __name__ == "__main__":
    main()
