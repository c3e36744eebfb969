"""
Lesson 6: routing over training, drawn from a run's record (out_dir/log.jsonl). Every
evaluation of train.py logs, per MoE layer, rmoe/routing_stats.routing_summary of the val
batches; this script plots four of its numbers over the steps, one line per layer, one row
of panels per run:

    largest expert share   of the token-slots (even: 1 / n_experts)
    gate entropy           mean over tokens, nats (uniform: ln n_experts)
    outer balance          median score mass on the chosen k (the paper's Tab. 8)
    logged lb              the load-balance loss of the training steps (its value at balance: top_k)

    python lessons/routing_curves.py --runs=out-walk/rmoe,out-walk/smoe
"""

import math
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # the repository's modules
from configurator import fail, pyplot, run_script, script_settings  # noqa: E402
from rmoe.checkpoint import read_record  # noqa: E402

DEFAULTS = {"runs": "out-walk/rmoe,out-walk/smoe", "out": "out-lessons/routing_curves"}
PANELS = {"max_share": "largest expert share", "entropy": "gate entropy (nats)", "outer_balance": "outer balance"}


def curves(record):
    """{number: per layer a list of (step, value)} from the eval records; lb as (step, value) from the train ones."""
    evals = [r for r in record if r["kind"] == "eval" and r.get("routing")]
    out = {key: [[(r["step"], r["routing"][i][key]) for r in evals] for i in range(len(evals[0]["routing"]))]
           for key in PANELS}
    out["lb_loss"] = [(r["step"], r["lb_loss"]) for r in record if r["kind"] == "train"]
    out["n_experts"] = len(evals[0]["routing"][0]["load"])
    return out


def main(argv):
    cfg, _ = script_settings(sys.modules[__name__], argv)
    runs = {}
    for folder in [f for f in cfg["runs"].split(",") if f]:
        record = read_record(folder)
        if not any(r["kind"] == "eval" and r.get("routing") for r in record):
            fail(f"{folder}/log.jsonl has no evaluation with routing; give a train.py out_dir of an MoE run")
        runs[os.path.basename(os.path.normpath(folder))] = curves(record)
    for name, c in runs.items():
        first, last = c["max_share"][0][0][0], c["max_share"][0][-1][0]
        print(f"{name}: steps {first} -> {last}, per layer")
        for key, label in PANELS.items():
            print(f"  {label:<22}" + "  ".join(f"{layer[0][1]:.3f} -> {layer[-1][1]:.3f}" for layer in c[key]))
        print(f"  {'logged lb':<22}{c['lb_loss'][0][1]:.3f} -> {c['lb_loss'][-1][1]:.3f}")
    draw(runs, cfg["out"])
    return runs


def draw(runs, folder):
    plt = pyplot("for the picture")
    if plt is None:
        return
    fig, axes = plt.subplots(len(runs), len(PANELS) + 1, figsize=(14, 2.8 * len(runs)), squeeze=False,
                             layout="constrained")
    for row, (name, c) in zip(axes, runs.items()):
        for ax, (key, label) in zip(row, PANELS.items()):
            for i, layer in enumerate(c[key]):
                ax.plot(*zip(*layer), marker=".", label=f"layer {i}")
            ax.set(title=f"{name}: {label}", xlabel="step")
            ax.ticklabel_format(axis="y", useOffset=False)  # plain numbers, even when a curve barely moves
        row[0].axhline(1 / c["n_experts"], color="grey", linestyle="--", linewidth=1)  # even load
        row[1].axhline(math.log(c["n_experts"]), color="grey", linestyle="--", linewidth=1)  # uniform gates
        row[-1].plot(*zip(*c["lb_loss"]))
        row[-1].set(title=f"{name}: logged lb", xlabel="step")
        row[-1].ticklabel_format(axis="y", useOffset=False)
        row[0].legend(fontsize=7)
    os.makedirs(folder, exist_ok=True)
    fig.savefig(os.path.join(folder, "routing_curves.png"), dpi=100)
    print(f"wrote {os.path.join(folder, 'routing_curves.png')}")


if __name__ == "__main__":
    run_script(main, sys.argv[1:])
