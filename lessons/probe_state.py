"""
Lesson 5: what the recurrent router's state h carries. A linear probe (softmax regression,
fitted on the first half of the tokens, scored on the second) reads three things from h_i
at each MoE layer i, and the same probe reads them from other vectors of the same tokens:

    targets   the current character, the previous character, the top-1 expert of layer i-1
    features  h_i (Eq. 5), x_i (what the router reads: ln_2 of the residual, Eq. 4's input),
              h_i of an untrained router of the same shape fed the same x_i, and random noise

It also prints the cross-layer numbers of analyze.py for the checkpoint (and a baseline):
the mutual information of consecutive layers' top-1 experts, the distinct top-1 paths,
and the GRU's mean update gate z_i (the share of h_{i-1} that layer i keeps, Eq. 3).

    python lessons/probe_state.py --ckpt=out-walk/rmoe --baseline=out-walk/smoe
"""

import os
import sys
from functools import partial

import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # the repository's modules
from analyze import route, token_windows  # noqa: E402
from configurator import fail, pyplot, run_script, script_settings  # noqa: E402
from model import GPT, MoE  # noqa: E402
from rmoe.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402
from rmoe.dataset import load_dataset  # noqa: E402
from rmoe.routing_stats import choice_mutual_info, distinct_paths  # noqa: E402

DEFAULTS = {"ckpt": "out-walk/rmoe", "baseline": "", "out": "out-lessons/probe_state", "tokens": 8192, "seed": 0}
FEATURES = ("h_i", "x_i", "untrained h_i", "noise")
TARGETS = ("current char", "previous char", "expert of layer i-1")


def load(folder, setting="ckpt"):
    path = os.path.join(folder, "ckpt.pt")
    try:
        ckpt = load_checkpoint(path, setting=setting)
        return ckpt, model_from_checkpoint(ckpt, path).eval()
    except ValueError as e:
        fail(e)


@torch.no_grad()
def collect(model, windows):
    """Run the tokens through the model; per MoE layer the router's input x_i (N, C) and state h_i (N, p),
    with route()'s top-1 experts and GRU update gates."""
    routers = [b.mlp.router for b in model.blocks if isinstance(b.mlp, MoE)]
    xs, hs = [[] for _ in routers], [[] for _ in routers]

    def keep(i, router, inputs, output):  # a forward hook; it returns None, so the output is unchanged
        xs[i].append(inputs[0])  # x_i (N, C)
        if output[1] is not None:  # a linear router passes no state
            hs[i].append(output[1])  # h_i (N, p)
    hooks = [r.register_forward_hook(partial(keep, i)) for i, r in enumerate(routers)]
    _, topk_idx, _, state = route(model, windows, batch_size=16)
    for hook in hooks:
        hook.remove()
    return [torch.cat(x) for x in xs], [torch.cat(h) for h in hs if h], [t[:, 0] for t in topk_idx], state


@torch.no_grad()
def untrained_states(config, xs, seed):
    """h_i of a freshly initialised router (projections, shared cell) fed the trained model's x_i."""
    torch.manual_seed(seed)
    fresh = GPT(config)
    h, out = None, []
    for block, x in zip(fresh.blocks, xs):
        _, h = block.mlp.router(x, h, fresh.router_core)  # Eqs. 4-5 with random weights
        out.append(h)
    return out


