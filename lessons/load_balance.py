"""
Lesson 3: load balancing. Two questions, one script:

1. Why does an untrained router send about half the token-slots of a layer to one expert
   while its gates look uniform? (a fresh model, one batch of val tokens, no training)
2. What does the load-balance loss do? The same run (same seed, data order and init) with
   the loss on (--lb_loss_coef=0.01, the paper's weight) and off (0), then each expert's
   share of the token-slots side by side, and the logged lb next to its value at perfect balance, top_k.

    python lessons/load_balance.py
    python lessons/load_balance.py --steps=500 --out=out-lessons/lb500   # longer runs, a new folder

Any other --key=value goes to both train.py runs (for example --router=linear for SMoE).
Finished runs in --out are reused, so a second call only redraws; unfinished ones resume.
"""

import os
import subprocess
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # the repository's modules
from configurator import fail, parse_args, pyplot, run_script, script_settings  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from rmoe.checkpoint import read_record  # noqa: E402
from rmoe.dataset import get_batch, load_dataset, read_split, vocab_size  # noqa: E402
from rmoe.routing_stats import gate_entropy, routing_summary  # noqa: E402
from rmoe.training import MODEL_KEYS, default_settings  # noqa: E402

DEFAULTS = {
    "out": "out-lessons/load_balance",  # folder of the two runs and the picture
    "config": "config/rmoe_small.py",  # the training config both runs start from
    "steps": 300,  # training steps of each run
}
RUNS = {"lb on": "--lb_loss_coef=0.01", "lb off": "--lb_loss_coef=0"}


def split_argv(argv):
    """(this script's settings, the arguments for train.py)."""
    mine = [a for a in argv if a.split("=")[0].lstrip("-") in DEFAULTS or a in ("-h", "--help")]
    cfg, _ = script_settings(sys.modules[__name__], mine)
    return cfg, [a for a in argv if a not in mine]


@torch.no_grad()
def untrained_routing(cfg, train_args):
    """Part 1: a freshly initialised model (the one train.py starts from) routes one batch of val tokens."""
    settings, _ = parse_args(default_settings(), [os.path.join(REPO, cfg["config"])] + train_args, "")
    data_dir, vocab = load_dataset(settings["dataset"])
    torch.manual_seed(settings["seed"])
    model = GPT(GPTConfig(**{k: settings[k] for k in MODEL_KEYS}, vocab_size=vocab_size(vocab))).eval()
    generator = torch.Generator().manual_seed(0)
    x, y = get_batch(read_split(data_dir, "val"), model.config.block_size, settings["batch_size"], generator, "cpu")
    _, _, aux = model(x, y)
    E, k = model.config.n_experts, model.config.top_k
    print(f"1. an untrained {settings['router']} router on {x.numel()} val tokens (step 0)")
    print(f"   layer | gate entropy (uniform ln {E} = {torch.log(torch.tensor(E)).item():.3f}) | largest |logit| |"
          f" logits: spread of the token-mean between experts / spread between tokens | largest share of slots")
    for i, r in enumerate(aux["routing"]):
        shared = r.logits.mean(0)  # (E,) the part of the logits every token has in common
        between_experts = shared.std().item()  # how much the common part favours some experts
        between_tokens = (r.logits - shared).std(0).mean().item()  # how much a token's own part moves them
        s = routing_summary(r.probs, r.topk_idx)
        print(f"   {i:5d} | {gate_entropy(r.probs).mean():.3f} | {r.logits.abs().max():.4f} | "
              f"{between_experts:.4f} / {between_tokens:.4f} | "
              f"{s['max_share']:.3f} (expert {s['load'].index(s['max_share'])})")
    print(f"   lb loss of this batch: {aux['lb_loss']:.3f} (top_k = {k} at perfect balance)")
    return k


