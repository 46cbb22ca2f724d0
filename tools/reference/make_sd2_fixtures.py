#!/usr/bin/env python3
"""Writes the SD 2.x, SD-Turbo and VAE-swap parity fixtures with diffusers (run by developers, never by CI).

    venv-ref/bin/python tools/reference/make_sd2_fixtures.py     # ~30 s on 2 cores

Needs Tests/Fixtures/tiny-sd (make_reference.py): the SD 2.x models use its VAE (SD 2.x's VAE is SD 1.x's),
and the VAE-swap cases run its UNet and text encoder. Writes, under Tests/Fixtures/:

  tiny-sd2-v/        768-style SD 2.x: DDIMScheduler with v_prediction, linear projections, upcast attention,
                     per-level heads (attention_head_dim [1, 1, 2, 2] = heads at widths [8, 8, 16, 16], head dim 8 everywhere, as SD 2's
                     [5, 10, 20, 20] is 64 everywhere), gelu text encoder, "!" padding; sample_size 12 (96 px)
  tiny-sd2-base/     512-style SD 2.x: PNDMScheduler, epsilon, no upcast; sample_size 8 (64 px)
  tiny-sd-turbo/     SD-Turbo-style: tiny-sd2-base's UNet with EulerDiscreteScheduler, trailing spacing
  tiny-vae-kl/       a second AutoencoderKL (other widths and weights, scaling_factor 0.13025)
  tiny-taesd/        an AutoencoderTiny (TAESD topology at width 8: decoder blocks (3, 3, 3, 1))
  reference/{sd2-v,sd2-base,sd-turbo,vae-kl,taesd}/   pipeline.json + one safetensors per case

The SD 2.x folders share one text encoder and tokenizer (tiny-sd2-v's) and tiny-sd's VAE through relative
symlinks, so each component is stored once. The tokenizer is CLIP's BPE cut to its first 1500 merges (vocab
2014: byte symbols, the merges, <|startoftext|>, <|endoftext|>), so the token table stays small; ids are what
transformers' CLIPTokenizer gives with these files. Case scheduler "own" means the model's own scheduler
(diffusers' default, and `sdd generate` without --scheduler). Deterministic: running it twice gives the same bytes.
"""
import json
import os
import shutil
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_reference as mr  # noqa: E402  (shared helpers: perturb, load checks, pipeline replay)

from diffusers import (  # noqa: E402
    AutoencoderKL,
    AutoencoderTiny,
    DDIMScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

FIXTURES = os.path.join(mr.ROOT, "Tests", "Fixtures")
REF = os.path.join(FIXTURES, "reference")
TINY_SD = os.path.join(FIXTURES, "tiny-sd")

mr.SCHEDULERS["own"] = None  # ref_pipeline: None = the pipeline's own scheduler

N_MERGES = 1500

# SD 2.x's configs (stabilityai/stable-diffusion-2-1 and -2-1-base), shrunk: widths, layers, vocab.
SD2_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                     steps_offset=1, trained_betas=None)
SD2_V_EXTRA = {"clip_sample": False, "skip_prk_steps": True}
TURBO_EXTRA = {"clip_sample": False, "interpolation_type": "linear", "sample_max_value": 1.0,
               "set_alpha_to_one": False, "skip_prk_steps": True, "use_karras_sigmas": False}


def sd2_unet(sample_size, upcast):
    return dict(
        sample_size=sample_size, in_channels=4, out_channels=4, block_out_channels=[8, 8, 16, 16],
        down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        layers_per_block=2, attention_head_dim=[1, 1, 2, 2], cross_attention_dim=32, norm_num_groups=4,
        norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0, downsample_padding=1, use_linear_projection=True,
        upcast_attention=upcast, act_fn="silu", dual_cross_attention=False)


def sd2_text(vocab_size):
    # SD 2.x: OpenCLIP ViT-H text tower as CLIPTextModel (gelu; 23 of its 24 layers), bos 0 / eos 2 / pad 1 ids
    # in the config as the real file has them (the tokenizer's own ids are what matter).
    return dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5,
                projection_dim=32, bos_token_id=0, eos_token_id=2, pad_token_id=1)


TINY_VAE_KL = dict(in_channels=3, out_channels=3, block_out_channels=[8, 8, 16, 16],
                   down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                   layers_per_block=2, latent_channels=4, norm_num_groups=4, sample_size=64, act_fn="silu",
                   scaling_factor=0.13025)
