#!/usr/bin/env python3
"""Writes the sampling reference fixtures the Swift PipelineTests replay:

  Tests/Fixtures/reference/tokens.json             transformers CLIPTokenizer ids for varied prompts
  Tests/Fixtures/reference/randn.safetensors        torch.randn from torch.Generator("cpu").manual_seed
  Tests/Fixtures/reference/schedulers.safetensors   every per-step sample of each scheduler case
  Tests/Fixtures/reference/schedulers.json          each case's kind, steps, seed, config, timesteps
  Tests/Fixtures/reference/schedulers_fewstep.*     the same for LCM, TCD (with its eta) and DDIM trailing

Usage: python tools/reference/make_sampling_fixtures.py [--few-step-only]   (run tools/reference/clip_bpe.py first)
--few-step-only rewrites only schedulers_fewstep.*.
Versions used: torch 2.15 (CPU), diffusers 0.42.1, transformers 5.24. The randn values depend on the
CPU kind torch dispatches to (x86 AVX2/AVX512 vs scalar); the file records which one made them.
"""
import inspect
import json
import os
import sys

import numpy as np
import torch
from safetensors.numpy import save_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "Tests", "Fixtures", "reference")
TOKENIZER = os.path.join(ROOT, "Tests", "Fixtures", "tiny-sd", "tokenizer")

PROMPTS = [
    "a photograph of an astronaut riding a horse",
    "",
    "A Photograph Of An ASTRONAUT, riding a horse!!!",
    "hello, world... (what?) [yes] {no} <maybe> 'quoted' \"double\"",
    "1234 3.14 1,000,000 2nd 10th -5 +7 1e-3",
    "it's don't we're they've I'm you'll he'd 's 't ''s",
    "café naïve résumé Ångström",
    "cafe\u0301 with a combining accent",
    "東京の夜景、サイバーパンク",
    "a cute cat 🐱 with emoji 🚀✨ and flags 🇯🇵",
    "Straße Fuß GROSS ß",
    "İstanbul Iİıi",
    "ΟΔΟΣ Σίσυφος",
    "  extra   spaces\tand\ttabs\nand\nnewlines  \r\n ",
    "non\u00a0breaking\u3000ideographic\u2003em space",
    "(masterpiece:1.2), best quality, ((detailed)), [blurry:0.5]",
    "<|startoftext|>special tokens<|endoftext|> inside",
    "<|STARTOFTEXT|> uppercase specials <|endoftext|>.",
    "a very long prompt " + " ".join(f"word{i} and more words" for i in range(40)),
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "x" * 300,
    "—–…‘’“”€£¥©®™°±×÷",
]

RANDN_SEEDS = [0, 42, 2**32 + 5, 123456789]
RANDN_SHAPES = [[1, 4, 8, 8], [2, 4, 6, 10], [1, 4, 5, 3], [3], [1, 4, 1, 1]]
RANDN_SEQUENCE = [[1, 4, 8, 8], [3], [1, 4, 5, 3], [5], [2, 4, 6, 10], [1]]

# Stable Diffusion 1.5's scheduler/scheduler_config.json (see shared/REFERENCE.md).
SD15 = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "skip_prk_steps": True,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "prediction_type": "epsilon",
    "trained_betas": None,
}

CLASSES = {
    "pndm": "PNDMScheduler",
    "ddim": "DDIMScheduler",
    "lms": "LMSDiscreteScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "dpm++2m": "DPMSolverMultistepScheduler",
    "lcm": "LCMScheduler",
    "tcd": "TCDScheduler",
}
FEW_STEP = {"lcm", "tcd"}