def train_runs(cfg, train_args):
    """Part 2: train.py once per entry of RUNS, in parallel (one CPU thread each); finished runs are kept."""
    jobs = {}
    for name, coef in RUNS.items():
        out_dir = os.path.join(cfg["out"], name.replace(" ", "-"))
        record = read_record(out_dir)
        if any(r["kind"] == "end" for r in record):
            continue  # finished before: reuse it
        resume = ["--init_from=resume"] if os.path.exists(os.path.join(out_dir, "ckpt.pt")) else []
        cmd = [sys.executable, "train.py", cfg["config"], f"--out_dir={out_dir}", f"--max_iters={cfg['steps']}",
               f"--lr_decay_iters={cfg['steps']}", f"--eval_interval={max(1, cfg['steps'] // 6)}", *train_args,
               coef, *resume]
        os.makedirs(out_dir, exist_ok=True)
        print(f"training '{name}': {' '.join(cmd[1:])}  (log: {out_dir}/train.log)", flush=True)
        log = open(os.path.join(out_dir, "train.log"), "a")
        jobs[name] = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                      env={**os.environ, "OMP_NUM_THREADS": "1"})
    for name, job in jobs.items():
        if job.wait():
            fail(f"the '{name}' run failed; see {os.path.join(cfg['out'], name.replace(' ', '-'), 'train.log')}")
    return {name: read_record(os.path.join(cfg["out"], name.replace(" ", "-"))) for name in RUNS}


def compare(records, folder, top_k):
    """Part 2's table and picture: each expert's share at the last evaluation, and lb over the steps."""
    last = {name: [r for r in rec if r["kind"] == "eval"][-1] for name, rec in records.items()}
    step = next(iter(last.values()))["step"]
    print(f"\n2. the same run with the load-balance loss on and off, at step {step} (val batches)")
    print("   layer | " + " | ".join(f"{n}: largest share / smallest / experts under 1%" for n in records))
    for i in range(len(next(iter(last.values()))["routing"])):
        cells = []
        for name in records:
            load = last[name]["routing"][i]["load"]
            cells.append(f"{max(load):.3f} / {min(load):.3f} / {sum(s < 0.01 for s in load)}")
        print(f"   {i:5d} | " + " | ".join(cells))
    for name, rec in records.items():
        lb = [r["lb_loss"] for r in rec if r["kind"] == "train"]
        print(f"   {name}: val loss {last[name]['val_loss']:.4f}; logged lb first {lb[0]:.3f}, last {lb[-1]:.3f}")
    draw(records, last, folder, top_k)
    return last


def draw(records, last, folder, top_k):
    plt = pyplot("for the picture")
    if plt is None:
        return
    loads = {n: torch.tensor([layer["load"] for layer in e["routing"]]) for n, e in last.items()}
    vmax = max(v.max().item() for v in loads.values())
    fig, axes = plt.subplots(1, len(loads) + 1, figsize=(13, 3.4), layout="constrained")
    for ax, (name, load) in zip(axes, loads.items()):
        im = ax.imshow(load, cmap="viridis", vmin=0, vmax=vmax, aspect="auto")
        for (y, x), v in zip(torch.cartesian_prod(*map(torch.arange, load.shape)).tolist(), load.flatten().tolist()):
            ax.text(x, y, f"{100 * v:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if v < 0.6 * vmax else "k")
        ax.set(title=f"{name}: % of token-slots", xlabel="expert", ylabel="layer",
               xticks=range(load.shape[1]), yticks=range(load.shape[0]))
    fig.colorbar(im, ax=axes[:-1].tolist())
    ax = axes[-1]
    for name, rec in records.items():
        train = [r for r in rec if r["kind"] == "train"]
        ax.plot([r["step"] for r in train], [r["lb_loss"] for r in train], label=name)
    ax.axhline(top_k, color="grey", linestyle="--", label=f"value at balance: top_k = {top_k}")
    ax.set(title="logged lb (mean over layers)", xlabel="step")
    ax.legend(fontsize=7)
    os.makedirs(folder, exist_ok=True)
    fig.savefig(os.path.join(folder, "load_balance.png"), dpi=100)
    print(f"   wrote {os.path.join(folder, 'load_balance.png')}")


def main(argv):
    cfg, train_args = split_argv(argv)
    top_k = untrained_routing(cfg, train_args)
    records = train_runs(cfg, train_args)
    return compare(records, cfg["out"], top_k)


if __name__ == "__main__":
    run_script(main, sys.argv[1:])