def probe(features, labels, train, test, steps=100):
    """Test accuracy of softmax regression features -> labels, fitted on the train rows (LBFGS, small L2)."""
    mean, std = features[train].mean(0), features[train].std(0) + 1e-6
    f = (features - mean) / std  # standardised: one step size suits every feature set
    n_classes = int(labels.max()) + 1
    w = torch.zeros(f.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(f[train] @ w + b, labels[train]) + 1e-4 * w.square().sum()
        loss.backward()
        return loss
    opt.step(closure)
    with torch.no_grad():
        return ((f[test] @ w + b).argmax(1) == labels[test]).float().mean().item()


def main(argv):
    cfg, _ = script_settings(sys.modules[__name__], argv)
    ckpt, model = load(cfg["ckpt"])
    if not any(isinstance(b.mlp, MoE) and b.mlp.router.passes_state for b in model.blocks):
        fail(f"{cfg['ckpt']} has a router without a state (router={model.config.router}); give an RMoE checkpoint")
    data_dir, _ = load_dataset(ckpt["train_config"]["dataset"])
    windows = token_windows(data_dir, "val", cfg["tokens"], model.config.block_size)  # (W, T + 1)
    W, T = windows.shape[0], windows.shape[1] - 1
    xs, hs, top1, state = collect(model, windows)
    rand = untrained_states(model.config, xs, cfg["seed"])
    noise = torch.randn(len(hs[0]), hs[0].shape[1], generator=torch.Generator().manual_seed(cfg["seed"]))
    chars = windows[:, :-1]  # (W, T) the input characters, in the order the tokens were routed
    prev = torch.cat([torch.zeros(W, 1, dtype=torch.long), chars[:, :-1]], 1)  # position 0 has none: left out
    has_prev = (torch.arange(T) > 0).repeat(W)  # (N,)
    first_half = torch.arange(W * T) < (W // 2) * T  # whole windows: no window is in both halves
    train, test = first_half & has_prev, ~first_half & has_prev

    results = []  # per layer: {target: {feature: accuracy}}
    for i in range(len(hs)):
        labels = {"current char": chars.flatten(), "previous char": prev.flatten()}
        if i:
            labels["expert of layer i-1"] = top1[i - 1]
        feats = dict(zip(FEATURES, (hs[i], xs[i], rand[i], noise)))
        row = {}
        for target, y in labels.items():
            majority = torch.bincount(y[train]).argmax()
            row[target] = {name: probe(f, y, train, test) for name, f in feats.items()}
            row[target]["chance"] = (y[test] == majority).float().mean().item()
        results.append(row)

    print(f"linear probes, {int(train.sum())} train / {int(test.sum())} test val tokens of {cfg['ckpt']}: "
          f"test accuracy of " + " / ".join(FEATURES) + " / chance (the majority class)")
    for target in TARGETS:
        print(f"  {target}")
        for i, row in enumerate(results):
            if target in row:
                print(f"    layer {i}: " + " / ".join(f"{row[target][n]:.3f}" for n in FEATURES + ("chance",)))
    cross_layer(model, top1, state, cfg)
    draw(results, cfg["out"], os.path.basename(os.path.normpath(cfg["ckpt"])))
    return results


def cross_layer(model, top1, state, cfg):
    """analyze.py's cross-layer numbers for this checkpoint and the baseline."""
    models = {os.path.basename(os.path.normpath(cfg["ckpt"])): (model, top1, state)}
    if cfg["baseline"]:
        ckpt, base = load(cfg["baseline"], "baseline")
        data_dir, _ = load_dataset(ckpt["train_config"]["dataset"])
        _, _, base_top1, base_state = collect(base, token_windows(data_dir, "val", cfg["tokens"],
                                                                  base.config.block_size))
        models[os.path.basename(os.path.normpath(cfg["baseline"]))] = (base, base_top1, base_state)
    for name, (m, t1, st) in models.items():
        mi = choice_mutual_info([t.unsqueeze(1) for t in t1], m.config.n_experts)
        steps = " / ".join(f"{mi[i, i + 1]:.2f}" for i in range(len(t1) - 1))
        paths = distinct_paths([t.unsqueeze(1) for t in t1])
        gates = " / ".join("-" if z is None else f"{z:.2f}" for z in st.get("update_gate", [])) or "no GRU"
        print(f"{name} ({m.config.router}): top-1 MI of layers i -> i+1, bits: {steps}; "
              f"{paths} distinct top-1 paths of {len(t1[0])} tokens; mean update gate z_i: {gates}")


def draw(results, folder, name):
    plt = pyplot("for the picture")
    if plt is None:
        return
    fig, axes = plt.subplots(1, len(TARGETS), figsize=(13, 3.3), sharey=True, layout="constrained")
    for ax, target in zip(axes, TARGETS):
        layers = [i for i, row in enumerate(results) if target in row]
        for j, feat in enumerate(FEATURES):
            ax.bar([i + (j - 1.5) * 0.2 for i in layers], [results[i][target][feat] for i in layers], 0.2, label=feat)
        ax.scatter(layers, [results[i][target]["chance"] for i in layers], marker="_", s=400, color="k",
                   label="chance", zorder=3)
        ax.set(title=f"probe for the {target}", xlabel="layer i", xticks=layers, ylim=(0, 1),
               xlim=(-0.5, len(results) - 0.5))
    axes[0].set_ylabel(f"test accuracy ({name})")
    axes[-1].legend(fontsize=7)
    os.makedirs(folder, exist_ok=True)
    fig.savefig(os.path.join(folder, "probe_state.png"), dpi=100)
    print(f"wrote {os.path.join(folder, 'probe_state.png')}")


if __name__ == "__main__":
    run_script(main, sys.argv[1:])
