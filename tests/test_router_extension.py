"""Adding a router is one class and one entry in router.ROUTERS: the two routers below are
defined here, in the test, and train, trace and analyze with nothing else changed. One owns
its gate (sigmoid scores, as DeepSeek-V3 gates); the other passes a state up the depth
without the shared cell (the previous layer's gate scores)."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import analyze
import sample
from conftest import train_here
from model import GPT, GPTConfig
from rmoe.checkpoint import load_checkpoint, model_from_checkpoint
from rmoe.dataset import load_dataset, tokenizer
from router import ROUTERS, Router


class SigmoidRouter(Router):
    """Independent sigmoid affinities per expert. Dividing them by their sum keeps the top-k and the
    renormalised top-k weights of sigmoid gating, and gives scores that sum to 1 as the losses expect."""

    def __init__(self, config):
        super().__init__()
        self.gate = nn.Linear(config.n_embd, config.n_experts, bias=False)

    def forward(self, x, h, core):
        return self.gate(x), h

    def score(self, logits):
        s = torch.sigmoid(logits.float())  # (N, E)
        return s / s.sum(-1, keepdim=True)


class ScoresUpRouter(Router):
    """logits_i = G_i x_i + M_i s_{i-1}: each layer sees the gate scores s_{i-1} of the layer below."""
    passes_state = True
    settings = ("router_passing",)

    def __init__(self, config):
        super().__init__()
        self.gate = nn.Linear(config.n_embd, config.n_experts, bias=False)
        self.mix = nn.Linear(config.n_experts, config.n_experts, bias=False)

    def forward(self, x, h, core):
        logits = self.gate(x) + (0 if h is None else self.mix(h))  # (N, E)
        return logits, F.softmax(logits.float(), dim=-1).to(x.dtype)  # the state this layer passes up


@pytest.fixture
def new_routers(monkeypatch):
    monkeypatch.setitem(ROUTERS, "sigmoid", SigmoidRouter)
    monkeypatch.setitem(ROUTERS, "scores_up", ScoresUpRouter)


def tiny_config(**overrides):
    return GPTConfig(**{"n_layer": 3, "n_head": 2, "n_embd": 32, "n_experts": 4, "top_k": 2, "mlp_hidden": 32,
                        "block_size": 16, "vocab_size": 40, **overrides})


def routing(model, idx):
    return model(idx)[2]["routing"]


def test_a_router_owns_its_score_function(new_routers):
    torch.manual_seed(0)
    model = GPT(tiny_config(router="sigmoid"))
    for r in routing(model, torch.randint(0, 40, (2, 16))):
        s = torch.sigmoid(r.logits.float())
        assert torch.allclose(r.probs, s / s.sum(-1, keepdim=True))  # not a softmax
        assert torch.equal(r.topk_idx, s.topk(2, dim=-1).indices)  # the top-k of the sigmoid affinities


def test_a_state_passed_without_a_cell_reaches_the_next_layer_as_router_passing_says(new_routers):
    """The MoE layer applies router_passing to any router that passes a state: layer 1's router
    receives layer 0's state (full), the same without its gradient (detach), or h_0 (none)."""
    idx = torch.randint(0, 40, (2, 16), generator=torch.Generator().manual_seed(1))
    for passing in ("full", "detach", "none"):
        torch.manual_seed(0)
        model = GPT(tiny_config(router="scores_up", router_passing=passing))
        received = []
        model.blocks[1].mlp.router.register_forward_pre_hook(lambda router, args: received.append(args[1]))
        layers = routing(model, idx)
        h = received[0]
        if passing == "none":
            assert h is None
        else:  # layer 0's scores, which its top-k came from
            assert torch.allclose(h, F.softmax(layers[0].logits.float(), -1)) and h.requires_grad == (passing == "full")
    assert model.router_core is None  # no shared cell was asked for


def test_the_settings_a_router_declares_are_the_ones_it_accepts(new_routers):
    tiny_config(router="scores_up", router_passing="detach")  # declared: accepted
    with pytest.raises(ValueError, match="router_passing='none' does not apply to router='sigmoid'"):
        tiny_config(router="sigmoid", router_passing="none")
    with pytest.raises(ValueError, match="router_shared_proj=True does not apply to router='scores_up'"):
        tiny_config(router="scores_up", router_shared_proj=True)


@pytest.mark.parametrize("name", ["sigmoid", "scores_up"])
def test_a_new_router_trains_traces_and_analyzes(new_routers, name, tiny_data, tmp_path):
    train_here(tiny_data, tmp_path, f"--router={name}", "--max_iters=3", "--eval_interval=3")
    path = str(tmp_path / "ckpt.pt")
    ckpt = load_checkpoint(path, for_resume=True)
    assert ckpt["iter_num"] == 3 and ckpt["model_config"]["router"] == name
    model = model_from_checkpoint(ckpt, path).eval()
    assert type(model.blocks[0].mlp.router) is ROUTERS[name]

    encode, decode = tokenizer(ckpt["vocab"])
    ids = encode("KING:\nthe king")
    trace = sample.routing_trace(model, ids, decode, topk=True)
    layers = routing(model, torch.tensor([ids]))
    expected = [[r.topk_idx[t].tolist() for r in layers] for t in range(len(ids))]  # token -> layer -> k experts
    rows = [line.split()[-2:] for line in trace.splitlines()[2:]]  # the last cells of a row: one per layer
    assert [[[int(i) for i in cell.split("/")] for cell in row] for row in rows] == expected

    data_dir, _ = load_dataset(tiny_data)
    report = analyze.analyze(model, analyze.token_windows(data_dir, "val", 64, 32), batch_size=2)
    assert len(report["layers"]) == 2 and all(sum(s["load"]) == pytest.approx(1) for s in report["layers"])
    if name == "scores_up":  # the state of any router that passes one: here softmax rows, norm in (1/2, 1]
        assert all(0.5 <= n <= 1 for n in report["state_norm"]) and report["update_gate"] == [None, None]
    else:
        assert "state_norm" not in report
    assert np.isfinite(report["lm_loss"])
