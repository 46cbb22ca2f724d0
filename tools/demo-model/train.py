#!/usr/bin/env python3
"""Trains the sdd demo model: a small Stable Diffusion 1.x (AutoencoderKL + CLIPTextModel +
UNet2DConditionModel, PNDM scheduler config of SD 1.5, the real CLIP tokenizer files) on the
procedural shapes of dataset.py, and exports it as a diffusers folder.

Stages (each deterministic for --seed; intermediate files go to --work):
    vae     train the autoencoder (MSE + small KL) on rendered images
    latents encode the training images (posterior mean and std), compute scaling_factor
    unet    train text encoder + UNet jointly on the cached latents (DDPM epsilon loss,
            SD 1.5 scaled_linear betas, caption dropped to "" 10% of the time for CFG);
            writes an EMA checkpoint (a full diffusers folder) every --ckpt-every steps
    export  copy a checkpoint folder to --out (default models/demo)

    nice -n 19 python tools/demo-model/train.py --stage all
"""
import argparse
import json
import math
import os
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import dataset  # noqa: E402

from diffusers import AutoencoderKL, UNet2DConditionModel, DDPMScheduler  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402
from safetensors.torch import save_file, load_file  # noqa: E402

TOKENIZER_SRC = os.path.join(ROOT, "Tests", "Fixtures", "tiny-sd", "tokenizer")
SCHEDULER_SRC = os.path.join(ROOT, "Tests", "Fixtures", "tiny-sd", "scheduler")

VAE_CFG = dict(
    in_channels=3, out_channels=3, latent_channels=4,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[8, 16, 32, 64], layers_per_block=1, norm_num_groups=2,
    act_fn="silu", sample_size=64,
)
TEXT_CFG = dict(
    vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
    num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
    layer_norm_eps=1e-5, projection_dim=64, bos_token_id=49406, eos_token_id=49407,
    pad_token_id=49407,
)
UNET_CFG = dict(
    sample_size=8, in_channels=4, out_channels=4,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    block_out_channels=[48, 64, 96], layers_per_block=1, attention_head_dim=4,
    cross_attention_dim=64, norm_num_groups=8, norm_eps=1e-5, flip_sin_to_cos=True,
    freq_shift=0, downsample_padding=1, use_linear_projection=False, act_fn="silu",
)
SD15_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                  beta_schedule="scaled_linear", prediction_type="epsilon")


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def to_tensor(imgs):  # uint8 NHWC -> float NCHW in [-1, 1]
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div(127.5).sub(1)


# ---------------------------------------------------------------------------------------------

def train_vae(a):
    torch.manual_seed(a.seed)
    imgs, _ = dataset.make(a.seed, a.vae_images)
    log(f"vae: {len(imgs)} images")
    vae = AutoencoderKL(**VAE_CFG)
    with torch.no_grad():  # start with a narrow posterior (std ~0.05): learns fast, no collapse
        vae.quant_conv.bias[VAE_CFG["latent_channels"]:] = -6.0
    log(f"vae params {n_params(vae)} (decoder {n_params(vae.decoder)})")
    opt = torch.optim.Adam(vae.parameters(), lr=a.vae_lr)
    g = torch.Generator().manual_seed(a.seed + 1)
    t0 = time.time()
    run = 0.0
    for step in range(1, a.vae_steps + 1):
        lr = a.vae_lr * min(1.0, step / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / a.vae_steps)))
        for pg in opt.param_groups:
            pg["lr"] = lr
        idx = torch.randint(0, len(imgs), (a.vae_batch,), generator=g)
        x = to_tensor(imgs[idx.numpy()])
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        rec = vae.decode(z).sample
        mse = F.mse_loss(rec, x)
        kl = post.kl().mean() / post.mean[0].numel()
        loss = mse + a.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        run = 0.98 * run + 0.02 * mse.item() if step > 1 else mse.item()
        if step % 50 == 0 or step == 1:
            el = time.time() - t0
            log(f"vae step {step}/{a.vae_steps} mse {mse.item():.5f} (avg {run:.5f}) kl/elem {kl.item():.3f} "
                f"lr {lr:.2e} {step * a.vae_batch / el:.1f} img/s")
        if step % 100 == 0 or step == a.vae_steps:
            vae.save_pretrained(os.path.join(a.work, "vae"))
    log(f"vae done in {time.time() - t0:.0f}s, final mse avg {run:.5f}")


