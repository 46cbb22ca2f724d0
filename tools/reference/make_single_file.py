#!/usr/bin/env python3
"""Single-file (CompVis/LDM-named) checkpoint fixtures, checked with diffusers' own from_single_file.

Writes (under Tests/Fixtures/reference/single-file-sd1/):
  names.json            every tensor of tiny-sd's CompVis single file: name -> [dtype, shape]. The
                        Swift tests write that file from Tests/Fixtures/tiny-sd (7 MB, not committed)
                        and check it against this list before use.
  pipeline.json + pipeline_*.safetensors
                        reference generations of StableDiffusionPipeline.from_single_file(FILE,
                        config=tiny-sd) (make_reference.ref_pipeline's format).
Tests/Fixtures/single-file/tiny-sd2-parts.safetensors + tiny-sd2-config/: a tiny SD 2.x model (linear
projections, upcast attention, a gelu text encoder of 23 layers under OpenCLIP names with fused in_proj and a
24th resblock diffusers leaves out, DDIM v-prediction) as a CompVis single file, less the token embedding and
VAE it shares with tiny-sd (the tests add those back from Tests/Fixtures/tiny-sd); its reference generations
from from_single_file(config=tiny-sd2-config) under reference/single-file-sd2/;
and Tests/Fixtures/single-file/{sd15,sd21}-layout.json: the CompVis tensor names and shapes of the real
SD 1.5 and SD 2.1 architectures (built on the meta device), with the diffusers names and shapes that
diffusers' own convert_ldm_unet_checkpoint / convert_ldm_vae_checkpoint / convert_ldm_clip_checkpoint /
convert_open_clip_checkpoint make of them, and the real configs.

Usage: venv-ref/bin/python tools/reference/make_single_file.py [--keep FILE]   (~30 s on 2 cores)
"""
import argparse
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_reference as mr  # noqa: E402  (sets threads, logging, imports diffusers)

from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel  # noqa: E402
from diffusers.loaders import single_file_utils as sfu  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
          "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}


def compvis_unet(name, cfg):
    """diffusers UNet name -> CompVis name (without model.diffusion_model.)."""
    per = cfg["layers_per_block"] + 1
    direct = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
              "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2."}
    for new, old in direct.items():
        if name.startswith(new):
            return old + name[len(new):]
    c = name.split(".")
    if c[0] in ("down_blocks", "up_blocks"):
        b = int(c[1])
        down = c[0] == "down_blocks"
        if c[2] in ("downsamplers", "upsamplers"):
            tail = ".".join(c[5:])
            if down:
                return f"input_blocks.{1 + b * per + per - 1}.0.op.{tail}"
            has_attn = cfg["up_block_types"][b].startswith("CrossAttn")
            return f"output_blocks.{b * per + per - 1}.{2 if has_attn else 1}.conv.{tail}"
        l = int(c[3])
        block = f"input_blocks.{1 + b * per + l}" if down else f"output_blocks.{b * per + l}"
        if c[2] == "resnets":
            return f"{block}.0.{RESNET[c[4]]}." + ".".join(c[5:])
        return f"{block}.1." + ".".join(c[4:])
    if c[0] == "mid_block":
        k = int(c[2])
        if c[1] == "resnets":
            return f"middle_block.{2 * k}.{RESNET[c[3]]}." + ".".join(c[4:])
        return "middle_block.1." + ".".join(c[3:])
    raise KeyError(name)