def cases():
    out = []
    for kind in CLASSES:
        if kind not in FEW_STEP:  # few-step kinds have their own file (few_step_cases)
            out.append((f"{kind}-sd15-10", kind, 10, {}))
    out += [
        ("pndm-sd15-25", "pndm", 25, {}),
        ("pndm-prk-10", "pndm", 10, {"skip_prk_steps": False}),
        ("ddim-trailing-10", "ddim", 10, {"timestep_spacing": "trailing"}),
        ("ddim-linspace-12", "ddim", 12, {"timestep_spacing": "linspace", "clip_sample": False}),
        ("euler-trailing-10", "euler", 10, {"timestep_spacing": "trailing"}),
        ("euler-linspace-12", "euler", 12, {"timestep_spacing": "linspace"}),
        ("euler-vpred-10", "euler", 10, {"prediction_type": "v_prediction"}),
        ("dpm++2m-vpred-10", "dpm++2m", 10, {"prediction_type": "v_prediction"}),
        ("dpm++2m-sd15-20", "dpm++2m", 20, {}),
        ("dpm++2m-trailing-7", "dpm++2m", 7, {"timestep_spacing": "trailing"}),
        ("lms-linear-10", "lms", 10, {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}),
        ("euler-a-linspace-8", "euler-a", 8, {"timestep_spacing": "linspace"}),
        ("euler-a-trailing-30", "euler-a", 30, {"timestep_spacing": "trailing"}),
        ("ddim-cosine-10", "ddim", 10, {"beta_schedule": "squaredcos_cap_v2", "clip_sample": False}),
        ("euler-karras-10", "euler", 10, {"use_karras_sigmas": True}),
        ("lms-karras-10", "lms", 10, {"use_karras_sigmas": True}),
        ("dpm++2m-karras-12", "dpm++2m", 12, {"use_karras_sigmas": True}),
        ("dpm++2m-karras-25", "dpm++2m", 25, {"use_karras_sigmas": True}),
        ("dpm++3m-heun-10", "dpm++2m", 10, {"solver_order": 3, "solver_type": "heun"}),
        ("dpm-solver-sigmamin-10", "dpm++2m", 10, {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}),
        ("euler-zsnr-10", "euler", 10, {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing",
                                         "prediction_type": "v_prediction"}),
    ]
    return out


def few_step_cases():
    """LCM, TCD and DDIM-trailing cases for few-step sampling (schedulers_fewstep.*)."""
    return [
        # Few-step samplers. LCM/TCD ignore timestep_spacing and steps_offset; their timesteps come from
        # original_inference_steps. TCD's eta is a step() argument (recorded as the case's "eta").
        ("lcm-sd15-4", "lcm", 4, {}),
        ("lcm-sd15-1", "lcm", 1, {}),
        ("lcm-orig100-scaling5-8", "lcm", 8, {"original_inference_steps": 100, "timestep_scaling": 5.0}),
        ("lcm-vpred-clip-6", "lcm", 6, {"prediction_type": "v_prediction", "clip_sample": True,
                                         "clip_sample_range": 1.5}),
        ("lcm-sample-3", "lcm", 3, {"prediction_type": "sample"}),
        ("tcd-sd15-4-eta0.3", "tcd", 4, {"eta": 0.3}),
        ("tcd-sd15-8-eta0", "tcd", 8, {"eta": 0.0}),
        ("tcd-sd15-6-eta1", "tcd", 6, {"eta": 1.0}),
        ("tcd-vpred-5-eta0.7", "tcd", 5, {"eta": 0.7, "prediction_type": "v_prediction"}),
        ("tcd-orig20-7-eta0.5", "tcd", 7, {"eta": 0.5, "original_inference_steps": 20}),
        ("ddim-trailing-4", "ddim", 4, {"timestep_spacing": "trailing"}),
        ("ddim-trailing-1", "ddim", 1, {"timestep_spacing": "trailing"}),
    ]