def train_decoder(a):
    """Fine-tunes post_quant_conv + decoder on the frozen encoder's latents (the latent space the
    UNet learns stays the same, as with SD's ft-MSE decoders). Runs beside the unet stage."""
    torch.manual_seed(a.seed + 5)
    imgs, _ = dataset.make(a.seed + 2000, a.vae_images, workers=a.workers)
    vae = AutoencoderKL.from_pretrained(a.dec_init or os.path.join(a.work, "vae"), torch_dtype=torch.float32)
    vae.encoder.requires_grad_(False)
    vae.quant_conv.requires_grad_(False)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    opt = torch.optim.Adam(params, lr=a.dec_lr)
    g = torch.Generator().manual_seed(a.seed + 6)
    t0 = time.time()
    run = None
    for step in range(1, a.dec_steps + 1):
        lr = a.dec_lr * min(1.0, step / 50)
        if a.dec_cosine:  # decays to 1% by the last step
            lr *= 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * step / a.dec_steps))
        for pg in opt.param_groups:
            pg["lr"] = lr
        idx = torch.randint(0, len(imgs), (a.vae_batch,), generator=g)
        x = to_tensor(imgs[idx.numpy()])
        with torch.no_grad():
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        mse = F.mse_loss(vae.decode(z).sample, x)
        opt.zero_grad(set_to_none=True)
        mse.backward()
        opt.step()
        run = mse.item() if run is None else 0.98 * run + 0.02 * mse.item()
        if step % 50 == 0 or step == 1:
            log(f"decoder step {step}/{a.dec_steps} mse {mse.item():.5f} (avg {run:.5f}) "
                f"{step * a.vae_batch / (time.time() - t0):.1f} img/s")
        if step % 100 == 0 or step == a.dec_steps:
            vae.save_pretrained(os.path.join(a.work, "vae_ft"))
            with open(os.path.join(a.work, "vae_ft", "state.json"), "w") as f:
                json.dump(dict(step=step, mse_avg=run, minutes=(time.time() - t0) / 60), f)
    log(f"decoder done in {(time.time() - t0) / 60:.1f} min, final mse avg {run:.5f}")


