"""
Routers for the Mixture-of-Experts layers, and the losses that keep them balanced.

A router turns each token into one logit per expert. Two families live here:

- LinearRouter (SMoE) and MLPRouter (SMoE-MLP): independent per layer,
  logits = G_i x_i (Eq. 1). They ignore the router state h and pass it on.
- RecurrentRouter (RMoE, Qiu et al., ICLR 2025): each token carries a small
  state h through the depth of the network. At layer i,
      x'_i = Proj_i(x_i)                  (Eq. 4, per layer, bias-free, p dims)
      h_i  = Cell(x'_i, h_{i-1}), h_0 = 0 (Eq. 5, ONE cell shared by all layers)
      logits_i = G_i h_i                  (Eq. 6, per layer, bias-free)
  The state runs over depth, never over time: all tokens are routed in parallel.

The shared parts (the cell, and the projection under the S-proj ablation) are
owned by one RouterCore that the GPT holds and hands to every block, so each
weight appears once in the state_dict. The per-layer parts live in each block.

Ablations (config switches): router_passing='none' (NP: every layer starts
from h_0), 'detach' (h_{i-1} detached: forward information kept, recurrent
gradient cut), router_shared_proj (S-proj), router='mlp' (SMoE-MLP),
router='rnn' (tanh RNN cell instead of the GRU).

Losses: load_balance_loss (one formula, value top_k at perfect balance) and
z_loss, per layer; aux_losses averages them over the layers of a forward pass.
Routing statistics (the paper's analysis metrics: expert load, gate entropy,
inner/outer balance, cross-layer mutual information) close the file; train.py
logs them at eval and analyze.py reports them.
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


CELLS = {"gru": GRUCell, "rnn": RNNCell}  # router name -> the cell of a recurrent router


class RouterCore(nn.Module):
    """The router parts shared by all layers: the recurrent cell (Eq. 5), and under
    the S-proj ablation the one projection that replaces the per-layer Proj_i."""

    def __init__(self, config):
        super().__init__()
        self.cell = CELLS[config.router](config.router_dim)
        self.proj = make_projection(config) if config.router_shared_proj else None


def make_projection(config):
    proj = nn.Linear(config.n_embd, config.router_dim, bias=False)
    nn.init.normal_(proj.weight, std=0.02)
    return proj


class LinearRouter(nn.Module):
    """SMoE: logits = G_i x_i, one bias-free matrix per layer (Eq. 1)."""

    def __init__(self, config):
        super().__init__()
        self.gate = nn.Linear(config.n_embd, config.n_experts, bias=False)
        nn.init.normal_(self.gate.weight, std=0.02)

    def forward(self, x, h, core):
        return self.gate(x), h  # (N, E); the router state passes through untouched


class MLPRouter(nn.Module):
    """SMoE-MLP: a two-layer GELU MLP per layer, x -> m -> E (the 'more parameters' control)."""

    def __init__(self, config):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, config.router_mlp_hidden, bias=False)
        self.gate = nn.Linear(config.router_mlp_hidden, config.n_experts, bias=False)
        nn.init.normal_(self.fc.weight, std=0.02)
        nn.init.normal_(self.gate.weight, std=0.02)

    def forward(self, x, h, core):
        return self.gate(F.gelu(self.fc(x))), h


class RecurrentRouter(nn.Module):
    """RMoE: the per-layer parts Proj_i (Eq. 4) and G_i (Eq. 6); the cell comes from core."""

    def __init__(self, config):
        super().__init__()
        self.passing = config.router_passing
        self.proj = None if config.router_shared_proj else make_projection(config)
        self.gate = nn.Linear(config.router_dim, config.n_experts, bias=False)
        nn.init.normal_(self.gate.weight, std=0.02)

    def forward(self, x, h, core):
        proj = core.proj if self.proj is None else self.proj
        x_p = proj(x)  # (N, p)  Eq. 4: x'_i = Proj_i(x_i)
        if h is None or self.passing == "none":
            h = torch.zeros_like(x_p)  # h_0 = 0: the first layer, or every layer under NP
        elif self.passing == "detach":
            h = h.detach()  # keep what h_{i-1} says, cut the recurrent gradient through it
        h = core.cell(x_p, h)  # (N, p)  Eq. 5: h_i = GRU(x'_i, h_{i-1}), not detached by default
        return self.gate(h), h  # (N, E)  Eq. 6: logits from h_i; the experts still see x_i


ROUTERS = {"linear": LinearRouter, "mlp": MLPRouter, **{name: RecurrentRouter for name in CELLS}}


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


# -----------------------------------------------------------------------------
# routing statistics: the paper's analysis metrics (its Tab. 8 and App. A.4) as
# pure functions of routing tensors. train.py logs routing_summary at eval; analyze.py
# reports all of them.

def routing_by_layer(batches):
    """Each MoE layer's Routing over several forward passes: batches[pass][layer] -> one Routing
    per layer, its tensors concatenated over the passes' tokens."""
    return [Routing(*(torch.cat(tensors) for tensors in zip(*layer))) for layer in zip(*batches)]