TINY_TAESD = dict(in_channels=3, out_channels=3, encoder_block_out_channels=(8, 8, 8, 8),
                  decoder_block_out_channels=(8, 8, 8, 8), act_fn="relu", upsample_fn="nearest", latent_channels=4,
                  upsampling_scaling_factor=2, num_encoder_blocks=(1, 3, 3, 3), num_decoder_blocks=(3, 3, 3, 1),
                  latent_magnitude=3, latent_shift=0.5, scaling_factor=1.0)

SD2_V_CASES = [
    dict(name="sd2v_own_default", prompt="a photograph of an astronaut riding a horse", negative_prompt=None,
         seed=0, steps=6, guidance=7.5, width=None, height=None, scheduler="own", count=1),
    dict(name="sd2v_own_negative_64x80", prompt="a red bicycle leaning against a brick wall!",
         negative_prompt="blurry", seed=42, steps=5, guidance=5.0, width=64, height=80, scheduler="own", count=1),
    dict(name="sd2v_euler_count2", prompt="a castle on a hill", negative_prompt=None, seed=7, steps=5,
         guidance=7.5, width=64, height=64, scheduler="euler", count=2),
]
SD2_BASE_CASES = [
    dict(name="sd2base_own_default", prompt="a bowl of fruit on a wooden table", negative_prompt=None,
         seed=1234, steps=6, guidance=7.5, width=None, height=None, scheduler="own", count=1),
    dict(name="sd2base_dpmpp2m_96x64", prompt="a futuristic city skyline at night", negative_prompt="ugly",
         seed=3, steps=8, guidance=6.0, width=96, height=64, scheduler="dpm++2m", count=1),
]
TURBO_CASES = [
    dict(name="turbo_own_1step", prompt="a cinematic photo of a fox in the snow", negative_prompt=None,
         seed=0, steps=1, guidance=0.0, width=None, height=None, scheduler="own", count=1),
    dict(name="turbo_own_4steps_count2", prompt="a lighthouse at dusk", negative_prompt=None, seed=11, steps=4,
         guidance=0.0, width=64, height=64, scheduler="own", count=2),
]
VAE_KL_CASES = [
    dict(name="vae_kl_pndm", prompt="a watercolor landscape with mountains", negative_prompt=None, seed=5,
         steps=4, guidance=7.5, width=None, height=None, scheduler="own", count=1),
]
TAESD_CASES = [
    dict(name="taesd_pndm_96x64", prompt="portrait of a cat wearing a hat", negative_prompt=None, seed=9,
         steps=4, guidance=7.5, width=96, height=64, scheduler="own", count=1),
]


