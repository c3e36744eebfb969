"""
See how trained models route tokens, with the paper's analysis metrics (Qiu et al., ICLR 2025,
App. A.4: gate entropy, the balance of Tab. 8, cross-layer MI, expert similarity).

    python analyze.py --ckpts=out-smoe-small,out-rmoe-small
    python analyze.py --ckpts=out-smoe-small,out-rmoe-small --plots=out-analysis --json=out-analysis/routing.json

Each checkpoint (a train.py out_dir) reads the same windows of block_size tokens,
spread evenly over a split of its dataset, and the models are shown side by side,
per MoE layer:
- expert load: each expert's share of the token-slots, the largest share, dead
  experts and the coefficient of variation of the shares;
- gate entropy of each token's softmax over all experts (nats): mean and quartiles;
- the paper's inner and outer balance (Tab. 8);
- cross-layer dependence: the mutual information in bits between consecutive
  layers' top-1 experts, and how many distinct top-1 expert paths the tokens take
  through the depth; also the paper's mutual information (App. A.4.2), reported
  but not drawn, which does not measure dependence: per token it pairs expert n of one layer with
  expert n of another (arbitrary labels) and bins only E scores, so it is ln E
  whenever a token's E scores fall in E different bins, however they pair, and
  shuffling the tokens between layers leaves it as it was (its row beside it);
- expert similarity (App. A.4.3), beside its value for a freshly initialised layer;
- for a router that passes a state: the mean norm of the state h_i and, for the GRU,
  the mean update gate z_i, the share of h_{i-1} that layer i keeps (Eq. 3).
--json writes every number; --plots writes PNG pictures (needs matplotlib).
The metrics themselves live in rmoe/routing_stats.py, where train.py's eval log uses them too.
"""

import io
import json
import math
import os
import subprocess
import sys
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from rmoe.checkpoint import atomic_write, load_checkpoint, model_from_checkpoint
from configurator import fail, pyplot, run_script, script_settings
from model import MoE
from rmoe import REPO
from rmoe.dataset import load_dataset, read_split
from rmoe.routing_stats import (choice_mutual_info, distinct_paths, gate_entropy, gate_mutual_info, routing_by_layer,
                                routing_summary)
from router import ROUTERS, GRUCell

DEFAULTS = {
    "ckpts": "out-rmoe-small",  # checkpoint folders (train.py's out_dir), comma-separated, shown side by side
    "dataset": "",  # "" = each checkpoint's own dataset; or a name under data/, or a folder with the .bin files
    "split": "val",  # train | val
    "tokens": 8192,  # tokens routed through each model (rounded up to whole windows of block_size)
    "batch_size": 16,  # windows per forward pass
    "json": "",  # write every number to this file
    "plots": "",  # write PNG pictures into this folder (needs matplotlib)
    "device": "auto",  # auto | cpu | cuda | cuda:N | mps
    "threads": 1,  # CPU threads for torch; 0 = its default (one per core); 1 is fastest on a busy machine
}
ENTROPY_BINS = 20  # histogram of gate entropy from 0 to ln E
PLOTS = ("expert_load.png", "gate_entropy.png", "top1_mi.png")  # what --plots writes


