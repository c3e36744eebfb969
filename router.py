"""
Routers for the Mixture-of-Experts layers, and the losses that keep them balanced.

A router turns each token into one logit per expert, and its score function turns the
logits into gate scores (the softmax of Eq. 1 for every router here); the MoE layer
keeps the top-k scores. Two families live here:

- LinearRouter (SMoE) and MLPRouter (SMoE-MLP): independent per layer,
  logits = G_i x_i (Eq. 1). They ignore the router state h and pass it on.
- GRURouter and RNNRouter (RMoE, Qiu et al., ICLR 2025): each token carries a small
  state h through the depth of the network. At layer i,
      x'_i = Proj_i(x_i)                  (Eq. 4, per layer, bias-free, p dims)
      h_i  = Cell(x'_i, h_{i-1}), h_0 = 0 (Eq. 5, ONE cell shared by all layers)
      logits_i = G_i h_i                  (Eq. 6, per layer, bias-free)
  The state runs over depth, never over time: all tokens are routed in parallel.

The shared parts (the cell, and the projection under the S-proj ablation) are
owned by one RouterCore that the GPT holds and hands to every block, so each
weight appears once in the state_dict. The per-layer parts live in each block.

Adding a router is one class and one entry in ROUTERS: the class says what it needs
(see Router), and model.py and GPTConfig read that, never the router's name.

Ablations (config switches): router_passing='none' (NP: every layer starts
from h_0), 'detach' (h_{i-1} detached: forward information kept, recurrent
gradient cut), both applied by the MoE layer to any router that passes a state;
router_shared_proj (S-proj), router='mlp' (SMoE-MLP), router='rnn' (tanh RNN
cell instead of the GRU).

Losses: load_balance_loss (one formula, value top_k at perfect balance) and
z_loss, per layer; aux_losses averages them over the layers of a forward pass.
The routing statistics (the paper's analysis metrics) live in rmoe/routing_stats.py.
"""

import math
from collections import namedtuple

import torch
import torch.nn as nn
import torch.nn.functional as F

# One MoE layer's routing decisions, returned (never stored) for the losses and the logs.
Routing = namedtuple("Routing", "logits probs topk_idx")  # (N, E), (N, E) fp32 softmax, (N, k)


class GRUCell(nn.Module):
    """torch.nn.GRUCell written out (Eqs. 2-3 with biases; gate order r, z, n as in torch).

    Two matmuls per step: one for the input x' and one for the state h, each
    producing all three gates at once.
    """

    def __init__(self, dim):
        super().__init__()
        self.weight_ih = nn.Parameter(torch.empty(3 * dim, dim))
        self.weight_hh = nn.Parameter(torch.empty(3 * dim, dim))
        self.bias_ih = nn.Parameter(torch.empty(3 * dim))
        self.bias_hh = nn.Parameter(torch.empty(3 * dim))
        # same init as torch.nn.GRUCell: U(-1/sqrt(p), 1/sqrt(p)) for every weight and bias
        for w in self.parameters():
            nn.init.uniform_(w, -1 / math.sqrt(dim), 1 / math.sqrt(dim))

    def forward(self, x, h):
        z, n = self.gates(x, h)
        return (1 - z) * n + z * h  # (N, p)

    def gates(self, x, h):
        """The update gate z and the candidate state n of one step, each (N, p); analyze.py reads z."""
        gi = F.linear(x, self.weight_ih, self.bias_ih)  # (N, 3p) input part of r, z, n
        gh = F.linear(h, self.weight_hh, self.bias_hh)  # (N, 3p) state part of r, z, n
        i_r, i_z, i_n = gi.chunk(3, dim=-1)
        h_r, h_z, h_n = gh.chunk(3, dim=-1)
        r = torch.sigmoid(i_r + h_r)  # reset gate: how much of h enters the candidate
        z = torch.sigmoid(i_z + h_z)  # update gate: how much of h_{i-1} is kept
        n = torch.tanh(i_n + r * h_n)  # candidate state
        return z, n


class RNNCell(nn.Module):
    """torch.nn.RNNCell with tanh: h_i = tanh(W_ih x' + b_ih + W_hh h + b_hh)."""

    def __init__(self, dim):
        super().__init__()
        self.weight_ih = nn.Parameter(torch.empty(dim, dim))
        self.weight_hh = nn.Parameter(torch.empty(dim, dim))
        self.bias_ih = nn.Parameter(torch.empty(dim))
        self.bias_hh = nn.Parameter(torch.empty(dim))
        for w in self.parameters():
            nn.init.uniform_(w, -1 / math.sqrt(dim), 1 / math.sqrt(dim))

    def forward(self, x, h):
        return torch.tanh(F.linear(x, self.weight_ih, self.bias_ih) + F.linear(h, self.weight_hh, self.bias_hh))


class Router(nn.Module):
    """What every router declares, for model.py and GPTConfig to read:

    cell       the cell class the router shares with every layer (RouterCore holds one), or None
    passes_state   whether it reads h_{i-1} and returns h_i (router_passing applies to it)
    settings   the router_* settings it reads; a switch (a str or bool setting) it does not
               read must keep its default, a size it does not read is ignored
    score      its score function: logits (N, E) -> gate scores (N, E) in fp32, each row summing
               to 1, the top-k of which the MoE layer keeps

    forward(x, h, core) -> (logits (N, E), h): x (N, C) one row per token, h the state from the
    layer below (None at the first layer, or for a router that passes none), core the RouterCore.
    """
    cell = None
    passes_state = False
    settings = ()

    def score(self, logits):
        return F.softmax(logits.float(), dim=-1)  # (N, E) fp32 softmax over all experts (Eq. 1)