@torch.no_grad()
def encode_latents(a):
    vae = AutoencoderKL.from_pretrained(os.path.join(a.work, "vae")).to(DEV).eval()
    t0 = time.time()
    imgs, caps = dataset.make(a.seed + 1000, a.unet_images, workers=a.workers)
    log(f"rendered {len(imgs)} images in {time.time() - t0:.0f}s ({a.workers} workers)")
    means, stds = [], []
    t0 = time.time()
    for i in range(0, len(imgs), 1024):
        post = vae.encode(to_tensor(imgs[i:i + 1024]).to(DEV)).latent_dist
        means.append(post.mean.cpu())
        stds.append(post.std.cpu())
    mean, std = torch.cat(means), torch.cat(stds)
    g = torch.Generator().manual_seed(a.seed + 2)
    sample = mean + std * torch.randn(mean.shape, generator=g)
    sf = 1.0 / sample.std().item()
    # reconstruction check on the first 256
    rec = vae.decode(mean[:256].to(DEV)).sample.cpu()
    mse = F.mse_loss(rec, to_tensor(imgs[:256])).item()
    log(f"latents {tuple(mean.shape)} in {time.time() - t0:.0f}s: mean {sample.mean():.4f} std "
        f"{sample.std():.4f} -> scaling_factor {sf:.5f}; posterior std mean {std.mean():.4f}; "
        f"recon mse {mse:.5f}")
    tok = CLIPTokenizer.from_pretrained(TOKENIZER_SRC, model_max_length=77)
    ids = tok(caps, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    uncond = tok([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    torch.save(dict(mean=mean, std=std, ids=ids, uncond=uncond, scaling_factor=sf, captions=caps),
               os.path.join(a.work, "latents.pt"))
    from PIL import Image
    n = 16
    both = np.concatenate([imgs[:n], ((rec[:n].clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()])
    dataset.grid(list(both), n).save(os.path.join(a.work, "vae_recon.png"))


def train_unet(a):
    torch.manual_seed(a.seed + 3)
    data = torch.load(os.path.join(a.work, "latents.pt"))
    mean, std, ids, uncond = (data[k].to(DEV) for k in ("mean", "std", "ids", "uncond"))
    sf = data["scaling_factor"]
    N = len(mean)
    te = CLIPTextModel(CLIPTextConfig(**TEXT_CFG)).to(DEV)
    unet = UNet2DConditionModel(**UNET_CFG).to(DEV)
    log(f"unet params {n_params(unet)}, text encoder params {n_params(te)}, {N} latents, sf {sf:.5f}")
    if a.init_from:  # continue from an exported checkpoint folder (its EMA weights; fresh optimizer)
        unet.load_state_dict(load_file(os.path.join(a.init_from, "unet", "diffusion_pytorch_model.safetensors")))
        te_sd = load_file(os.path.join(a.init_from, "text_encoder", "model.safetensors"))
        names = set(te.state_dict())  # exported names carry "text_model."; the module may not
        te_sd = {k if k in names else k.removeprefix("text_model."): v for k, v in te_sd.items()}
        missing, unexpected = te.load_state_dict(te_sd, strict=False)
        assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
        log(f"initialised from {a.init_from}")
    sched = DDPMScheduler(**SD15_BETAS)
    acp = sched.alphas_cumprod.to(DEV)
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0, betas=(0.9, 0.99),
                            fused=DEV.type == "cuda")
    ema_unet = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    ema_te = {k: v.detach().clone() for k, v in te.state_dict().items()}
    live = [v for m in (unet, te) for v in m.state_dict().values() if v.dtype.is_floating_point]
    ema = [e[k] for m, e in ((unet, ema_unet), (te, ema_te))
           for k, v in m.state_dict().items() if v.dtype.is_floating_point]
    g = torch.Generator(DEV).manual_seed(a.seed + 4)
    t0 = time.time()
    run = None
    hist = []
    for step in range(1, a.steps + 1):
        lr = a.lr * min(1.0, step / a.warmup)  # constant after warm-up: checkpoint N == a run of N steps
        for pg in opt.param_groups:
            pg["lr"] = lr
        idx = torch.randint(0, N, (a.batch,), generator=g, device=DEV)
        lat = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g, device=DEV)) * sf
        noise = torch.randn(lat.shape, generator=g, device=DEV)
        t = torch.randint(0, 1000, (a.batch,), generator=g, device=DEV)
        s = acp[t].sqrt().view(-1, 1, 1, 1)
        n = (1 - acp[t]).sqrt().view(-1, 1, 1, 1)
        noisy = s * lat + n * noise
        tid = ids[idx].clone()
        drop = torch.rand(a.batch, generator=g, device=DEV) < a.uncond_prob
        tid[drop] = uncond[0]
        enc = te(tid)[0]
        pred = unet(noisy, t, enc).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        d = min(a.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, live, 1 - d)
        if step % 20 == 0 or step == 1:  # .item() waits for the device: not every step
            run = loss.item() if run is None else 0.8179 * run + 0.1821 * loss.item()  # ~0.99/step
        out_of_time = a.max_minutes and time.time() - t0 > 60 * a.max_minutes
        if step % 100 == 0 or step == 1 or out_of_time:
            el = time.time() - t0
            log(f"unet step {step}/{a.steps} loss {loss.item():.4f} (avg {run:.4f}) lr {lr:.2e} "
                f"{step * a.batch / el:.0f} samples/s, {el / 60:.1f} min")
            hist.append((step, run))
        if step % a.ckpt_every == 0 or step == a.steps or out_of_time:
            out = os.path.join(a.work, f"ckpt-{step:06d}")
            export(out, ema_unet, ema_te, sf)
            with open(os.path.join(out, "train_state.json"), "w") as f:
                json.dump(dict(step=step, loss_avg=run, minutes=(time.time() - t0) / 60,
                               loss_curve=hist, args=vars(a)), f, indent=1)
            log(f"checkpoint {out}")
        if out_of_time:
            log(f"stopping at step {step}: --max-minutes {a.max_minutes} reached")
            break
    log(f"unet done in {(time.time() - t0) / 60:.1f} min, final loss avg {run:.4f}")


def export(out, unet_sd, te_sd, sf, dtype=torch.float16):
    """A StableDiffusionPipeline folder (diffusers layout) with F16 weights."""
    from diffusers import StableDiffusionPipeline, PNDMScheduler
    if os.path.exists(out):
        shutil.rmtree(out)
    work = os.path.dirname(out) if not out.startswith(ROOT) else None
    vae_dir = os.path.join(ARGS.work, "vae")
    vae = AutoencoderKL.from_pretrained(vae_dir)
    vae.register_to_config(scaling_factor=sf)
    unet = UNet2DConditionModel(**UNET_CFG)
    unet.load_state_dict(unet_sd)
    te = CLIPTextModel(CLIPTextConfig(**TEXT_CFG))
    te.load_state_dict(te_sd)
    tok = CLIPTokenizer.from_pretrained(TOKENIZER_SRC, model_max_length=77)
    sched = PNDMScheduler.from_pretrained(SCHEDULER_SRC)
    pipe = StableDiffusionPipeline(vae=vae.to(dtype), text_encoder=te.to(dtype), tokenizer=tok,
                                   unet=unet.to(dtype), scheduler=sched, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out, safe_serialization=True)
    # real SD folders: tokenizer/ as vocab.json + merges.txt, the scheduler config of SD 1.5,
    # text encoder tensor names with the "text_model." prefix
    shutil.rmtree(os.path.join(out, "tokenizer"))
    shutil.copytree(TOKENIZER_SRC, os.path.join(out, "tokenizer"))
    shutil.copy(os.path.join(SCHEDULER_SRC, "scheduler_config.json"),
                os.path.join(out, "scheduler", "scheduler_config.json"))
    p = os.path.join(out, "text_encoder", "model.safetensors")
    from safetensors import safe_open
    with safe_open(p, "pt") as f:
        meta = f.metadata()
        tensors = {k if k.startswith("text_model.") else "text_model." + k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, p, metadata=meta)
    for comp in ("unet", "vae", "text_encoder"):
        assert not any(x.endswith(".bin") for x in os.listdir(os.path.join(out, comp)))


def do_export(a):
    src = a.ckpt
    if src is None:
        cks = sorted(d for d in os.listdir(a.work) if d.startswith("ckpt-"))
        src = os.path.join(a.work, cks[-1])
    card = os.path.join(a.out, "README.md")  # the model card is kept
    card_text = open(card).read() if os.path.exists(card) else None
    if os.path.exists(a.out):
        shutil.rmtree(a.out)
    shutil.copytree(src, a.out, ignore=shutil.ignore_patterns("train_state.json"))
    if a.decoder_ft:  # the fine-tuned decoder (same encoder, same latent space and scaling_factor)
        vcfg = json.load(open(os.path.join(a.out, "vae", "config.json")))
        vae = AutoencoderKL.from_pretrained(os.path.join(a.work, "vae_ft"))
        vae.register_to_config(scaling_factor=vcfg["scaling_factor"])
        shutil.rmtree(os.path.join(a.out, "vae"))
        vae.to(torch.float16).save_pretrained(os.path.join(a.out, "vae"), safe_serialization=True)
        shutil.copy(os.path.join(a.work, "vae_ft", "state.json"), os.path.join(a.work, "exported_vae_ft.json"))
    if card_text is not None:
        with open(card, "w") as f:
            f.write(card_text)
    for d, _, fs in os.walk(a.out):
        for f in fs:
            os.chmod(os.path.join(d, f), 0o644)
    shutil.copy(os.path.join(src, "train_state.json"), os.path.join(a.work, "exported_state.json"))
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(a.out) for f in fs)
    log(f"exported {src} -> {a.out}: {total / 1e6:.2f} MB")


def bench(a):
    torch.manual_seed(0)
    vae = AutoencoderKL(**VAE_CFG)
    te = CLIPTextModel(CLIPTextConfig(**TEXT_CFG))
    unet = UNet2DConditionModel(**UNET_CFG)
    print(f"params: vae {n_params(vae)} (dec {n_params(vae.decoder)}), te {n_params(te)}, unet {n_params(unet)}")
    x = torch.randn(a.vae_batch, 3, 64, 64)
    opt = torch.optim.Adam(vae.parameters())
    for i in range(4):
        if i == 1:
            t0 = time.time()
        post = vae.encode(x).latent_dist
        loss = F.mse_loss(vae.decode(post.sample()).sample, x)
        opt.zero_grad(); loss.backward(); opt.step()
    print(f"vae: {3 * a.vae_batch / (time.time() - t0):.1f} img/s")
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params)
    ids = torch.randint(0, 49408, (a.batch, 77))
    lat = torch.randn(a.batch, 4, 8, 8)
    for i in range(4):
        if i == 1:
            t0 = time.time()
        pred = unet(lat, torch.randint(0, 1000, (a.batch,)), te(ids)[0]).sample
        loss = F.mse_loss(pred, lat)
        opt.zero_grad(); loss.backward(); opt.step()
    print(f"unet+te: {3 * a.batch / (time.time() - t0):.1f} samples/s")