def tokens():
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(TOKENIZER)
    records = []
    for prompt in PROMPTS:
        full = tok(prompt).input_ids
        ids = tok(prompt, padding="max_length", max_length=77, truncation=True).input_ids
        records.append({"prompt": prompt, "ids": ids, "token_count": len(full), "truncated": len(full) > 77})
    with open(os.path.join(OUT, "tokens.json"), "w", encoding="utf-8") as f:
        json.dump({"tokenizer": "transformers CLIPTokenizer " + __import__("transformers").__version__,
                   "cases": records}, f, ensure_ascii=False, indent=1)


def randn():
    tensors = {}
    for seed in RANDN_SEEDS:
        for shape in RANDN_SHAPES:
            g = torch.Generator("cpu").manual_seed(seed)
            tensors[f"single/{seed}/{'x'.join(map(str, shape))}"] = torch.randn(shape, generator=g).numpy()
        g = torch.Generator("cpu").manual_seed(seed)
        for i, shape in enumerate(RANDN_SEQUENCE):
            tensors[f"sequence/{seed}/{i}/{'x'.join(map(str, shape))}"] = torch.randn(shape, generator=g).numpy()
    meta = {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    save_file(tensors, os.path.join(OUT, "randn.safetensors"), metadata=meta)
    os.chmod(os.path.join(OUT, "randn.safetensors"), 0o644)


def fake_model(x_in, t):
    return torch.sin(x_in) * 0.5 + (float(t) / 1000.0) * 0.1


def schedulers(case_list, basename, first_seed):
    import diffusers

    tensors = {}
    meta = []
    for seed, (name, kind, steps, overrides) in enumerate(case_list, start=first_seed):
        overrides = dict(overrides)
        eta = overrides.pop("eta", None)
        config = dict(SD15, **overrides)
        cls = getattr(diffusers, CLASSES[kind])
        scheduler = cls.from_config(config)
        scheduler.set_timesteps(steps)
        gen = torch.Generator("cpu").manual_seed(seed)
        sample = torch.randn([1, 4, 4, 4], generator=gen) * scheduler.init_noise_sigma
        takes_generator = "generator" in inspect.signature(scheduler.step).parameters
        samples = [sample.numpy().copy()]
        for t in scheduler.timesteps:
            x_in = scheduler.scale_model_input(sample, t)
            eps = fake_model(x_in, t)
            kwargs = {"generator": gen} if takes_generator else {}
            if eta is not None:
                kwargs["eta"] = eta
            sample = scheduler.step(eps, t, sample, **kwargs).prev_sample
            samples.append(sample.numpy().copy())
        tensors[f"{name}/samples"] = np.stack(samples).astype(np.float32)
        meta.append({
            "name": name, "kind": kind, "steps": steps, "seed": seed, "config": config,
            **({"eta": eta} if eta is not None else {}),
            "class": CLASSES[kind],
            "timesteps": [float(t) for t in scheduler.timesteps],
            "init_noise_sigma": float(scheduler.init_noise_sigma),
        })
    save_file(tensors, os.path.join(OUT, basename + ".safetensors"),
              metadata={"diffusers": diffusers.__version__, "torch": torch.__version__})
    os.chmod(os.path.join(OUT, basename + ".safetensors"), 0o644)
    with open(os.path.join(OUT, basename + ".json"), "w") as f:
        json.dump({"diffusers": diffusers.__version__, "model": "eps = sin(x_in) * 0.5 + (t / 1000) * 0.1",
                   "cases": meta}, f, indent=1)


def main():
    os.makedirs(OUT, exist_ok=True)
    only_few_step = "--few-step-only" in sys.argv[1:]
    names = ["schedulers_fewstep.safetensors", "schedulers_fewstep.json"]
    if not only_few_step:
        tokens()
        randn()
        schedulers(cases(), "schedulers", 1000)
        names += ["tokens.json", "randn.safetensors", "schedulers.safetensors", "schedulers.json"]
    schedulers(few_step_cases(), "schedulers_fewstep", 2000)
    total = sum(os.path.getsize(os.path.join(OUT, n)) for n in names)
    print(f"wrote {OUT} ({total} bytes)")


if __name__ == "__main__":
    main()