def compvis_vae(name, levels):
    """diffusers AutoencoderKL name -> (CompVis name without first_stage_model., is 1x1-conv attention)."""
    if name.startswith(("quant_conv.", "post_quant_conv.")):
        return name, False
    side, rest = name.split(".", 1)
    for new, old in (("conv_in.", "conv_in."), ("conv_out.", "conv_out."), ("conv_norm_out.", "norm_out.")):
        if rest.startswith(new):
            return f"{side}.{old}{rest[len(new):]}", False
    c = rest.split(".")
    fix = lambda parts: ".".join("nin_shortcut" if p == "conv_shortcut" else p for p in parts)  # noqa: E731
    if c[0] == "mid_block":
        k = int(c[2])
        if c[1] == "resnets":
            return f"{side}.mid.block_{k + 1}.{fix(c[3:])}", False
        parts = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}
        tail = c[5:] if c[3] == "to_out" else c[4:]
        p = parts[c[3]]
        return f"{side}.mid.attn_1.{p}." + ".".join(tail), p != "norm" and tail[-1] == "weight"
    b = int(c[1])
    if side == "encoder":
        if c[2] == "resnets":
            return f"encoder.down.{b}.block.{c[3]}.{fix(c[4:])}", False
        return f"encoder.down.{b}.downsample.conv." + ".".join(c[5:]), False
    k = levels - 1 - b
    if c[2] == "resnets":
        return f"decoder.up.{k}.block.{c[3]}.{fix(c[4:])}", False
    return f"decoder.up.{k}.upsample.conv." + ".".join(c[5:]), False


def compvis_state_dict(unet, vae, text, unet_cfg, vae_levels):
    out = {}
    for k, v in unet.items():
        out["model.diffusion_model." + compvis_unet(k, unet_cfg)] = v
    for k, v in vae.items():
        name, conv = compvis_vae(k, vae_levels)
        out["first_stage_model." + name] = v.reshape(*v.shape, 1, 1) if conv else v
    for k, v in text.items():
        out["cond_stage_model.transformer." + (k if k.startswith("text_model.") else "text_model." + k)] = v
    return out


