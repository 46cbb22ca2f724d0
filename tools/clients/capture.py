#!/usr/bin/env python3
"""capture.py: records the HTTP requests the real `openai` and `webuiapi` clients send, so the Swift tests replay
their exact shapes (paths, methods, auth headers, JSON bodies) against sdd's router.

Usage: /work/venv-ref/bin/python tools/clients/capture.py [OUT_DIR]   (default Tests/Fixtures/clients)
Writes openai.json and a1111.json: lists of {"client", "call", "method", "path", "authorization", "body"}.
"""
import base64
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import openai
import webuiapi
import importlib.metadata as md

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "Tests/Fixtures/clients")
TOKEN = "capture-token-0123456789"
captured = []
current = {"client": "", "call": ""}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        captured.append({**current, "method": self.command, "path": self.path,
                         "authorization": self.headers.get("Authorization"),
                         "content_type": self.headers.get("Content-Type"), "body": body})
        if self.path.startswith("/v1/images"):
            answer = {"created": 0, "data": []}
        elif self.path.startswith("/v1/models"):
            answer = {"object": "list", "data": []}
        elif self.path.endswith("/txt2img"):
            answer = {"images": [], "parameters": {}, "info": "{}"}
        elif self.path.endswith(("/sd-models", "/samplers")):
            answer = []
        else:
            answer = {}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=TOKEN)
    current.update(client=f"openai {openai.__version__}", call="images.generate")
    client.images.generate(model="tiny-sd", prompt="a red circle", n=1, size="64x64", response_format="b64_json",
                           extra_body={"seed": 7, "steps": 4, "guidance": 2.5, "scheduler": "euler",
                                       "negative_prompt": "blue"})
    current.update(call="images.generate(minimal)")
    client.images.generate(prompt="a red circle")
    current.update(call="models.list")
    client.models.list()

    version = md.version("webuiapi")
    current.update(client=f"webuiapi {version}", call="WebUIApi() + set_auth (check_extensions)")
    api = webuiapi.WebUIApi(host="127.0.0.1", port=port, sampler="Euler a", steps=4)
    api.set_auth("webui", TOKEN)
    for call, fn in [
        ("txt2img", lambda: api.txt2img(prompt="a red circle", negative_prompt="blue", seed=7, steps=4,
                                        cfg_scale=2.5, width=64, height=64, sampler_name="Euler a")),
        ("get_sd_models", api.get_sd_models),
        ("get_samplers", api.get_samplers),
        ("get_options", api.get_options),
        ("set_options", lambda: api.set_options({"sd_model_checkpoint": "tiny-sd"})),
        ("get_progress", api.get_progress),
        ("interrupt", api.interrupt),
    ]:
        current.update(client=f"webuiapi {version}", call=call)
        fn()
    server.shutdown()

    OUT.mkdir(parents=True, exist_ok=True)
    for name, prefix in [("openai.json", "openai"), ("a1111.json", "webuiapi")]:
        records = [r for r in captured if r["client"].startswith(prefix)]
        (OUT / name).write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")
        print(f"{OUT / name}: {len(records)} requests")


if __name__ == "__main__":
    main()
