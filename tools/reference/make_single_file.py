#!/usr/bin/env python3
"""Single-file (CompVis/LDM-named) checkpoint fixtures, checked with diffusers' own from_single_file.

Writes (under Tests/Fixtures/reference/single-file-sd1/):
  names.json            every tensor of tiny-sd's CompVis single file: name -> [dtype, shape]. The
                        Swift tests write that file from Tests/Fixtures/tiny-sd (7 MB, not committed)
                        and check it against this list before use.
  pipeline.json + pipeline_*.safetensors
                        reference generations of StableDiffusionPipeline.from_single_file(FILE,
                        config=tiny-sd) (make_reference.ref_pipeline's format).
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", default="/tmp/sdd-tiny-sd1.safetensors", help="where the tiny single file goes")
    args = ap.parse_args()
    fixtures = os.path.join(mr.ROOT, "Tests", "Fixtures")

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
