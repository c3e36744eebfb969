"""
Lesson 2: top-k gating on a toy batch, one step at a time (Eq. 1 of the paper:
y = sum_n g_n(x) E_n(x), g = softmax -> top-k -> renormalise).

    python lessons/toy_gating.py
    python lessons/toy_gating.py --tokens=3 --n_experts=3 --top_k=1   # try other shapes

It builds one MoE layer of model.py (with a linear router, as SMoE), writes out what
MoE.forward does on a handful of tokens, and checks that the result is the same tensor
MoE.forward returns on the same weights.
"""

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository's modules
from configurator import run_script, script_settings  # noqa: E402
from model import MoE, GPTConfig, swiglu  # noqa: E402

DEFAULTS = {
    "tokens": 5,  # tokens in the toy batch
    "n_experts": 4,  # experts in the layer (N)
    "top_k": 2,  # experts per token (k)
    "n_embd": 8,  # width of a token vector
    "norm_topk": True,  # renormalise the k weights to sum to 1 (model.py's default)
    "seed": 0,  # random weights and tokens
}


def table(name, rows, fmt="{:7.3f}"):
    print(f"\n{name}")
    for t, row in enumerate(rows):
        print(f"  token {t}: " + " ".join(fmt.format(v) for v in row))


def main(argv):
    cfg, _ = script_settings(sys.modules[__name__], argv)
    torch.manual_seed(cfg["seed"])
    config = GPTConfig(n_embd=cfg["n_embd"], n_head=1, n_experts=cfg["n_experts"], top_k=cfg["top_k"],
                       mlp_hidden=2 * cfg["n_embd"], router="linear", norm_topk=cfg["norm_topk"], vocab_size=1)
    moe = MoE(config)
    with torch.no_grad():  # weights of std 0.5, not the init's 0.02, so the toy's numbers are readable
        for w in (moe.router.gate.weight, moe.w1, moe.w3, moe.w2):
            w.normal_(std=0.5)
    T, E, k = cfg["tokens"], cfg["n_experts"], cfg["top_k"]
    x = torch.randn(1, T, cfg["n_embd"])  # (B=1, T, C) what the block hands the layer: ln_2 of the residual

    with torch.no_grad():
        tokens = x.view(T, -1)  # (N, C) routing is per token
        # 1. one logit per expert: logits = G x (LinearRouter.forward in router.py)
        logits = tokens @ moe.router.gate.weight.T  # (N, E)
        table("1. router logits, one column per expert", logits)
        # 2. softmax over ALL experts (Router.score): each row sums to 1
        probs = F.softmax(logits, dim=-1)  # (N, E)
        table("2. softmax over all experts (rows sum to 1)", probs)
        # 3. keep the k largest: which experts, and their scores
        top_p, top_e = probs.topk(k, dim=-1)  # (N, k), (N, k); sorted, best first
        table(f"3. top-{k} experts (best first)", top_e, "{:7d}")
        table(f"   their softmax scores (sum < 1: the other {E - k} experts' share is dropped)", top_p)
        # 4. renormalise the k scores so they sum to 1 (norm_topk); these are the gate weights g
        weights = top_p / top_p.sum(-1, keepdim=True) if cfg["norm_topk"] else top_p
        table("4. gate weights g after renormalising" if cfg["norm_topk"] else "4. gate weights g (not renormalised)",
              weights)
        # 5. the N*k token-slots: slot (t, j) sends token t to expert top_e[t, j] with weight weights[t, j]
        print("\n5. token-slots per expert (MoE.dispatch sorts the slots by expert like this)")
        slots = {e: [(t, j) for t in range(T) for j in range(k) if top_e[t, j] == e] for e in range(E)}
        for e, its in slots.items():
            print(f"  expert {e}: " + (", ".join(f"token {t} (g={weights[t, j]:.3f})" for t, j in its) or "no tokens"))
        # 6. each expert runs once, on its own tokens only: a SwiGLU MLP with its weights w1[e], w3[e], w2[e]
        print("\n6. each expert's output E_e(x_t) on its tokens, first 4 numbers")
        y = torch.zeros_like(tokens)  # (N, C)
        for e, its in slots.items():
            if not its:
                continue  # an expert no token chose costs nothing
            rows = torch.tensor([t for t, _ in its])
            out = swiglu(tokens[rows], moe.w1[e], moe.w3[e], moe.w2[e])  # (n_e, C)
            for (t, j), o in zip(its, out):
                print(f"  expert {e}, token {t}: " + " ".join(f"{v:8.4f}" for v in o[:4]) + " ...")
                y[t] += weights[t, j] * o  # 7. add the slot's weighted output to its token
        table("7. combined output y_t = sum over its k slots of g * E(x_t), first 4 numbers", y[:, :4], "{:8.4f}")

        y_moe, _, routing = moe(x, None, None)  # the real layer: router, softmax, top-k, dispatch
    y_moe = y_moe.view(T, -1)
    same_choice = torch.equal(routing.topk_idx, top_e)
    diff = (y - y_moe).abs().max().item()
    print(f"\nMoE.forward on the same weights: same experts chosen: {same_choice}; "
          f"largest difference of the outputs: {diff:.3g}" + (" (identical)" if torch.equal(y, y_moe) else ""))
    return {"y": y, "y_moe": y_moe, "same_choice": same_choice}


if __name__ == "__main__":
    run_script(main, sys.argv[1:])
