"""
Lesson 1: dense vs MoE at equal active parameters. Builds the model of each config file
(nothing is trained) and prints, side by side, what it holds and what one token uses.

    python lessons/dense_vs_moe.py
    python lessons/dense_vs_moe.py --configs=config/smoe_small.py --top_k=1   # settings apply to every config

"Active" parameters are the ones a token's forward pass touches: everything except the
experts the router did not pick (GPT.num_active_params in model.py). FLOPs per token are
GPT.flops_per_token: 6 per active weight use (forward 2, backward 4) plus attention.
"""

import os
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # the repository's modules
from configurator import parse_args, run_script, setting_comments  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from rmoe.training import MODEL_KEYS, TrainConfig, default_settings  # noqa: E402

DEFAULTS = {
    "configs": "config/dense_small.py,config/smoe_small.py,config/rmoe_small.py",  # comma-separated config files
    "vocab_size": 84,  # characters of shakespeare_char (its meta.pkl); the embedding's size
}


def count(model):
    """What the model holds and what one token uses, in parameters and FLOPs."""
    c = model.config
    experts = sum(p.numel() for b in model.blocks for name, p in b.mlp.named_parameters() if name in ("w1", "w3", "w2"))
    router = sum(p.numel() for n, p in model.named_parameters() if "router" in n)
    return {
        "feed-forward": f"{c.n_experts} experts x hidden {c.mlp_hidden}, top-{c.top_k}" if c.is_moe
        else f"dense MLP, hidden {c.mlp_hidden}",
        "router": c.router if c.is_moe else "-",
        "total params": model.num_params(),
        "expert (or MLP) params, all layers": experts,
        "router params, all layers": router,
        "active params per token": model.num_active_params(),
        "expert params a token uses": experts * c.top_k // c.n_experts if c.is_moe else experts,
        "training FLOPs per token": model.flops_per_token(),
    }


def main(argv):
    meanings = {**setting_comments(TrainConfig), **setting_comments(GPTConfig),  # train.py's, for every config
                **setting_comments(sys.modules[__name__], "DEFAULTS")}
    cfg, _ = parse_args({**DEFAULTS, **default_settings()}, argv, __doc__, help=meanings)
    files = [f for f in cfg["configs"].split(",") if f]
    overrides = [a for a in argv if a.startswith("--") and not a.startswith(("--configs=", "--vocab_size="))]
    columns = {}
    for path in files:
        settings, _ = parse_args(default_settings(), [os.path.join(REPO, path)] + overrides, "")
        with torch.device("meta"):  # shapes only: counting needs no memory and no time
            model = GPT(GPTConfig(**{k: settings[k] for k in MODEL_KEYS}, vocab_size=cfg["vocab_size"]))
        columns[os.path.basename(path)] = count(model)
    rows = next(iter(columns.values())).keys()
    width = max(map(len, rows)) + 2
    print(f"{'':<{width}}" + "".join(f"{name:>32}" for name in columns))
    for row in rows:
        print(f"{row:<{width}}" + "".join(f"{c[row]:>32,}" if isinstance(c[row], int) else f"{c[row]:>32}"
                                           for c in columns.values()))
    return columns


if __name__ == "__main__":
    run_script(main, sys.argv[1:])
