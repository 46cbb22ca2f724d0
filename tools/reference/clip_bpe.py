#!/usr/bin/env python3
"""Builds a CLIP tokenizer folder (vocab.json, merges.txt, tokenizer_config.json,
special_tokens_map.json) from open_clip's bpe_simple_vocab_16e6.txt.gz, the way CLIP does.

Usage: python tools/reference/clip_bpe.py [OUT_DIR]   (default Tests/Fixtures/tiny-sd/tokenizer)

vocab = 256 byte-unicode symbols, the same with "</w>", one entry per merge (lines 1 ... 48894
of the file), then <|startoftext|>, <|endoftext|>: 49408 entries. With these files
transformers' CLIPTokenizer gives the same ids as open_clip / the real SD 1.x tokenizer.
"""
import gzip
import json
import os
import importlib.util
import sys


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def main():
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "Tests", "Fixtures", "tiny-sd", "tokenizer")
    os.makedirs(out, exist_ok=True)
    # open_clip itself imports torchvision; only its data file is needed.
    spec = importlib.util.find_spec("open_clip")
    bpe_path = os.path.join(os.path.dirname(spec.origin), "bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]
    assert len(merges) == 48894 and all(len(m) == 2 for m in merges)
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408 and len(set(vocab)) == 49408
    with open(os.path.join(out, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({v: i for i, v in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(out, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
              "errors": "replace", "add_prefix_space": False, **special}
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(out, "special_tokens_map.json"), "w") as f:
        json.dump(special, f, indent=2)

    from transformers import CLIPTokenizer
    tok = CLIPTokenizer.from_pretrained(out)
    ids = tok("a photograph of an astronaut riding a horse").input_ids
    expected = [49406, 320, 8853, 539, 550, 18376, 6765, 320, 4558, 49407]
    assert ids == expected, ids
    assert tok.model_max_length == 77
    print(f"wrote {out}: {len(vocab)} vocab entries, {len(merges)} merges; check ids OK")


if __name__ == "__main__":
    main()