def main(argv):
    cfg, device = script_settings(sys.modules[__name__], argv)
    if cfg["split"] not in ("train", "val"):
        fail(f"split={cfg['split']!r} must be train or val")
    for key in ("tokens", "batch_size"):
        if cfg[key] < 1:
            fail(f"{key}={cfg[key]} must be at least 1")
    folders = [f for f in cfg["ckpts"].split(",") if f]
    names = [os.path.basename(os.path.normpath(f)) for f in folders]
    if not folders or len(set(names)) < len(names):
        fail(f"ckpts={cfg['ckpts']!r} must name one or more checkpoint folders with different names")

    reports = {}
    outputs = (([cfg["json"]] if cfg["json"] else [])
               + ([os.path.join(cfg["plots"], name) for name in PLOTS] if cfg["plots"] else []))
    for path in outputs:  # checked before the models run: a README command must not change the repository
        if tracked_by_git(path):
            fail(f"{path} is a file of the repository (tracked by git); write into another folder, "
                 f"such as --plots=out-analysis or --json=out-analysis/routing.json")
    for name, folder in zip(names, folders):
        path = os.path.join(folder, "ckpt.pt")
        try:
            ckpt = load_checkpoint(path, device, setting="ckpts")
            model = model_from_checkpoint(ckpt, path)
        except ValueError as e:
            fail(e)
        if not model.config.is_moe:
            fail(f"{path} is a dense model (n_experts=0): it routes nothing; give MoE checkpoints")
        dataset = cfg["dataset"] or ckpt.get("train_config", {}).get("dataset", "")
        if not dataset:
            fail(f"{path} does not say what data it was trained on; pass --dataset")
        data_dir, vocab = load_dataset(dataset, master=True, ddp=False)
        if vocab != ckpt.get("vocab"):
            fail(f"the vocabulary of {data_dir} is not the one {path} was trained with; pass its --dataset")
        windows = token_windows(data_dir, cfg["split"], cfg["tokens"], model.config.block_size)
        reports[name] = analyze(model.to(device).eval(), windows.to(device), cfg["batch_size"])

    first = next(iter(reports.values()))
    print(f"{first['tokens']} {cfg['split']} tokens per model, {first['tokens'] // first['block_size']} windows "
          f"spread over the split")
    print(format_report(reports))
    if cfg["json"]:
        try:
            os.makedirs(os.path.dirname(cfg["json"]) or ".", exist_ok=True)
            atomic_write(cfg["json"], json.dumps({"split": cfg["split"], "models": reports}, indent=1).encode(),
                         "JSON")
        except OSError as e:
            fail(f"cannot create the folder of {cfg['json']}: {e.strerror}; pick another --json")
        except ValueError as e:
            fail(f"{e}, or pick another --json")
        print(f"wrote {cfg['json']}")
    if cfg["plots"]:
        write_plots(reports, cfg["plots"])


def token_windows(data_dir, split, n_tokens, block_size):
    """ceil(n_tokens / block_size) windows of block_size + 1 tokens (inputs and their next
    tokens), evenly spaced from the start to the end of the split: (n, block_size + 1)."""
    data = read_split(data_dir, split)
    if len(data) <= block_size:
        fail(f"{split}.bin of {data_dir} has {len(data)} tokens, fewer than a window of block_size + 1")
    starts = np.linspace(0, len(data) - block_size - 1, math.ceil(n_tokens / block_size)).astype(np.int64)
    return torch.from_numpy(np.stack([data[s:s + block_size + 1] for s in starts]).astype(np.int64))


@torch.no_grad()
def analyze(model, windows, batch_size):
    """Every number of the report for one model, as plain python values (JSON-ready)."""
    c = model.config
    probs, topk_idx, lm_loss, state = route(model, windows, batch_size)
    entropy = [gate_entropy(p) for p in probs]  # (N,) per layer
    entropy_hist = [torch.histc(h, bins=ENTROPY_BINS, min=0, max=math.log(c.n_experts)) / len(h) for h in entropy]
    quartiles = torch.tensor([0.25, 0.5, 0.75], device=windows.device)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        fresh = MoE(c)  # the model's own init, for the similarity's scale
    return {
        "router": c.router + (f" p={c.router_dim}" if "router_dim" in ROUTERS[c.router].settings else ""),
        "n_experts": c.n_experts, "top_k": c.top_k, "block_size": c.block_size,
        "tokens": len(probs[0]),
        "lm_loss": lm_loss,
        "layers": [routing_summary(p, t) for p, t in zip(probs, topk_idx)],
        "entropy_quartiles": [torch.quantile(h, quartiles).tolist() for h in entropy],
        "entropy_hist": [h.tolist() for h in entropy_hist],
        "gate_mi": gate_mutual_info(probs).tolist(),
        "gate_mi_shuffled": gate_mutual_info(shuffle_tokens(probs)).tolist(),
        "top1_mi_bits": choice_mutual_info(topk_idx, c.n_experts).tolist(),
        "distinct_paths": distinct_paths(topk_idx),
        "similarity": [expert_similarity(b.mlp.w1, b.mlp.w3, b.mlp.w2) for b in model.blocks],
        "similarity_init": expert_similarity(fresh.w1, fresh.w3, fresh.w2),
        **state,
    }


