"""
Generate text from a trained checkpoint.

    python sample.py --out_dir=out-rmoe-small
    python sample.py --out_dir=out-rmoe-small --start="ROMEO:" --num_samples=3 --max_new_tokens=300
    python sample.py --out_dir=out-rmoe-small --start=FILE:prompt.txt --temperature=0
    python sample.py --out_dir=out-rmoe-small --start="ROMEO:" --max_new_tokens=0 --num_samples=1 --trace=True

The model and its character vocabulary come from out_dir/ckpt.pt; a checkpoint
without one uses GPT-2 BPE (the dataset folder's BPE files, or tiktoken's download). A prompt longer than the model's
block_size is fine: it is cropped to its last block_size tokens (see
GPT.generate() for the window once the text outgrows block_size).

--trace=True shows after each sample which experts every token went to in every
MoE layer: a grid of one row per token and one column per layer, with the top-1
expert id (all top_k ids with --trace_topk=True), then, in a terminal, the text
coloured by the top-1 expert of layer --trace_layer. The routing comes from one
forward pass over the last block_size tokens of the text (the prompt alone with
--max_new_tokens=0); a token generated in a shorter window may have gone elsewhere then.
"""

import sys

import torch

from rmoe.checkpoint import load_checkpoint, model_from_checkpoint
from rmoe.dataset import dataset_dir, token_count, tokenizer
from configurator import fail, precision, run_script, script_settings

DEFAULTS = {
    "out_dir": "out",  # folder holding ckpt.pt
    "start": "\n",  # the prompt, or FILE:path to read it from a file
    "num_samples": 3,  # how many texts to generate, each from the same prompt
    "max_new_tokens": 500,  # tokens (characters) to add to the prompt in each sample
    "temperature": 0.8,  # 1.0 samples the model's distribution, < 1 sharper, 0 greedy (argmax)
    "top_k": 200,  # sample among the k likeliest next tokens (not the model's top_k experts); unused at temperature 0
    "seed": 1337,  # random seed of the sampling (none at temperature 0); the same seed gives the same texts
    "device": "auto",  # auto | cpu | cuda | cuda:N | mps
    "trace": False,  # show which experts each token went to in each MoE layer
    "trace_layer": 0,  # with trace, in a terminal, colour the text by this layer's top-1 expert
    "trace_topk": False,  # with trace, show all top_k experts of each token, not only the first
    "threads": 1,  # CPU threads for torch; 0 = its default (one per core); 1 is fastest on a busy machine
}


def main(argv):
    cfg, device = script_settings(sys.modules[__name__], argv)
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
    never_sample_padding(model, token_count(ckpt.get("vocab")))
    encode, decode = tokenizer(ckpt.get("vocab"), dataset_dir(ckpt.get("train_config", {}).get("dataset", "")))
    if cfg["trace"] and not model.config.is_moe:
        fail(f"{ckpt_path} is a dense model (n_experts=0): there is no routing to trace")
    if cfg["trace"] and not 0 <= cfg["trace_layer"] < model.config.n_layer:
        fail(f"trace_layer={cfg['trace_layer']} must be between 0 and {model.config.n_layer - 1}, "
             f"a layer of the model")

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

    _, autocast = precision(device)
    with autocast:
        for _ in range(cfg["num_samples"]):
            out = model.generate(prompt, cfg["max_new_tokens"], temperature=cfg["temperature"], top_k=cfg["top_k"])
            print(decode(out[0].tolist()))
            if cfg["trace"]:  # colours only for a terminal, plain text into files and pipes
                colour_layer = cfg["trace_layer"] if sys.stdout.isatty() else None
                print(routing_trace(model, out[0].tolist(), decode, cfg["trace_topk"], colour_layer))
            print("---------------")


def never_sample_padding(model, n_tokens):
    """Set the logits of ids n_tokens and above to -inf, so generate() never draws them: GPT-2 BPE's
    50257 tokens are padded to vocab_size 50304, and a padding id is no token the tokenizer decodes."""
    if model.config.vocab_size > n_tokens:
        padding = torch.arange(model.config.vocab_size, device=model.lm_head.weight.device) >= n_tokens
        model.lm_head.register_forward_hook(lambda module, inputs, logits: logits.masked_fill(padding, float("-inf")))


# background colours (xterm 256-colour codes) for experts 0, 1, ...; black text stays readable on all
EXPERT_COLOURS = [196, 46, 33, 226, 201, 51, 208, 141, 118, 247, 214, 39, 210, 157, 228, 183]


@torch.no_grad()
def routing_trace(model, ids, decode, topk, colour_layer=None):
    """Which experts each token of ids went to: a token x layer grid of expert ids (the top-1,
    or all top_k joined by '/'), then, given colour_layer, the text with each token on the
    colour of its top-1 expert in that layer. One forward pass over the last block_size tokens."""
    window = ids[-model.config.block_size:]
    _, _, aux = model(torch.tensor([window], device=next(model.parameters()).device))
    experts = torch.stack([r.topk_idx for r in aux["routing"]], dim=1).tolist()  # (T, L, k) best first
    offset = len(ids) - len(window)  # tokens before the last window are not traced
    tokens = [repr(decode([i])) for i in window]
    cells = [["/".join(map(str, e if topk else e[:1])) for e in layers] for layers in experts]
    tw, cw = max(5, *map(len, tokens)), max(len(c) for row in cells for c in row) + 2
    lines = [f"routing of the last {len(window)} of {len(ids)} tokens (block_size {model.config.block_size})"
             if offset else f"routing of the {len(ids)} tokens",
             f"{'pos':>5}  {'token':<{tw}}" + "".join(f"{f'L{i}':>{cw}}" for i in range(len(cells[0])))]
    for pos, (token, row) in enumerate(zip(tokens, cells), start=offset):
        lines.append(f"{pos:>5}  {token:<{tw}}" + "".join(f"{c:>{cw}}" for c in row))
    if colour_layer is not None:

        def paint(text, expert):  # a newline cannot be coloured: paint a mark, end the colour, then break
            colour = EXPERT_COLOURS[expert % len(EXPERT_COLOURS)]
            parts = text.replace("\n", "\u21b5\n").split("\n")
            return "\n".join(f"\x1b[30;48;5;{colour}m{part}\x1b[0m" if part else "" for part in parts)

        legend = " ".join(paint(f" {e} ", e) for e in range(model.config.n_experts))
        lines.append(f"layer {colour_layer}, top-1 expert: {legend}")
        lines.append("".join(paint(decode([i]), e[colour_layer][0]) for i, e in zip(window, experts)))
    return "\n".join(lines)


if __name__ == "__main__":
    run_script(main, sys.argv[1:])