@torch.no_grad()
def routing_summary(probs, topk_idx):
    """One MoE layer's routing in numbers. probs: (N, E) softmax over all experts, topk_idx: (N, k).

    load          share of the N*k token-slots each expert got (E values, even: 1/E)
    max_share     the largest share; dead_experts: experts with no slot at all
    load_cv       coefficient of variation of the shares (std / mean; 0 when even)
    entropy       mean gate entropy, nats (0 one-hot, ln E uniform)
    inner_balance median over tokens of top-1 / top-2 score (paper Tab. 8; 1 = the two best tie)
    outer_balance median over tokens of the score mass on the chosen k (Tab. 8; 1 = nothing left out)
    """
    n_experts = probs.shape[-1]
    load = slots_per_expert(topk_idx, n_experts).float()
    load = load / load.sum()  # (E,)
    top2 = probs.topk(min(2, n_experts), dim=-1).values  # (N, 2)
    return {
        "load": load.tolist(),
        "max_share": load.max().item(),
        "dead_experts": int((load == 0).sum()),
        "load_cv": (load.std(unbiased=False) / load.mean()).item(),
        "entropy": gate_entropy(probs).mean().item(),
        # medians, as the paper, because single tokens reach extreme ratios; one expert has no top-2
        "inner_balance": median(top2[:, 0] / top2[:, 1]) if n_experts > 1 else float("nan"),
        "outer_balance": median(probs.gather(1, topk_idx).sum(-1)),
    }


def median(x):
    """np.median of a 1-d tensor: the mean of the two middle values; inf stays inf (torch.quantile gives nan)."""
    v = x.sort().values
    return ((v[(len(v) - 1) // 2] + v[len(v) // 2]) / 2).item()


def gate_entropy(probs):
    """Entropy of each token's gate, in nats (N,): -sum_n g_n ln g_n over all E experts."""
    return -torch.xlogy(probs, probs).sum(-1)


def mutual_info(counts):
    """Mutual information in nats of contingency tables (..., A, B) of paired-label counts:
    sum_ab p_ab ln(p_ab / (p_a p_b)), what sklearn's mutual_info_score computes from the labels."""
    p = counts / counts.sum((-2, -1), keepdim=True)
    p_a, p_b = p.sum(-1, keepdim=True), p.sum(-2, keepdim=True)  # marginals (..., A, 1), (..., 1, B)
    return (torch.xlogy(p, p) - torch.xlogy(p, p_a * p_b)).sum((-2, -1))  # empty cells add 0


def contingency(labels_a, labels_b, n_labels):
    """Counts of each label pair (..., n_labels, n_labels) over the last dim of two (..., S) label tensors."""
    one_hot_a = F.one_hot(labels_a, n_labels).float()  # (..., S, n_labels)
    one_hot_b = F.one_hot(labels_b, n_labels).float()
    return one_hot_a.transpose(-2, -1) @ one_hot_b


@torch.no_grad()
def gate_mutual_info(probs):
    """The paper's cross-layer mutual information (App. A.4.2) for a list of L layers' probs (N, E):
    an (L, L) matrix, nats. Per token, each layer's E gate scores are binned as
    np.digitize(g, np.linspace(0, 1, 100)); expert n's bins in layers a and b are one paired
    sample, so a token gives E samples; mutual_info_score of those, averaged over tokens."""
    n_experts = probs[0].shape[-1]
    edges = torch.linspace(0, 1, 100, device=probs[0].device)
    labels = []
    for p in probs:
        bins = torch.bucketize(p, edges, right=True)  # (N, E) equals np.digitize(p, edges)
        # rename each bin to the first expert in it: the same grouping, with labels < E
        labels.append((bins.unsqueeze(-1) == bins.unsqueeze(-2)).float().argmax(-1))  # (N, E)
    return torch.tensor([[mutual_info(contingency(a, b, n_experts)).mean().item() for b in labels]
                         for a in labels])


@torch.no_grad()
def choice_mutual_info(topk_idx, n_experts):
    """Mutual information in bits between the top-1 experts of every pair of layers, over the
    tokens: an (L, L) matrix, from 0 (independent choices) up to the choice entropy (one layer's
    choice determines the other's), which is what the diagonal holds."""
    top1 = [idx[:, 0] for idx in topk_idx]  # (N,) each; topk sorts, so column 0 is the first choice
    return torch.tensor([[mutual_info(contingency(a, b, n_experts)).item() / math.log(2) for b in top1]
                         for a in top1])


@torch.no_grad()
def distinct_paths(topk_idx):
    """How many different sequences of top-1 experts, one per layer, the tokens take through the depth."""
    paths = torch.stack([idx[:, 0] for idx in topk_idx], dim=1)  # (N, L)
    return len(paths.unique(dim=0))