def shuffle_tokens(probs):
    """Each layer's tokens in its own random order: any dependence between layers is gone, what
    a cross-layer measure still reports then is its baseline."""
    generator = torch.Generator().manual_seed(0)
    return [p[torch.randperm(len(p), generator=generator).to(p.device)] for p in probs]


def route(model, windows, batch_size):
    """Run the windows through the model. Returns per MoE layer probs (N, E) and topk_idx (N, k)
    of every token, the mean lm loss, and, for a router that passes a state, each layer's mean
    state norm |h_i| (a hook on each layer's router) and, for the GRU, its mean update gate z_i
    (a hook on the shared cell, which runs once per layer, in order)."""
    routers = [b.mlp.router for b in model.blocks if isinstance(b.mlp, MoE)]
    norms = [[] for _ in routers]  # per layer: |h_i| per token, one tensor per batch
    gates = []  # mean z_i per token (None where h_{i-1} = 0), one entry per call of the GRU cell
    hooks = [r.register_forward_hook(partial(keep_state_norm, n)) for r, n in zip(routers, norms) if r.passes_state]
    cell = getattr(model.router_core, "cell", None)
    if isinstance(cell, GRUCell):
        hooks.append(cell.register_forward_hook(partial(keep_update_gate, gates)))
    routing, loss = [], 0.0
    for batch in windows.split(batch_size):
        _, _, aux = model(batch[:, :-1], batch[:, 1:].contiguous())  # the next tokens are the targets
        routing.append(aux["routing"])
        loss += aux["lm_loss"].item() * len(batch)
    for hook in hooks:
        hook.remove()
    layers = routing_by_layer(routing)
    probs, topk_idx = [r.probs for r in layers], [r.topk_idx for r in layers]
    state = {}
    if any(norms):
        state["state_norm"] = [torch.cat(n).mean().item() for n in norms]
        per_layer = [gates[i::len(layers)] for i in range(len(layers))]
        state["update_gate"] = [None if not g or g[0] is None else torch.cat(g).mean().item() for g in per_layer]
    return probs, topk_idx, loss / len(windows), state


def keep_state_norm(norms, router, inputs, output):
    """A forward hook on a router that passes a state: keep the norm of its h_i per token."""
    norms.append(output[1].norm(dim=-1))


def keep_update_gate(gates, cell, inputs, h):
    """A forward hook on the GRU cell: keep its mean update gate per token (Eq. 3). Where h_{i-1} = 0
    (the first layer, and every layer under no passing) z keeps nothing, so None."""
    x_p, h_prev = inputs
    gates.append(cell.gates(x_p, h_prev)[0].mean(-1) if h_prev.any() else None)


def expert_similarity(w1, w3, w2):
    """The paper's expert similarity (App. A.4.3) of one MoE layer. Each expert's weight matrices
    are averaged over the FFN dimension H, which here is dim 2 of the stacked w1 and w3 (E, C, H)
    and dim 1 of w2 (E, H, C) (the paper's Mixtral layout stores them transposed, hence its dims
    1 and 2); each mean is L2-normalised and the three are concatenated per expert. The mean of
    the E x E Gram matrix, diagonal included, is the result: each entry is a sum of 3 cosines,
    so identical experts give 3 and mutually orthogonal ones 3/E."""
    means = (w1.mean(2), w3.mean(2), w2.mean(1))  # each (E, C)
    v = torch.cat([F.normalize(m, dim=-1) for m in means], dim=-1)  # (E, 3C)
    return (v @ v.T).mean().item()