ARGS = None
DEV = torch.device("cpu")

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--stage", default="all", choices=["all", "vae", "latents", "unet", "decoder", "export", "bench"])
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--work", default="/tmp/sdd-demo-work")
    ap.add_argument("--out", default=os.path.join(ROOT, "models", "demo"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vae-images", type=int, default=20000)
    ap.add_argument("--vae-steps", type=int, default=1500)
    ap.add_argument("--vae-batch", type=int, default=16)
    ap.add_argument("--vae-lr", type=float, default=2e-3)
    ap.add_argument("--kl-weight", type=float, default=1e-4)
    ap.add_argument("--dec-steps", type=int, default=3000)
    ap.add_argument("--dec-lr", type=float, default=1e-3)
    ap.add_argument("--decoder-ft", action="store_true", help="export: use work/vae_ft")
    ap.add_argument("--dec-init", default=None, help="decoder: start from this AutoencoderKL folder "
                    "(default work/vae); its encoder must be work/vae's")
    ap.add_argument("--dec-cosine", action="store_true", help="decoder: cosine learning-rate decay")
    ap.add_argument("--unet-images", type=int, default=30000)
    ap.add_argument("--steps", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--uncond-prob", type=float, default=0.1)
    ap.add_argument("--ckpt-every", type=int, default=500)
    ap.add_argument("--ckpt", default=None)
    ap.add_argument("--init-from", default=None, help="unet: start from this exported checkpoint")
    ap.add_argument("--warmup", type=int, default=300, help="unet: learning-rate warm-up steps")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--workers", type=int, default=1, help="processes rendering the dataset")
    ap.add_argument("--max-minutes", type=float, default=0,
                    help="unet: stop (with a checkpoint) after this many minutes")
    ARGS = a = ap.parse_args()
    DEV = torch.device(a.device)
    if DEV.type == "cuda":  # reproducible up to the few CUDA kernels without a deterministic path
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    torch.set_num_threads(a.threads)
    os.makedirs(a.work, exist_ok=True)
    log("args", vars(a))
    if a.stage == "bench":
        bench(a)
    if a.stage in ("all", "vae"):
        train_vae(a)
    if a.stage in ("all", "latents"):
        encode_latents(a)
    if a.stage in ("all", "unet"):
        train_unet(a)
    if a.stage == "decoder":
        train_decoder(a)
    if a.stage in ("all", "export"):
        do_export(a)
