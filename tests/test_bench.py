"""bench.py's tools: the forced-uniform routing it offers, and its row selection."""

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