# -----------------------------------------------------------------------------
# the text report

def format_report(reports):
    """Side-by-side table: one column per model, one row per number (per layer where it has one)."""
    models = list(reports.values())
    sizes = {m["n_experts"] for m in models}
    E = sizes.pop() if len(sizes) == 1 else None  # the ideal values below need one expert count

    def section(title, cell, count=lambda m: len(m["layers"]), label="layer {}"):
        """A title, then a row per layer (or layer pair) with a cell per model that has it."""
        rows = [(title, None)]
        for i in range(max(count(m) for m in models)):
            rows.append((label.format(i, i + 1), [cell(m, i) if i < count(m) else "" for m in models]))
        return rows

    def layer(fmt):
        return lambda m, i: fmt.format(**m["layers"][i])

    rows = [("", list(reports)),
            ("router", [m["router"] for m in models]),
            ("experts, top-k", [f"{m['n_experts']}, top-{m['top_k']}" for m in models]),
            ("lm loss on these tokens", [f"{m['lm_loss']:.4f}" for m in models])]
    rows += section(f"% of token-slots per expert (even {100 / E:.1f})" if E else "% of token-slots per expert",
                    lambda m, i: " ".join(f"{100 * s:.0f}" for s in m["layers"][i]["load"]))
    rows += section(f"max share / CV / dead experts (even {1 / E:.3f} / 0 / 0)" if E else
                    "max share / CV / dead experts", layer("{max_share:.3f} / {load_cv:.2f} / {dead_experts}"))
    rows += section(f"gate entropy, nats: mean (quartiles); uniform ln {E} = {math.log(E):.2f}" if E else
                    "gate entropy, nats: mean (quartiles); uniform ln E",
                    lambda m, i: f"{m['layers'][i]['entropy']:.2f} ("
                                 + " ".join(f"{q:.2f}" for q in m["entropy_quartiles"][i]) + ")")
    rows += section("inner / outer balance (paper: SMoE 34.7 / 0.92, RMoE 2.02 / 0.57)",
                    layer("{inner_balance:.2f} / {outer_balance:.2f}"))
    rows += section("cross-layer dependence", lambda m, i: f"{m['top1_mi_bits'][i][i + 1]:.3f}",
                    count=lambda m: len(m["top1_mi_bits"]) - 1, label="top-1 MI, layers {} -> {}, bits")
    rows.append(("distinct top-1 paths", [f"{m['distinct_paths']} of {m['tokens']} tokens" for m in models]))
    rows.append(("paper's gate MI, nats (not a dependence measure)", [mean_range(m["gate_mi"]) for m in models]))
    rows.append(("the same, tokens shuffled", [mean_range(m["gate_mi_shuffled"]) for m in models]))
    rows += section("expert similarity (App. A.4.3; 3 = identical experts)", lambda m, i: f"{m['similarity'][i]:.3f}")
    rows.append(("the same at a fresh init", [f"{m['similarity_init']:.3f}" for m in models]))
    rows += section("recurrent state: mean |h_i| / mean update gate z_i (- : h_{i-1} = 0)",
                    lambda m, i: f"{m['state_norm'][i]:.2f} / "
                                 + ("-" if m["update_gate"][i] is None else f"{m['update_gate'][i]:.2f}"),
                    count=lambda m: len(m.get("state_norm", [])))
    width = max(len(label) for label, cells in rows if cells is not None) + 2
    col = max(len(cell) for _, cells in rows if cells for cell in cells) + 2
    return "\n".join(title if cells is None else f"  {title:<{width}}" + "".join(f"{c:>{col}}" for c in cells)
                     for title, cells in rows)


