"""bench.py: the forced-uniform routing it offers, its rows on a tiny model, and a bad row."""

import re

import torch

from bench import round_robin_logits
from conftest import run
from model import GPTConfig, MoE
from router import slots_per_expert


def test_round_robin_routing_gives_every_expert_the_same_load_and_keeps_the_router_in_the_graph():
    torch.manual_seed(0)
    config = GPTConfig(n_embd=16, n_experts=4, top_k=2, mlp_hidden=8, router="linear")
    moe = MoE(config)
    moe.router.register_forward_hook(round_robin_logits(config.top_k))
    x = torch.randn(2, 10, 16)
    y, _, routing = moe(x, None, None)
    assert slots_per_expert(routing.topk_idx, 4).tolist() == [10, 10, 10, 10]  # 20 tokens x 2 slots / 4
    assert all(len(set(row)) == 2 for row in routing.topk_idx.tolist())  # two different experts per token
    y.sum().backward()
    assert moe.router.gate.weight.grad is not None  # the router's backward still runs, as in training


def test_unknown_row_is_a_one_line_error():
    result = run("bench.py", "--rows=layer,speed")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == ["error: rows='layer,speed': each row must be one of "
                                                 "layer, step, sample, profile"]


def test_every_row_runs_on_a_tiny_model_and_the_profile_adds_up(tmp_path):
    config = tmp_path / "tiny_rmoe.py"
    config.write_text("n_layer = 2\nn_head = 2\nn_embd = 16\nn_experts = 4\ntop_k = 2\nmlp_hidden = 8\n"
                      "router = 'gru'\nrouter_dim = 8\nblock_size = 16\nbatch_size = 2\n")
    result = run("bench.py", f"--config={config}", "--rounds=2", "--sample_tokens=20")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for row in ("MoE layer (4 experts top-2) / dense MLP", "training step RMoE / SMoE",
                "training step SMoE / dense", "sampling 20 tokens: without / with the KV cache"):
        [line] = [line for line in lines if line.startswith(row)]
        assert float(line[52:].split()[0].rstrip("x")) > 0  # the ratio column
    shares = lines[lines.index("where an RMoE training step's CPU time goes (3 steps, profiler self time):") + 1]
    percents = [int(p) for p in re.findall(r"(\d+)%", shares)]
    assert len(percents) == 6 and abs(sum(percents) - 100) <= 3  # six parts of one whole, up to rounding
    assert all(p > 0 for p in percents[:4])  # attention, experts, router and cell each got time
