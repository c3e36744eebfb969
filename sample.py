"""
Generate text from a trained checkpoint.

    python sample.py --out_dir=out-rmoe-small
    python sample.py --out_dir=out-rmoe-small --start="ROMEO:" --num_samples=3 --max_new_tokens=300
    python sample.py --out_dir=out-rmoe-small --start=FILE:prompt.txt --temperature=0

The model and its character vocabulary come from out_dir/ckpt.pt; a checkpoint
without one uses GPT-2 BPE (tiktoken). A prompt longer than the model's
block_size is fine: the model sees only its last block_size tokens.
"""

import sys

import torch

from checkpoint import load_checkpoint, model_from_checkpoint
from configurator import ConfigError, fail, parse_args, pick_device

DEFAULTS = {
    "out_dir": "out",  # folder holding ckpt.pt
    "start": "\n",  # the prompt, or FILE:path to read it from a file
    "num_samples": 3,
    "max_new_tokens": 500,
    "temperature": 0.8,  # 1.0 samples the model's distribution, < 1 sharper, 0 greedy (argmax)
    "top_k": 200,  # sample only among the k likeliest tokens
    "seed": 1337,
    "device": "auto",  # auto | cpu | cuda | cuda:N | mps
}


def main(argv):
    try:
        cfg, _ = parse_args(DEFAULTS, argv, __doc__)
        device = pick_device(cfg["device"])
    except ConfigError as e:
        fail(e)
    if cfg["temperature"] < 0:
        fail(f"temperature={cfg['temperature']} must be >= 0 (0 is greedy)")
    for key, least in (("top_k", 1), ("num_samples", 1), ("max_new_tokens", 0), ("seed", 0)):
        if cfg[key] < least:
            fail(f"{key}={cfg[key]} must be at least {least}")
    if cfg["seed"] >= 2 ** 63:
        fail(f"seed={cfg['seed']} must be below 2**63")

    torch.manual_seed(cfg["seed"])
    ckpt_path = f"{cfg['out_dir']}/ckpt.pt"
    try:
        ckpt = load_checkpoint(ckpt_path, device)
        model = model_from_checkpoint(ckpt, ckpt_path)
    except ValueError as e:
        fail(e)
    model.eval().to(device)
    encode, decode = tokenizer(ckpt.get("vocab"))

    start = cfg["start"]
    if start.startswith("FILE:"):
        try:
            with open(start[5:], encoding="utf-8") as f:
                start = f.read()
        except (OSError, UnicodeDecodeError) as e:
            fail(f"cannot read the prompt file {start[5:]} ({e}); check the path and that it is UTF-8 text")
    prompt = torch.tensor([encode(start)], dtype=torch.long, device=device)
    if prompt.numel() == 0:
        fail("the prompt is empty; give at least one character with --start")

    autocast = (torch.autocast(device_type="cuda", dtype=torch.bfloat16) if device.startswith("cuda")
                else torch.autocast(device_type="cpu", enabled=False))
    with autocast:
        for _ in range(cfg["num_samples"]):
            out = model.generate(prompt, cfg["max_new_tokens"], temperature=cfg["temperature"], top_k=cfg["top_k"])
            print(decode(out[0].tolist()))
            print("---------------")


def tokenizer(vocab):
    """(encode, decode) for a character vocabulary, or GPT-2 BPE when vocab is None."""
    if vocab is None:
        import tiktoken
        try:
            enc = tiktoken.get_encoding("gpt2")
        except Exception as e:
            fail(f"GPT-2 BPE needs tiktoken's gpt2 files, fetched from the internet on first use ({e})")
        return (lambda s: enc.encode(s, allowed_special={"<|endoftext|>"})), enc.decode
    stoi = {ch: i for i, ch in enumerate(vocab)}

    def encode(text):
        unknown = sorted(set(text) - stoi.keys())
        if unknown:
            fail(f"the prompt has characters outside the model's vocabulary: {''.join(unknown)!r}; "
                 f"remove or replace them")
        return [stoi[ch] for ch in text]

    return encode, lambda ids: "".join(vocab[i] for i in ids)


if __name__ == "__main__":
    main(sys.argv[1:])
