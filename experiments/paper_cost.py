"""
What the paper's enwik8 runs cost on paper: FLOPs per token, FLOPs per run, and the GPU time
they imply. Prints the Markdown table of docs/experiments.md, "Cost on paper".

    python experiments/paper_cost.py

Nothing is measured: the model is built on PyTorch's "meta" device (shapes, no memory) and
the time is total FLOPs / (peak x utilisation). FLOPs per token are GPT.flops_per_token()
(model.py): 6 per active parameter use plus attention, forward and backward.
"""

import os
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from configurator import parse_args  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from rmoe.training import MODEL_KEYS, default_settings  # noqa: E402

ENWIK8_VOCAB = 256  # bytes
RUNS = [("medium, Tab. 1", ["config/enwik8_medium.py"]),
        ("small, Tab. 4", ["config/enwik8_small.py"])] + [
       (f"{n} layers, Fig. 2", ["config/enwik8_small.py", f"--n_layer={n}"]) for n in (12, 18, 24)]
ROUTERS = [("SMoE", ["--router=linear"]), ("RMoE", [])]
PEAKS = {"A100": 312e12, "H100 SXM": 989e12}  # dense bf16 FLOP/s, from the vendors' data sheets
UTILISATIONS = (0.3, 0.5)


def paper_model(argv):
    """(settings, GPT on the meta device) for train.py's command-line arguments, with enwik8's vocabulary."""
    settings, _ = parse_args(default_settings(), argv, "")
    with torch.device("meta"):  # parameter shapes only: a 24-layer model costs no memory or time
        model = GPT(GPTConfig(**{k: settings[k] for k in MODEL_KEYS}, vocab_size=ENWIK8_VOCAB))
    return settings, model


def minutes(flops, peak, utilisation):
    return flops / (peak * utilisation) / 60


def main():
    os.chdir(REPO)  # config paths are relative to the repository
    head = " | ".join(f"{gpu} at {u:.0%}" for gpu in PEAKS for u in UTILISATIONS)
    print(f"| run | router | non-embedding params | FLOPs per token | tokens | FLOPs per run | {head} |")
    print("|---" * (6 + len(PEAKS) * len(UTILISATIONS)) + "|")
    for name, argv in RUNS:
        for router, extra in ROUTERS:
            s, model = paper_model(argv + extra)
            tokens = s["max_iters"] * s["gradient_accumulation_steps"] * s["batch_size"] * s["block_size"]
            flops = model.flops_per_token() * tokens
            times = " | ".join(f"{minutes(flops, peak, u):.0f} min" for peak in PEAKS.values() for u in UTILISATIONS)
            print(f"| {name} | {router} | {model.num_non_embedding_params() / 1e6:.2f}M | "
                  f"{model.flops_per_token() / 1e6:.1f}M | {tokens / 1e9:.2f}B | {flops:.2e} | {times} |")


if __name__ == "__main__":
    main()