def write_small_tokenizer(out, pad):
    """CLIP's BPE (tiny-sd/tokenizer, built by clip_bpe.py) cut to its first N_MERGES merges."""
    os.makedirs(out, exist_ok=True)
    src = os.path.join(TINY_SD, "tokenizer")
    full = json.load(open(os.path.join(src, "vocab.json"), encoding="utf-8"))
    by_id = sorted(full, key=full.get)
    lines = open(os.path.join(src, "merges.txt"), encoding="utf-8").read().split("\n")
    merges = lines[1:1 + N_MERGES]
    vocab = by_id[:512] + ["".join(m.split()) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    assert len(set(vocab)) == len(vocab) and vocab[0] == "!"
    with open(os.path.join(out, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({v: i for i, v in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(out, "merges.txt"), "w", encoding="utf-8") as f:
        f.write(lines[0] + "\n" + "".join(m + "\n" for m in merges))
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": pad,
               "unk_token": "<|endoftext|>"}
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
                   "errors": "replace", "add_prefix_space": False, **special}, f, indent=2)
    with open(os.path.join(out, "special_tokens_map.json"), "w") as f:
        json.dump(special, f, indent=2)
    tok = CLIPTokenizer.from_pretrained(out, model_max_length=77)
    ids = tok("a photograph!", padding="max_length", max_length=77).input_ids
    assert ids[0] == len(vocab) - 2 and tok.pad_token_id == 0 and ids[-1] == 0, ids[:12]
    return tok, len(vocab)


def write_scheduler(folder, sched, extra):
    sched.save_pretrained(folder)
    p = os.path.join(folder, "scheduler_config.json")
    cfg = json.load(open(p))
    cfg.update(extra)
    with open(p, "w") as f:
        json.dump(dict(sorted(cfg.items())), f, indent=2)
        f.write("\n")


def link(target, name):
    """A relative symlink `name` → `target` (both absolute paths here)."""
    mr.remove(name)
    os.symlink(os.path.relpath(target, os.path.dirname(name)), name)


def reset(folder, parts):
    os.makedirs(folder, exist_ok=True)
    for p in parts:
        path = os.path.join(folder, p)
        if os.path.islink(path):
            os.remove(path)
        else:
            mr.remove(path)


def save_pipeline(out, unet, text_encoder, tokenizer, scheduler, vae):
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(out, safe_serialization=True)


def build_text_encoder(vocab_size, seed):
    torch.manual_seed(seed)
    te = CLIPTextModel(CLIPTextConfig(**sd2_text(vocab_size)))
    mr.perturb(te, torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        te.get_input_embeddings().weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(seed + 2))
        pos = [m for n, m in te.named_modules() if n.endswith("position_embedding")][0].weight
        pos.normal_(0, 0.25, generator=torch.Generator().manual_seed(seed + 3))
    return te.eval()


PARTS = ("unet", "vae", "text_encoder", "scheduler", "tokenizer", "model_index.json")


def build_models():
    tiny_vae = AutoencoderKL.from_pretrained(os.path.join(TINY_SD, "vae"), torch_dtype=torch.float16)

    # tiny-sd2-v: every component stored here (the VAE is tiny-sd's, linked).
    v = os.path.join(FIXTURES, "tiny-sd2-v")
    reset(v, PARTS)
    tokenizer, vocab = write_small_tokenizer(os.path.join(v, "tokenizer"), pad="!")
    te = build_text_encoder(vocab, 600)
    unet_v = mr.build_tiny_unet(sd2_unet(12, True), 500)
    sched_v = DDIMScheduler(**SD2_SCHEDULER, clip_sample=False, set_alpha_to_one=False,
                            prediction_type="v_prediction")
    save_pipeline(v, unet_v.to(torch.float16), te.to(torch.float16), tokenizer, sched_v, tiny_vae)
    print(f"tiny-sd2-v params: unet {mr.n_params(unet_v)}, text_encoder {mr.n_params(te)}, vocab {vocab}")

    # tiny-sd2-base: own UNet and scheduler; text encoder, tokenizer, VAE linked.
    base = os.path.join(FIXTURES, "tiny-sd2-base")
    reset(base, PARTS)
    unet_b = mr.build_tiny_unet(sd2_unet(8, False), 510)
    save_pipeline(base, unet_b.to(torch.float16), te.to(torch.float16), tokenizer,
                  PNDMScheduler(**SD2_SCHEDULER, skip_prk_steps=True, set_alpha_to_one=False,
                                prediction_type="epsilon"), tiny_vae)
    print(f"tiny-sd2-base params: unet {mr.n_params(unet_b)}")

    # tiny-sd-turbo: tiny-sd2-base's UNet with SD-Turbo's scheduler.
    turbo = os.path.join(FIXTURES, "tiny-sd-turbo")
    reset(turbo, PARTS)
    save_pipeline(turbo, unet_b.to(torch.float16), te.to(torch.float16), tokenizer,
                  EulerDiscreteScheduler(**SD2_SCHEDULER, prediction_type="epsilon", timestep_spacing="trailing"),
                  tiny_vae)

    for folder in (v, base, turbo):  # real tokenizer files, real text-encoder names; shared parts linked
        shutil.rmtree(os.path.join(folder, "vae"))
        link(os.path.join(TINY_SD, "vae"), os.path.join(folder, "vae"))
        if folder != v:
            for part in ("tokenizer", "text_encoder"):
                shutil.rmtree(os.path.join(folder, part))
                link(os.path.join(v, part), os.path.join(folder, part))
    shutil.rmtree(os.path.join(v, "tokenizer"))
    write_small_tokenizer(os.path.join(v, "tokenizer"), pad="!")
    mr.prefix_text_encoder_keys(os.path.join(v, "text_encoder", "model.safetensors"))
    write_scheduler(os.path.join(v, "scheduler"), sched_v, SD2_V_EXTRA)
    shutil.rmtree(os.path.join(turbo, "unet"))
    link(os.path.join(base, "unet"), os.path.join(turbo, "unet"))
    write_scheduler(os.path.join(turbo, "scheduler"),
                    EulerDiscreteScheduler(**SD2_SCHEDULER, prediction_type="epsilon", timestep_spacing="trailing"),
                    TURBO_EXTRA)

    # The second AutoencoderKL and the TAESD, each a diffusers model folder (config.json + F16 weights).
    kl_dir = os.path.join(FIXTURES, "tiny-vae-kl")
    reset(kl_dir, ("config.json", "diffusion_pytorch_model.safetensors"))
    torch.manual_seed(700)
    kl = AutoencoderKL(**TINY_VAE_KL)
    mr.perturb(kl, torch.Generator().manual_seed(701))
    kl.eval().to(torch.float16).save_pretrained(kl_dir, safe_serialization=True)
    print(f"tiny-vae-kl params: {mr.n_params(kl)} (decoder {mr.n_params(kl.decoder)})")

    taesd_dir = os.path.join(FIXTURES, "tiny-taesd")
    reset(taesd_dir, ("config.json", "diffusion_pytorch_model.safetensors"))
    torch.manual_seed(800)
    taesd = AutoencoderTiny(**TINY_TAESD)
    with torch.no_grad():  # a trained TAESD decoder maps latents to [0, 1]; keep the random one in range too
        last = taesd.decoder.layers[-1]
        last.weight.mul_(4.0)
        last.bias.fill_(0.5)
    taesd.eval().to(torch.float16).save_pretrained(taesd_dir, safe_serialization=True)
    print(f"tiny-taesd params: {mr.n_params(taesd)} (decoder {mr.n_params(taesd.decoder)})")
    return v, base, turbo, kl_dir, taesd_dir


def load(path, vae=None):
    extra = {} if vae is None else {"vae": vae}
    pipe = StableDiffusionPipeline.from_pretrained(path, torch_dtype=torch.float32, **extra)
    pipe.set_progress_bar_config(disable=True)
    mr.check_loaded(pipe.unet, os.path.join(path, "unet", "diffusion_pytorch_model.safetensors"))
    mr.check_loaded(pipe.text_encoder, os.path.join(path, "text_encoder", "model.safetensors"),
                    strip="text_model.")
    assert pipe.tokenizer.model_max_length == 77
    return pipe


def replay(pipe, name, cases, model):
    ref = os.path.join(REF, name)
    os.makedirs(ref, exist_ok=True)
    for f in os.listdir(ref):
        mr.remove(os.path.join(ref, f))
    print(f"{name}: {type(pipe.scheduler).__name__} {dict(pipe.scheduler.config).get('prediction_type')}")
    mr.ref_pipeline(pipe, ref, cases=cases, model=model)


def main():
    print(f"torch {torch.__version__}, diffusers {mr.diffusers.__version__}, "
          f"transformers {mr.transformers.__version__}")
    v, base, turbo, kl_dir, taesd_dir = build_models()
    pipe = load(v)
    assert pipe.tokenizer.pad_token == "!" and type(pipe.scheduler).__name__ == "DDIMScheduler"
    replay(pipe, "sd2-v", SD2_V_CASES, "tiny-sd2-v")
    replay(load(base), "sd2-base", SD2_BASE_CASES, "tiny-sd2-base")
    pipe = load(turbo)
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    replay(pipe, "sd-turbo", TURBO_CASES, "tiny-sd-turbo")
    kl = AutoencoderKL.from_pretrained(kl_dir, torch_dtype=torch.float32)
    mr.check_loaded(kl, os.path.join(kl_dir, "diffusion_pytorch_model.safetensors"))
    replay(load(TINY_SD, vae=kl), "vae-kl", VAE_KL_CASES, "tiny-sd + tiny-vae-kl")
    taesd = AutoencoderTiny.from_pretrained(taesd_dir, torch_dtype=torch.float32)
    mr.check_loaded(taesd, os.path.join(taesd_dir, "diffusion_pytorch_model.safetensors"))
    pipe = load(TINY_SD, vae=taesd)
    assert pipe.vae_scale_factor == 8
    replay(pipe, "taesd", TAESD_CASES, "tiny-sd + tiny-taesd")

    print("\nwrote:")
    total = 0
    for d in (v, base, turbo, kl_dir, taesd_dir) + tuple(
            os.path.join(REF, n) for n in ("sd2-v", "sd2-base", "sd-turbo", "vae-kl", "taesd")):
        for dirpath, dirs, files in sorted(os.walk(d)):
            for f in sorted(files + [x for x in dirs if os.path.islink(os.path.join(dirpath, x))]):
                p = os.path.join(dirpath, f)
                if os.path.islink(p):
                    print(f"  {os.path.relpath(p, mr.ROOT):70s} -> {os.readlink(p)}")
                    continue
                total += os.path.getsize(p)
                print(f"  {os.path.relpath(p, mr.ROOT):70s} {mr.human(os.path.getsize(p)):>10s}")
    print(f"  {'TOTAL written by this script':70s} {mr.human(total):>10s}")


if __name__ == "__main__":
    main()
