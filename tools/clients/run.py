#!/usr/bin/env python3
"""run.py: the real `openai` and `webuiapi` clients against a real `sdd serve` on the tiny test model, over the
token-protected TCP listener. Asserts that each client's image equals sdd's native result for the same settings
(`sdd generate` in its own process; PSNR >= 45 dB), that a missing or wrong token gets 401, and that a job whose
client disconnects still finishes and is fetchable through the native API.

Usage: /work/venv-ref/bin/python tools/clients/run.py [--sdd .build/debug/sdd] [--model Tests/Fixtures/tiny-sd]
Exit status 0 when every check passed.
"""
import argparse
import base64
import importlib.metadata as md
import io
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import openai
import webuiapi
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "clients-test-token-0123456789"
PSNR_MIN = 45.0  # the bar; same code on the same machine should give identical pixels (inf)
failures = []


def check(ok, what):
    print(("PASS " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)


def psnr(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return -math.inf
    mse = np.mean((a - b) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(port, method, path, token=None, body=None, timeout=600):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode())
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def native(sdd, model, out, prompt, seed, steps, guidance, scheduler, size, negative=None):
    """sdd's own result for these settings: `sdd generate` in a separate process."""
    extra = ["--negative-prompt", negative] if negative else []
    subprocess.run([sdd, "generate", "--model", model, "--seed", str(seed), "--steps", str(steps), "--guidance",
                    str(guidance), "--scheduler", scheduler, "--width", str(size), "--height", str(size), "-o", out]
                   + extra + [prompt], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=os.environ.copy())
    return Image.open(out).convert("RGB")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sdd", default=str(ROOT / ".build/debug/sdd"))
    ap.add_argument("--model", default=str(ROOT / "Tests/Fixtures/tiny-sd"))
    args = ap.parse_args()
    sdd_version = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True).stdout.strip() or "?"
    print(f"clients: openai {openai.__version__}, webuiapi {md.version('webuiapi')}; sdd at commit {sdd_version} ({args.sdd}); "
          f"model {args.model}")

    tmp = Path(tempfile.mkdtemp(prefix="sdd-clients-"))
    tokens = tmp / "tokens"
    tokens.write_text(f"webui {TOKEN}\n")
    tokens.chmod(0o600)
    port = free_port()
    log = open(tmp / "serve.log", "w")
    serve = subprocess.Popen([args.sdd, "serve", "--model", args.model, "--socket", str(tmp / "sdd.sock"),
                              "--state-dir", str(tmp / "state"), "--listen", f"127.0.0.1:{port}", "--tokens", str(tokens)],
                             stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if http(port, "GET", "/v1/health", TOKEN, timeout=2)[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        else:
            raise SystemExit(f"sdd serve did not answer on 127.0.0.1:{port}; see {tmp / 'serve.log'}")
        print(f"sdd serve listening on 127.0.0.1:{port} (tokens file mode 0600) and {tmp / 'sdd.sock'}")
        prompt, seed, size = "a red circle", 7, 64

        # OpenAI Images API through the `openai` package.
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=TOKEN)
        t = time.time()
        res = client.images.generate(model="tiny-sd", prompt=prompt, n=1, size=f"{size}x{size}",
                                     response_format="b64_json",
                                     extra_body={"seed": seed, "steps": 12, "guidance": 2.5, "scheduler": "euler"})
        img = Image.open(io.BytesIO(base64.b64decode(res.data[0].b64_json))).convert("RGB")
        ref = native(args.sdd, args.model, str(tmp / "native-openai.png"), prompt, seed, 12, 2.5, "euler", size)
        p = psnr(img, ref)
        print(f"openai images.generate: {img.size[0]}x{img.size[1]} in {time.time() - t:.2f} s, created={res.created}, "
              f"PSNR against sdd generate {p:.2f} dB")
        check(p >= PSNR_MIN, f"openai image equals sdd's native result (PSNR {p} >= {PSNR_MIN})")
        models = client.models.list()
        check([m.id for m in models.data] == [Path(args.model).name], f"openai models.list: {[m.id for m in models.data]}")

        # AUTOMATIC1111 API through `webuiapi` (HTTP Basic, the token as password).
        api = webuiapi.WebUIApi(host="127.0.0.1", port=port, sampler="Euler a", steps=12)
        api.set_auth("webui", TOKEN)
        t = time.time()
        r = api.txt2img(prompt=prompt, negative_prompt="blue", seed=seed, cfg_scale=2.5, width=size, height=size,
                        sampler_name="Euler a")
        ref = native(args.sdd, args.model, str(tmp / "native-a1111.png"), prompt, seed, 12, 2.5, "euler-a", size,
                     negative="blue")
        p = psnr(r.image.convert("RGB"), ref)
        print(f"webuiapi txt2img: {len(r.images)} image(s) in {time.time() - t:.2f} s, PSNR against sdd generate "
              f"{p:.2f} dB")
        print(f"  info.infotexts[0]: {r.info['infotexts'][0]!r}")
        print(f"  PNG parameters chunk: {r.image.info.get('parameters')!r}")
        check(p >= PSNR_MIN, f"webuiapi image equals sdd's native result (PSNR {p} >= {PSNR_MIN})")
        check(r.info["seed"] == seed and r.info["sampler_name"] == "Euler a", "webuiapi info: seed and sampler name")
        check("Sampler: Euler a" in r.image.info.get("parameters", ""), "the PNG's parameters chunk names A1111's sampler")
        samplers = [s["name"] for s in api.get_samplers()]
        print(f"  samplers: {samplers}; sd-models: {[m['title'] for m in api.get_sd_models()]}")
        check(api.get_options()["sd_model_checkpoint"] == Path(args.model).name, "webuiapi get_options: the model")

        # Missing and wrong tokens.
        for label, key in [("wrong", "not-the-token-0123456789")]:
            try:
                openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0).images.generate(
                    prompt=prompt, size="64x64")
                check(False, f"openai with a {label} token is refused")
            except openai.AuthenticationError as e:
                check(e.status_code == 401, f"openai with a {label} token: {e.status_code} {e.message[:60]!r}")
        no_auth = webuiapi.WebUIApi(host="127.0.0.1", port=port)
        try:
            no_auth.txt2img(prompt=prompt, width=size, height=size, steps=2)
            check(False, "webuiapi without a token is refused")
        except RuntimeError as e:
            check(e.args[0] == 401, f"webuiapi without a token: {e.args[0]}")
        wrong = webuiapi.WebUIApi(host="127.0.0.1", port=port, username="webui", password="wrong-token-0123456789")
        try:
            wrong.txt2img(prompt=prompt, width=size, height=size, steps=2)
            check(False, "webuiapi with a wrong token is refused")
        except RuntimeError as e:
            check(e.args[0] == 401, f"webuiapi with a wrong token: {e.args[0]}")
        for path in ["/v1/images/generations", "/sdapi/v1/txt2img", "/v1/jobs"]:
            status, _ = http(port, "POST" if "jobs" not in path else "GET", path, None, {"prompt": prompt} if "jobs" not in path else None)
            check(status == 401, f"no token on {path}: {status}")

        # A client that disconnects: its job still finishes and is fetchable natively.
        before = {j["id"] for j in json.loads(http(port, "GET", "/v1/jobs", TOKEN)[1])["jobs"]}
        body = json.dumps({"prompt": "a blue square", "seed": 11, "steps": 60, "cfg_scale": 2.5, "width": size,
                           "height": size, "sampler_name": "DPM++ 2M"}).encode()
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(f"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                  f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        job = None
        deadline = time.time() + 60
        while job is None and time.time() < deadline:
            jobs = json.loads(http(port, "GET", "/v1/jobs", TOKEN)[1])["jobs"]
            job = next((j for j in jobs if j["id"] not in before), None)
        s.close()
        check(job is not None and job["state"] in ("queued", "running"),
              f"disconnect: job {job and job['id']} was {job and job['state']} when the client went away")
        deadline = time.time() + 600
        while time.time() < deadline:
            job = json.loads(http(port, "GET", f"/v1/jobs/{job['id']}", TOKEN)[1])
            if job["state"] in ("finished", "failed", "canceled"):
                break
            time.sleep(0.2)
        status, png = http(port, "GET", f"/v1/jobs/{job['id']}/images/0", TOKEN)
        check(job["state"] == "finished" and status == 200, f"disconnect: job {job['id']} {job['state']}, image {status}")
        if status == 200:
            ref = native(args.sdd, args.model, str(tmp / "native-disconnect.png"), "a blue square", 11, 60, 2.5,
                         "dpm++2m", size)
            p = psnr(Image.open(io.BytesIO(png)).convert("RGB"), ref)
            check(p >= PSNR_MIN, f"disconnect: the fetched image equals sdd generate's (PSNR {p:.2f} dB)")
        print(f"job owner as the native API shows it: owner={job['owner']} owner_name={job.get('owner_name')!r}")
    finally:
        serve.terminate()
        serve.wait(timeout=120)
        log.close()
    if failures:
        print(f"FAILED: {'; '.join(failures)} (daemon log: {tmp / 'serve.log'})")
        return 1
    shutil.rmtree(tmp, ignore_errors=True)
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