def mean_range(gate_mi):
    """Mean (min-max) of an (L, L) MI matrix over pairs of different layers."""
    mi = np.array(gate_mi)
    off = mi[~np.eye(len(mi), dtype=bool)]
    return f"{off.mean():.3f} ({off.min():.3f}-{off.max():.3f})" if len(off) else "-"


# -----------------------------------------------------------------------------
# pictures

def write_plots(reports, folder):
    """expert_load.png (layer x expert heat maps), gate_entropy.png (histograms per layer), and a
    layer x layer heat map of the top-1 expert MI (top1_mi.png): one panel per model. The paper's
    gate MI is in the report and the JSON but not drawn: it is not a dependence measure (the same
    with the tokens shuffled)."""
    plt = pyplot("to write pictures (the report above does not need it)")
    if plt is None:
        return
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        fail(f"cannot create {folder}: {e.strerror}; pick another --plots")
    names, models = list(reports), list(reports.values())
    titles = [f"{n} ({m['router']})" for n, m in zip(names, models)]
    pictures = {}  # file name -> PNG bytes

    def png(fig):
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        plt.close(fig)
        return buffer.getvalue()

    def heat_maps(mats, cbar, xlabel, ylabel, filename):
        vmax = max(a.max() for a in mats)  # one colour scale for all models
        fig, axes = plt.subplots(1, len(mats), figsize=(3.6 * len(mats) + 1, 3.2), squeeze=False,
                                 layout="constrained")
        for ax, a, title in zip(axes[0], mats, titles):
            im = ax.imshow(a, cmap="viridis", vmin=0, vmax=vmax, aspect="auto")
            for (y, x), v in np.ndenumerate(a):
                ax.text(x, y, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if v < 0.6 * vmax else "black")
            ax.set(title=title, xlabel=xlabel, ylabel=ylabel, xticks=range(a.shape[1]), yticks=range(a.shape[0]))
        fig.colorbar(im, ax=axes[0].tolist(), label=cbar)
        pictures[filename] = png(fig)

    heat_maps([np.array([layer["load"] for layer in m["layers"]]) for m in models], "share of token-slots",
              "expert", "layer", "expert_load.png")
    heat_maps([np.array(m["top1_mi_bits"]) for m in models], "MI of top-1 experts (bits)", "layer", "layer",
              "top1_mi.png")

    n_layers = max(len(m["layers"]) for m in models)
    fig, axes = plt.subplots(1, n_layers, figsize=(3 * n_layers, 2.8), sharey=True, squeeze=False,
                             layout="constrained")
    for i, ax in enumerate(axes[0]):
        for name, m in zip(names, models):
            if i < len(m["entropy_hist"]):
                edges = np.linspace(0, math.log(m["n_experts"]), ENTROPY_BINS + 1)
                ax.stairs(m["entropy_hist"][i], edges, label=name, linewidth=1.5)
        ax.set(title=f"layer {i}", xlabel="gate entropy (nats)")
    axes[0][0].set_ylabel("share of tokens")
    axes[0][-1].legend(fontsize=7)
    pictures["gate_entropy.png"] = png(fig)
    for filename in PLOTS:  # all drawn before any is written: a failed drawing replaces no picture
        try:
            atomic_write(os.path.join(folder, filename), pictures[filename], "picture")
        except ValueError as e:
            fail(f"{e}, or pick another --plots")
    print(f"wrote {', '.join(PLOTS)} to {folder}")


def tracked_by_git(path):
    """Whether git tracks path in this repository (False without git or outside a git checkout)."""
    try:
        result = subprocess.run(["git", "-C", REPO, "ls-files", "--error-unmatch", os.path.abspath(path)],
                                capture_output=True)
    except OSError:
        return False
    return result.returncode == 0


if __name__ == "__main__":
    run_script(main, sys.argv[1:])