def write_tiny_single_file(path):
    tiny = os.path.join(mr.ROOT, "Tests", "Fixtures", "tiny-sd")

    def load(rel):
        with safe_open(os.path.join(tiny, rel), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    unet_cfg = json.load(open(os.path.join(tiny, "unet", "config.json")))
    vae_cfg = json.load(open(os.path.join(tiny, "vae", "config.json")))
    sd = compvis_state_dict(load("unet/diffusion_pytorch_model.safetensors"),
                            load("vae/diffusion_pytorch_model.safetensors"),
                            load("text_encoder/model.safetensors"), unet_cfg, len(vae_cfg["up_block_types"]))
    # What released files carry besides the weights: CLIP's integer position_ids and EMA bookkeeping
    # (both must be ignored by name).
    sd["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77, dtype=torch.int64)[None]
    sd["model_ema.decay"] = torch.tensor(0.9999)
    sd["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
    sd = dict(sorted(sd.items()))
    save_file(sd, path, metadata={"format": "pt"})
    return sd, tiny


def check_single_file(path, tiny):
    """from_single_file(config=tiny-sd) loads exactly the folder's weights."""
    single = StableDiffusionPipeline.from_single_file(path, config=tiny, torch_dtype=torch.float32,
                                                      local_files_only=True, safety_checker=None)
    folder = mr.load_pipe(tiny)
    for comp in ("unet", "vae", "text_encoder"):
        a = getattr(single, comp).state_dict()
        b = getattr(folder, comp).state_dict()
        assert a.keys() == b.keys(), (comp, sorted(set(a) ^ set(b))[:5])
        for k in a:
            assert torch.equal(a[k], b[k]), (comp, k)
        print(f"  from_single_file {comp}: {len(a)} tensors equal to the folder's")
    single.set_progress_bar_config(disable=True)
    return single


def meta_layout(unet_cfg, vae_cfg, text_cfg, openclip):
    """CompVis names/shapes of a full-size architecture and what diffusers' converters make of them."""
    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_cfg)
        vae = AutoencoderKL(**vae_cfg)
        text = CLIPTextModel(CLIPTextConfig(**text_cfg))
    # transformers 5 names CLIPTextModel's tensors without "text_model."; released files (and diffusers'
    # conversion) have it.
    tsd = {("" if k.startswith("text_model.") else "text_model.") + k: v for k, v in text.state_dict().items()
           if not k.endswith("position_ids")}
    if openclip:
        # OpenCLIP ViT-H text tower: 24 resblocks (diffusers keeps 23), fused in_proj, text_projection.
        h, n = text_cfg["hidden_size"], text_cfg["num_hidden_layers"] + 1
        cv = {"cond_stage_model.model.positional_embedding": torch.empty(77, h, device="meta"),
              "cond_stage_model.model.token_embedding.weight": torch.empty(49408, h, device="meta"),
              "cond_stage_model.model.ln_final.weight": torch.empty(h, device="meta"),
              "cond_stage_model.model.ln_final.bias": torch.empty(h, device="meta"),
              "cond_stage_model.model.text_projection": torch.empty(h, h, device="meta"),
              "cond_stage_model.model.logit_scale": torch.empty((), device="meta")}
        for i in range(n):
            p = f"cond_stage_model.model.transformer.resblocks.{i}."
            for k, s in (("ln_1.weight", [h]), ("ln_1.bias", [h]), ("ln_2.weight", [h]), ("ln_2.bias", [h]),
                         ("attn.in_proj_weight", [3 * h, h]), ("attn.in_proj_bias", [3 * h]),
                         ("attn.out_proj.weight", [h, h]), ("attn.out_proj.bias", [h]),
                         ("mlp.c_fc.weight", [4 * h, h]), ("mlp.c_fc.bias", [4 * h]),
                         ("mlp.c_proj.weight", [h, 4 * h]), ("mlp.c_proj.bias", [h])):
                cv[p + k] = torch.empty(*s, device="meta")
        cv.update(compvis_state_dict(unet.state_dict(), vae.state_dict(), {}, unet_cfg,
                                     len(vae_cfg["up_block_types"])))
        te = sfu.convert_open_clip_checkpoint(text, cv)
    else:
        cv = compvis_state_dict(unet.state_dict(), vae.state_dict(), tsd, unet_cfg, len(vae_cfg["up_block_types"]))
        te = sfu.convert_ldm_clip_checkpoint(cv)
        te = {k: v for k, v in te.items() if not k.endswith("position_ids")}
    un = sfu.convert_ldm_unet_checkpoint(cv, unet_cfg)
    va = sfu.convert_ldm_vae_checkpoint(cv, vae_cfg)
    for mine, theirs, what in ((unet.state_dict(), un, "unet"), (vae.state_dict(), va, "vae"),
                               (tsd, te, "text_encoder")):
        mine = {k: v for k, v in mine.items() if not k.endswith("position_ids")}
        assert mine.keys() == theirs.keys(), (what, sorted(set(mine) ^ set(theirs))[:6])
        for k in mine:
            assert tuple(mine[k].shape) == tuple(theirs[k].shape), (what, k)
    shapes = lambda d: {k: list(v.shape) for k, v in sorted(d.items())}  # noqa: E731
    return {"compvis": shapes(cv), "diffusers": {"unet": shapes(un), "vae": shapes(va), "text_encoder": shapes(te)}}


SD21_UNET = dict(mr.SD15_UNET, sample_size=96, cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20],
                 use_linear_projection=True, upcast_attention=True)
SD21_VAE = dict(mr.SD15_VAE, sample_size=768)
SD21_TEXT = dict(mr.SD15_TEXT, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                 num_attention_heads=16, hidden_act="gelu", projection_dim=512, pad_token_id=1)


TINY_SD2_UNET = dict(mr.TINY_UNET_LINEAR, attention_head_dim=[2, 4], upcast_attention=True)
TINY_SD2_TEXT = dict(mr.TINY_TEXT, num_hidden_layers=23, hidden_act="gelu", pad_token_id=0)
SD21_SCHEDULER = dict(mr.SD15_SCHEDULER, prediction_type="v_prediction", clip_sample=False)


def f16_round_(module):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.half().float())


