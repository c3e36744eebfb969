"""
Lesson 4: what a router learns. Routes val text through a trained character-level
checkpoint and shows, per layer, where each kind of character goes: spaces, newlines,
vowels, other lowercase letters, capitals, punctuation.

    python lessons/token_classes.py --ckpt=out-walk/rmoe
    python lessons/token_classes.py --ckpt=out-walk/smoe --out=out-lessons/classes-smoe

The picture has one panel per layer: a row per kind of character, a column per expert,
and in each cell the share of that kind's tokens that the expert is one of the top-k of
(a row sums to k = 200% with top-2; 100% in a cell: every such character goes to that expert).
"""

import os
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # the repository's modules
from analyze import route, token_windows  # noqa: E402
from configurator import fail, pyplot, run_script, script_settings  # noqa: E402
from rmoe.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402
from rmoe.dataset import load_dataset  # noqa: E402

DEFAULTS = {"ckpt": "out-walk/rmoe", "out": "out-lessons/token_classes", "tokens": 8192}
CLASSES = {  # the kind of a character; the first that matches wins
    "space": lambda c: c == " ",
    "newline": lambda c: c == "\n",
    "vowel": lambda c: c in "aeiou",
    "consonant": lambda c: c.islower(),
    "capital": lambda c: c.isupper(),
    "punctuation": lambda c: not c.isalnum() and not c.isspace(),
    "other": lambda c: True,  # digits, tabs, ...
}


def kind(char):
    return next(i for i, test in enumerate(CLASSES.values()) if test(char))


@torch.no_grad()
def class_routing(model, windows, vocab):
    """Per layer a (classes, E) matrix: the share of each kind's tokens that have the expert in their top-k."""
    probs, topk_idx, _, _ = route(model, windows, batch_size=16)  # per layer (N, E) and (N, k)
    chars = windows[:, :-1].flatten()  # (N,) the input character of each routed token, in route()'s order
    kinds = torch.tensor([kind(vocab[i]) for i in chars.tolist()])  # (N,)
    E, k = model.config.n_experts, model.config.top_k
    tables = []
    for idx in topk_idx:
        counts = torch.zeros(len(CLASSES), E)
        counts.index_put_((kinds.repeat_interleave(k), idx.flatten()), torch.ones(idx.numel()), accumulate=True)
        tables.append(counts / counts.sum(1, keepdim=True).clamp(min=1) * k)  # a row sums to k (or 0)
    return tables, torch.bincount(kinds, minlength=len(CLASSES))


def main(argv):
    cfg, _ = script_settings(sys.modules[__name__], argv)
    path = os.path.join(cfg["ckpt"], "ckpt.pt")
    try:
        ckpt = load_checkpoint(path, setting="ckpt")
        model = model_from_checkpoint(ckpt, path).eval()
    except ValueError as e:
        fail(e)
    vocab = ckpt.get("vocab")
    if not isinstance(vocab, (list, str)):  # a list of characters; "bytes" or None (BPE) are not
        fail(f"{path} is not a character-level model; this lesson reads characters")
    data_dir, _ = load_dataset(ckpt["train_config"]["dataset"])
    windows = token_windows(data_dir, "val", cfg["tokens"], model.config.block_size)
    tables, sizes = class_routing(model, windows, vocab)
    E, k = model.config.n_experts, model.config.top_k
    print(f"{int(sizes.sum())} val characters: " + ", ".join(f"{n} {s}" for n, s in zip(CLASSES, sizes.tolist())))
    print(f"per layer and kind: the expert most of its characters go to, and their share (even: {k / E:.0%})")
    print(f"  {'layer':<7}" + "".join(f"{n:>13}" for n in CLASSES))
    for i, t in enumerate(tables):
        share, expert = t.max(1)
        print(f"  {i:<7}" + "".join(f"{f'{e} ({s:.0%})':>13}" if n else f"{'-':>13}"
                                    for e, s, n in zip(expert.tolist(), share.tolist(), sizes.tolist())))
    draw(tables, sizes, cfg["out"], os.path.basename(os.path.normpath(cfg["ckpt"])))
    return tables


def draw(tables, sizes, folder, name):
    plt = pyplot("for the picture")
    if plt is None:
        return
    keep = [i for i, n in enumerate(sizes.tolist()) if n]  # kinds the text has
    labels = [list(CLASSES)[i] for i in keep]
    fig, axes = plt.subplots(1, len(tables), figsize=(3.3 * len(tables) + 1, 3.4), squeeze=False, layout="constrained")
    for i, (ax, t) in enumerate(zip(axes[0], tables)):
        t = t[keep]
        im = ax.imshow(t, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        for (y, x), v in zip(torch.cartesian_prod(*map(torch.arange, t.shape)).tolist(), t.flatten().tolist()):
            ax.text(x, y, f"{100 * v:.0f}", ha="center", va="center", fontsize=6, color="white" if v < 0.6 else "k")
        ax.set(title=f"{name}, layer {i}", xlabel="expert", xticks=range(t.shape[1]), yticks=range(len(labels)),
               yticklabels=labels if i == 0 else [])
    fig.colorbar(im, ax=axes[0].tolist(), label="share of the kind's tokens routed there")
    os.makedirs(folder, exist_ok=True)
    fig.savefig(os.path.join(folder, "token_classes.png"), dpi=100)
    print(f"wrote {os.path.join(folder, 'token_classes.png')}")


if __name__ == "__main__":
    run_script(main, sys.argv[1:])
