"""The routing metrics on hand-made routing with a known answer, analyze.py end to end, and
sample.py's routing trace."""

import math

import numpy as np
import pytest
import torch

from router import (choice_mutual_info, contingency, distinct_paths, gate_mutual_info, median, mutual_info,
                    routing_summary)


def test_uniform_gates_have_entropy_ln_e_and_balanced_load():
    E, N = 8, 64
    probs = torch.full((N, E), 1 / E)
    topk_idx = torch.arange(2 * N).view(N, 2) % E  # every expert gets N*2/E slots
    s = routing_summary(probs, topk_idx)
    assert s["entropy"] == pytest.approx(math.log(E))
    assert s["load"] == [1 / E] * E and s["max_share"] == 1 / E
    assert s["load_cv"] == 0 and s["dead_experts"] == 0
    assert s["inner_balance"] == 1 and s["outer_balance"] == pytest.approx(2 / E)


def test_one_hot_router_has_outer_balance_1_and_zero_entropy():
    E, N = 4, 10
    choice = torch.arange(N) % 2  # only experts 0 and 1 are ever chosen
    probs = torch.nn.functional.one_hot(choice, E).float()
    topk_idx = probs.topk(2, dim=-1).indices
    s = routing_summary(probs, topk_idx)
    assert s["outer_balance"] == 1 and s["entropy"] == 0
    assert s["inner_balance"] == math.inf  # the second choice has no weight at all


def test_load_and_balance_by_hand():
    # 3 tokens, top-2 of 4 experts: slots 0,1 | 0,2 | 0,1 -> expert 0 has 3 of 6 slots, 1 two, 2 one, 3 none
    topk_idx = torch.tensor([[0, 1], [0, 2], [0, 1]])
    probs = torch.tensor([[0.6, 0.3, 0.1, 0.0], [0.5, 0.1, 0.4, 0.0], [0.8, 0.1, 0.05, 0.05]])
    s = routing_summary(probs, topk_idx)
    assert s["load"] == pytest.approx([3 / 6, 2 / 6, 1 / 6, 0])
    assert s["max_share"] == pytest.approx(0.5) and s["dead_experts"] == 1
    shares = np.array([3, 2, 1, 0]) / 6
    assert s["load_cv"] == pytest.approx(shares.std() / shares.mean(), rel=1e-6)
    # top-1 / top-2 ratios 2, 1.25, 8 -> median 2; top-2 masses 0.9, 0.9, 0.9
    assert s["inner_balance"] == pytest.approx(2.0) and s["outer_balance"] == pytest.approx(0.9)
    assert median(torch.tensor([10.0, 1.0, 3.0, 2.0])) == 2.5  # numpy's median: the two middle values' mean


def test_one_expert_has_no_inner_balance():
    s = routing_summary(torch.ones(5, 1), torch.zeros(5, 1, dtype=torch.long))
    assert math.isnan(s["inner_balance"]) and s["outer_balance"] == 1 and s["load"] == [1.0]


def test_mutual_info_equals_a_hand_computation():
    # labels a = 0 0 0 1, b = 0 0 1 1: p(0,0) = 1/2, p(0,1) = 1/4, p(1,1) = 1/4; p_a = (3/4, 1/4), p_b = (1/2, 1/2)
    counts = contingency(torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 1, 1]), 2)
    assert counts.tolist() == [[2, 1], [0, 1]]
    by_hand = 0.5 * math.log(0.5 / (0.75 * 0.5)) + 0.25 * math.log(0.25 / (0.75 * 0.5)) \
        + 0.25 * math.log(0.25 / (0.25 * 0.5))
    assert mutual_info(counts).item() == pytest.approx(by_hand)


def test_identical_choices_give_mi_equal_to_the_choice_entropy():
    first = torch.tensor([0, 0, 0, 1] * 50)  # p = 3/4, 1/4: entropy 0.811 bits
    topk_idx = [torch.stack([first, (first + 1) % 4], 1)] * 3  # the same choice in every layer
    entropy_bits = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert choice_mutual_info(topk_idx, 4).flatten().tolist() == pytest.approx([entropy_bits] * 9, rel=1e-5)
    assert distinct_paths(topk_idx) == 2


def test_independent_uniform_choices_give_about_zero_mi():
    torch.manual_seed(0)
    N, E = 20000, 8
    topk_idx = [torch.randint(E, (N, 2)) for _ in range(3)]
    mi = choice_mutual_info(topk_idx, E)
    assert mi.diag() == pytest.approx(torch.full((3,), 3.0), abs=0.01)  # each layer's choice: log2 8 bits
    off_diagonal = mi[~torch.eye(3, dtype=torch.bool)]
    assert (off_diagonal >= 0).all() and (off_diagonal < 0.01).all()  # sampling bias (E-1)^2 / (2 N ln 2) = 0.002
    assert distinct_paths(topk_idx) == pytest.approx(E ** 3, abs=5)  # 20000 draws hit nearly all 512 paths
    # exactly independent by construction: every pair of (layer 0, layer 1) choices equally often
    a, b = torch.arange(E * E) % E, torch.arange(E * E) // E
    assert choice_mutual_info([a[:, None], b[:, None]], E)[0, 1].item() == pytest.approx(0, abs=1e-7)


def test_gate_bins_are_numpys_digitize():
    g = torch.cat([torch.rand(1000), torch.linspace(0, 1, 100), torch.tensor([0.0, 1.0])])
    edges = np.linspace(0, 1, 100)
    ours = torch.bucketize(g, torch.tensor(edges, dtype=torch.float32), right=True)
    assert ours.tolist() == np.digitize(g.numpy(), edges.astype(np.float32)).tolist()


def test_gate_mutual_info_follows_the_papers_recipe():
    # per token, expert n's binned scores in two layers are one sample: 4 samples per token
    a = torch.tensor([[0.5, 0.5, 0.0, 0.0]])  # bins 50, 50, 1, 1
    same = a.clone()
    crossed = torch.tensor([[0.5, 0.0, 0.5, 0.0]])  # bins 50, 1, 50, 1: independent of a's
    uniform = torch.full((1, 4), 0.25)  # one bin for all experts: no information
    mi = gate_mutual_info([a, same, crossed, uniform])
    assert mi[0, 1] == pytest.approx(math.log(2)) and mi[0, 0] == pytest.approx(math.log(2))
    assert mi[0, 2] == pytest.approx(0, abs=1e-7) and mi[0, 3] == pytest.approx(0, abs=1e-7)
    assert torch.equal(mi, mi.T)
    # averaged over tokens: a second token with identical layers but 4 distinct bins gives ln 4
    spread = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    two_tokens = gate_mutual_info([torch.cat([a, spread]), torch.cat([crossed, spread])])
    assert two_tokens[0, 1] == pytest.approx((0 + math.log(4)) / 2)