class RouterCore(nn.Module):
    """The router parts shared by all layers: the recurrent cell (Eq. 5), and under
    the S-proj ablation the one projection that replaces the per-layer Proj_i."""

    def __init__(self, config):
        super().__init__()
        self.cell = ROUTERS[config.router].cell(config.router_dim)
        self.proj = make_projection(config) if config.router_shared_proj else None


def make_projection(config):
    proj = nn.Linear(config.n_embd, config.router_dim, bias=False)
    nn.init.normal_(proj.weight, std=0.02)
    return proj


class LinearRouter(Router):
    """SMoE: logits = G_i x_i, one bias-free matrix per layer (Eq. 1)."""

    def __init__(self, config):
        super().__init__()
        self.gate = nn.Linear(config.n_embd, config.n_experts, bias=False)
        nn.init.normal_(self.gate.weight, std=0.02)

    def forward(self, x, h, core):
        return self.gate(x), h  # (N, E); the router state passes through untouched


class MLPRouter(Router):
    """SMoE-MLP: a two-layer GELU MLP per layer, x -> m -> E (the 'more parameters' control)."""
    settings = ("router_mlp_hidden",)

    def __init__(self, config):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, config.router_mlp_hidden, bias=False)
        self.gate = nn.Linear(config.router_mlp_hidden, config.n_experts, bias=False)
        nn.init.normal_(self.fc.weight, std=0.02)
        nn.init.normal_(self.gate.weight, std=0.02)

    def forward(self, x, h, core):
        return self.gate(F.gelu(self.fc(x))), h


class RecurrentRouter(Router):
    """RMoE: the per-layer parts Proj_i (Eq. 4) and G_i (Eq. 6); the cell comes from core."""
    passes_state = True
    settings = ("router_dim", "router_passing", "router_shared_proj")

    def __init__(self, config):
        super().__init__()
        self.proj = None if config.router_shared_proj else make_projection(config)
        self.gate = nn.Linear(config.router_dim, config.n_experts, bias=False)
        nn.init.normal_(self.gate.weight, std=0.02)

    def forward(self, x, h, core):
        proj = core.proj if self.proj is None else self.proj
        x_p = proj(x)  # (N, p)  Eq. 4: x'_i = Proj_i(x_i)
        if h is None:
            h = torch.zeros_like(x_p)  # h_0 = 0: the first layer, or every layer under NP
        h = core.cell(x_p, h)  # (N, p)  Eq. 5: h_i = Cell(x'_i, h_{i-1}) (GRU in the paper), not detached by default
        return self.gate(h), h  # (N, E)  Eq. 6: logits from h_i; the experts still see x_i


class GRURouter(RecurrentRouter):
    cell = GRUCell


class RNNRouter(RecurrentRouter):
    cell = RNNCell


ROUTERS = {"linear": LinearRouter, "mlp": MLPRouter, "gru": GRURouter, "rnn": RNNRouter}  # --router=NAME


def make_router(config):
    return ROUTERS[config.router](config)


# -----------------------------------------------------------------------------
# expert load and losses

def slots_per_expert(topk_idx, n_experts):
    """How many token-slots each expert got, (E,). Not torch.bincount: its output size depends on
    the data, which torch.compile cannot put in one graph."""
    idx = topk_idx.flatten()
    return torch.zeros(n_experts, dtype=torch.long, device=idx.device).index_add_(0, idx, torch.ones_like(idx))


def load_balance_loss(probs, topk_idx):
    """Switch/Mixtral load-balance loss for one layer.

        L_LB = E * sum_e f_e * P_e
        f_e  = (token-slots routed to expert e) / (tokens)   sums to k over e
        P_e  = mean over tokens of softmax probability of e  sums to 1 over e

    At perfect balance (f_e = k/E, P_e = 1/E) L_LB = k (the top_k); it grows as
    the probability mass and the assignments pile onto the same experts. f is
    counted (no gradient); the gradient reaches every expert's logit through P,
    also experts outside the top-k. probs: (N, E) fp32 softmax, topk_idx: (N, k).
    """
    n_tokens, n_experts = probs.shape
    f = slots_per_expert(topk_idx, n_experts).to(probs.dtype) / n_tokens  # (E,)
    P = probs.mean(dim=0)
    return n_experts * (f * P).sum()


def z_loss(logits):
    """Router z-loss (ST-MoE): mean squared log-partition; keeps logits small and softmax stable."""
    return torch.logsumexp(logits.float(), dim=-1).square().mean()


def aux_losses(routing):
    """(load-balance loss, z-loss) of a forward pass, each per MoE layer and averaged over layers.

    Per layer, unlike the official RMoE code, which computes the load-balance loss once over
    all layers' tokens concatenated: there one layer's overload can cancel another's underload.
    """
    if not routing:
        return torch.zeros(()), torch.zeros(())
    lb = torch.stack([load_balance_loss(r.probs, r.topk_idx) for r in routing]).mean()
    z = torch.stack([z_loss(r.logits) for r in routing]).mean()
    return lb, z
