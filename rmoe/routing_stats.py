"""
Routing statistics: the paper's analysis metrics (Qiu et al., ICLR 2025, Tab. 8 and App. A.4)
as pure functions of routing tensors. train.py logs routing_summary at each evaluation;
analyze.py reports all of them.
"""

import math

import torch
import torch.nn.functional as F

from router import Routing, slots_per_expert


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