def make_tiny_sd2(fixtures):
    """A tiny SD 2.x model as a CompVis single file (OpenCLIP text tower); see the module docstring."""
    from diffusers import DDIMScheduler
    from transformers import CLIPTokenizer
    tiny = os.path.join(mr.ROOT, "Tests", "Fixtures", "tiny-sd")
    unet = mr.build_tiny_unet(TINY_SD2_UNET, 2024)
    torch.manual_seed(2025)
    text = CLIPTextModel(CLIPTextConfig(**TINY_SD2_TEXT)).eval()
    gen = torch.Generator().manual_seed(2026)
    mr.perturb(text, gen)
    with safe_open(os.path.join(tiny, "text_encoder", "model.safetensors"), "pt") as f:
        tok = f.get_tensor("text_model.embeddings.token_embedding.weight")  # shared with tiny-sd (BF16)
    f16_round_(unet)
    f16_round_(text)
    with torch.no_grad():
        text.get_input_embeddings().weight.copy_(tok.float())
    vae = AutoencoderKL.from_pretrained(os.path.join(tiny, "vae"), torch_dtype=torch.float32)
    folder = "/tmp/sdd-tiny-sd2-folder"
    tokenizer = CLIPTokenizer.from_pretrained(os.path.join(tiny, "tokenizer"), pad_token="!")
    sched = DDIMScheduler.from_config(SD21_SCHEDULER)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)

    # CompVis names: UNet and VAE as for SD 1.x; the text tower as OpenCLIP's.
    tsd = {k.removeprefix("text_model."): v for k, v in text.state_dict().items() if not k.endswith("position_ids")}
    h = TINY_SD2_TEXT["hidden_size"]
    n = TINY_SD2_TEXT["num_hidden_layers"]
    oc = {"positional_embedding": tsd["embeddings.position_embedding.weight"],
          "token_embedding.weight": tok,
          "ln_final.weight": tsd["final_layer_norm.weight"], "ln_final.bias": tsd["final_layer_norm.bias"],
          "text_projection": torch.randn(h, h, generator=gen).half().float(),
          "logit_scale": torch.tensor(4.6052)}
    for i in range(n + 1):  # resblock n is OpenCLIP's last layer: SD 2.x conditions on the one before it
        src = i if i < n else n - 1
        L = f"encoder.layers.{src}."
        p = f"transformer.resblocks.{i}."
        extra = (lambda t: (t * 0.5).half().float()) if i == n else (lambda t: t)  # noqa: E731
        oc[p + "attn.in_proj_weight"] = extra(torch.cat([tsd[L + f"self_attn.{x}_proj.weight"] for x in "qkv"]))
        oc[p + "attn.in_proj_bias"] = extra(torch.cat([tsd[L + f"self_attn.{x}_proj.bias"] for x in "qkv"]))
        for new, old in (("attn.out_proj.", "self_attn.out_proj."), ("ln_1.", "layer_norm1."), ("ln_2.", "layer_norm2."),
                         ("mlp.c_fc.", "mlp.fc1."), ("mlp.c_proj.", "mlp.fc2.")):
            for kind in ("weight", "bias"):
                oc[p + new + kind] = extra(tsd[L + old + kind])
    sd = {"cond_stage_model.model." + k: v for k, v in oc.items()}
    sd.update(compvis_state_dict({k: v.half() for k, v in unet.state_dict().items()}, vae.state_dict(), {},
                                 TINY_SD2_UNET, 4))
    sd = {k: (v.half() if v.dtype == torch.float32 and not k.startswith("first_stage_model.") and "token_embedding" not in k
              else v).contiguous() for k, v in sorted(sd.items())}
    single = "/tmp/sdd-tiny-sd2.safetensors"
    save_file(sd, single, metadata={"format": "pt"})

    loaded = StableDiffusionPipeline.from_single_file(single, config=folder, torch_dtype=torch.float32,
                                                      local_files_only=True, safety_checker=None)
    for comp, mine in (("unet", unet), ("vae", vae), ("text_encoder", text)):
        a, b = getattr(loaded, comp).state_dict(), mine.state_dict()
        assert a.keys() == b.keys(), (comp, sorted(set(a) ^ set(b))[:5])
        for k in a:
            assert torch.equal(a[k], b[k]), (comp, k)
        print(f"  tiny SD 2.x from_single_file {comp}: {len(a)} tensors equal")
    assert loaded.scheduler.config.prediction_type == "v_prediction"
    loaded.set_progress_bar_config(disable=True)
    ref = os.path.join(fixtures, "reference", "single-file-sd2")
    os.makedirs(ref, exist_ok=True)
    cases = [dict(c, name="ddim_48x80_v") for c in mr.PIPELINE_CASES if c["name"] == "ddim_48x80"]
    mr.ref_pipeline(loaded, ref, cases=cases, model="tiny SD 2.x as a CompVis single file (from_single_file, "
                    "config=single-file/tiny-sd2-config)")

    out = os.path.join(fixtures, "single-file")
    parts = {k: v for k, v in sd.items() if not k.startswith("first_stage_model.") and "token_embedding" not in k}
    save_file(parts, os.path.join(out, "tiny-sd2-parts.safetensors"), metadata={"format": "pt"})
    cfg = os.path.join(out, "tiny-sd2-config")
    for sub, src in (("unet", "unet/config.json"), ("vae", "vae/config.json"), ("text_encoder", "text_encoder/config.json"),
                     ("scheduler", "scheduler/scheduler_config.json")):
        os.makedirs(os.path.join(cfg, sub), exist_ok=True)
        with open(os.path.join(folder, src)) as f, open(os.path.join(cfg, src), "w") as g:
            g.write(f.read())
    with open(os.path.join(cfg, "model_index.json"), "w") as g, open(os.path.join(folder, "model_index.json")) as f:
        g.write(f.read())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", default="/tmp/sdd-tiny-sd1.safetensors", help="where the tiny single file goes")
    ap.add_argument("--only-sd2", action="store_true", help="only the tiny SD 2.x fixtures")
    args = ap.parse_args()
    fixtures = os.path.join(mr.ROOT, "Tests", "Fixtures")
    make_tiny_sd2(fixtures)
    if args.only_sd2:
        return

    sd, tiny = write_tiny_single_file(args.keep)
    ref = os.path.join(fixtures, "reference", "single-file-sd1")
    os.makedirs(ref, exist_ok=True)
    with open(os.path.join(ref, "names.json"), "w") as f:
        json.dump({k: [str(v.dtype).replace("torch.", ""), list(v.shape)] for k, v in sd.items()}, f, indent=0)
    pipe = check_single_file(args.keep, tiny)
    cases = [c for c in mr.PIPELINE_CASES if c["name"] in ("pndm_default", "ddim_48x80")]
    mr.ref_pipeline(pipe, ref, cases=cases, model="tiny-sd as a CompVis single file (from_single_file, config=tiny-sd)")

    out = os.path.join(fixtures, "single-file")
    os.makedirs(out, exist_ok=True)
    for name, u, v, t, oc in (("sd15", mr.SD15_UNET, mr.SD15_VAE, mr.SD15_TEXT, False),
                              ("sd21", SD21_UNET, SD21_VAE, SD21_TEXT, True)):
        layout = meta_layout(u, v, t, oc)
        layout["configs"] = {"unet": u, "vae": v, "text_encoder": t}
        with open(os.path.join(out, f"{name}-layout.json"), "w") as f:
            json.dump(layout, f, indent=0, sort_keys=True)
        print(f"  {name}-layout.json: {len(layout['compvis'])} CompVis tensors")
    mr.print_tree(ref)
    mr.print_tree(out)


if __name__ == "__main__":
    main()
