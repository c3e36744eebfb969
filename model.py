"""
A GPT whose MLPs are Mixture-of-Experts layers, routed by a linear or a
layerwise recurrent router (RMoE, Qiu et al., ICLR 2025). In one file:

- GPTConfig: every model setting, checked on construction;
- CausalSelfAttention, MLP (SwiGLU), MoE (softmax top-k gate + dropless dispatch);
- Block: pre-norm attention + MLP/MoE, passing the router state h along;
- GPT: embeddings, the block loop that threads h through the depth, the
  losses (language model + load balance + optional z-loss), parameter and
  FLOP counts, optimizer set-up and generate().

The router itself (linear, MLP, GRU/RNN recurrent) lives in router.py.
"""

import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from router import ROUTERS, RouterCore, Routing, aux_losses, make_router, slots_per_expert

ROUTER_PASSING = ("full", "none", "detach")


@dataclass
class GPTConfig:
    block_size: int = 128  # context length in tokens
    vocab_size: int = 50304  # set from the dataset by train.py
    n_layer: int = 4  # transformer blocks, each with an MoE layer (or a dense MLP)
    n_head: int = 4  # attention heads per block
    n_embd: int = 128  # width of the residual stream (the paper's d; h is the router state)
    dropout: float = 0.0  # dropout of embeddings, attention and feed-forward outputs; training only; 0 = off
    # feed-forward: Mixture-of-Experts in every block, or a dense MLP when n_experts = 0
    n_experts: int = 8  # experts per MoE layer (E here, N in the paper); 0 = a dense MLP instead
    top_k: int = 2  # experts per token (the MoE top-k; sample.py's --top_k is about sampled tokens)
    mlp_hidden: int = 256  # hidden width of each expert's SwiGLU MLP (of the dense MLP when n_experts = 0)
    norm_topk: bool = True  # renormalise the k gate weights to sum to 1
    # router (router.py)
    router: str = "gru"  # linear (SMoE) | mlp (SMoE-MLP) | gru, rnn (RMoE with that cell); router.ROUTERS
    router_dim: int = 128  # p, the recurrent state size (the paper's default); gru and rnn only, others ignore it
    router_passing: str = "full"  # full: h_{i-1} -> h_i | none: NP, h_0 at every layer | detach (gru, rnn)
    router_shared_proj: bool = False  # S-proj ablation: one projection for all layers (gru, rnn)
    router_mlp_hidden: int = 256  # hidden width of the SMoE-MLP router; router=mlp only, others ignore it
    lb_loss_coef: float = 0.01  # load-balance loss weight (the paper's 0.01)
    z_loss_coef: float = 0.0  # router z-loss weight (off in the paper)

    def __post_init__(self):
        positive = ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "mlp_hidden", "router_dim",
                    "router_mlp_hidden")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}; "
                             f"make n_embd a multiple of n_head")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")
        if self.n_experts < 0:
            raise ValueError(f"n_experts={self.n_experts} must be 0 (dense MLP) or more")
        if self.n_experts and not 1 <= self.top_k <= self.n_experts:
            raise ValueError(f"top_k={self.top_k} must be between 1 and n_experts={self.n_experts}; "
                             f"pick a top_k in that range")
        if self.router not in ROUTERS:
            raise ValueError(f"router={self.router!r} is not one of {', '.join(ROUTERS)}")
        if self.router_passing not in ROUTER_PASSING:
            raise ValueError(f"router_passing={self.router_passing!r} is not one of {', '.join(ROUTER_PASSING)}")
        # a router switch the router does not read would be silently ignored, and the run would not be the
        # ablation asked for; a size it does not read is harmless (rmoe_small's p carries over to --router=linear)
        reads = ROUTERS[self.router].settings if self.is_moe else ()
        for f in fields(self):
            is_switch = f.name.startswith("router_") and isinstance(f.default, (str, bool))
            if is_switch and f.name not in reads and getattr(self, f.name) != f.default:
                where = f"router={self.router!r}" + ("" if self.is_moe else " in a dense model (n_experts=0)")
                raise ValueError(f"{f.name}={getattr(self, f.name)!r} does not apply to {where}; "
                                 f"leave it at {f.default!r} or pick a router that reads it")
        if self.lb_loss_coef < 0 or self.z_loss_coef < 0:
            raise ValueError("lb_loss_coef and z_loss_coef must be >= 0")

    @property
    def is_moe(self):
        return self.n_experts > 0

    @property
    def has_router_core(self):
        """Whether the GPT holds a router cell shared by all layers."""
        return self.is_moe and ROUTERS[self.router].cell is not None


class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.resid_dropout = nn.Dropout(config.dropout)
        nn.init.normal_(self.c_attn.weight, std=0.02)
        nn.init.normal_(self.c_proj.weight, std=residual_std(config))

    def forward(self, x, kv_cache=None):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if kv_cache is not None:
            k, v = kv_cache.extend(k, v)  # (B, nh, T_cached + T, hs) this layer's keys and values so far
        # a prefill is square and causal; a cached step's one new query may see every key
        causal = q.size(2) == k.size(2)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=causal)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class KVCache:
    """One layer's attention keys and values for the tokens generate() has fed in so far.

    Only attention is cached. The router state h runs over depth, not time: a new
    token's h starts from h_0 at the first layer and never reads another token's h
    (earlier tokens reach its routing only through attention), so there is no router
    state to keep between steps.
    """

    def __init__(self):
        self.k = self.v = None  # (B, nh, T_cached, hs)

    def __len__(self):
        return 0 if self.k is None else self.k.size(2)

    def extend(self, k, v):
        if self.k is not None and k.size(2) > 1:  # attention treats only a square (prefill) call as causal
            raise ValueError("after the first call with a KV cache, feed one token at a time")
        self.k = k if self.k is None else torch.cat((self.k, k), dim=2)
        self.v = v if self.v is None else torch.cat((self.v, v), dim=2)
        return self.k, self.v


def residual_std(config):
    """GPT-2 init: layers that write into the residual stream get std 0.02/sqrt(2 * n_layer)."""
    return 0.02 / math.sqrt(2 * config.n_layer)


def swiglu(x, w1, w3, w2):
    """SwiGLU feed-forward: w2(silu(x w1) * x w3); x (N, C), w1 and w3 (C, H), w2 (H, C)."""
    return (F.silu(x @ w1) * (x @ w3)) @ w2


class MLP(nn.Module):
    """Dense SwiGLU MLP: the baseline, and what one expert computes."""

    def __init__(self, config):
        super().__init__()
        C, H = config.n_embd, config.mlp_hidden
        self.w1 = nn.Parameter(torch.randn(C, H) * 0.02)
        self.w3 = nn.Parameter(torch.randn(C, H) * 0.02)
        self.w2 = nn.Parameter(torch.randn(H, C) * residual_std(config))
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, h, core):
        return self.dropout(swiglu(x, self.w1, self.w3, self.w2)), h, None  # no routing: h passes through


class MoE(nn.Module):
    """Mixture-of-Experts: y = sum over the top-k experts of g_n(x) E_n(x) (Eq. 1; Eq. 6 with a recurrent router)."""

    def __init__(self, config):
        super().__init__()
        E, C, H = config.n_experts, config.n_embd, config.mlp_hidden
        self.top_k = config.top_k
        self.norm_topk = config.norm_topk
        self.router = make_router(config)
        self.passing = config.router_passing if self.router.passes_state else "full"
        # experts stacked in single tensors: every expert is in the autograd graph every step
        self.w1 = nn.Parameter(torch.randn(E, C, H) * 0.02)
        self.w3 = nn.Parameter(torch.randn(E, C, H) * 0.02)
        self.w2 = nn.Parameter(torch.randn(E, H, C) * residual_std(config))
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, h, core):
        B, T, C = x.shape
        x = x.view(B * T, C)  # (N, C) routing is per token
        if self.passing == "none":
            h = None  # NP: every layer starts from h_0
        elif self.passing == "detach" and h is not None:
            h = h.detach()  # keep what h_{i-1} says, cut the recurrent gradient through it
        logits, h = self.router(x, h, core)  # (N, E); h is the router state after this layer
        probs = self.router.score(logits)  # (N, E) fp32 gate scores, each row sums to 1 (softmax: Eq. 1)
        weights, topk_idx = probs.topk(self.top_k, dim=-1)  # (N, k)
        if self.norm_topk:
            weights = weights / weights.sum(dim=-1, keepdim=True)  # the k weights sum to 1
        y = self.dispatch(x, weights.to(x.dtype), topk_idx)
        return self.dropout(y.view(B, T, C)), h, Routing(logits, probs, topk_idx)

    def dispatch(self, x, weights, topk_idx):
        """Dropless: every token reaches all of its k experts, whatever the load.

        Sort the N*k token-slots by expert, run each expert once on its contiguous
        slice, weight the outputs by the gate and scatter-add them back to tokens.
        No capacity limit, so no token's output depends on other tokens' routing.
        """
        N, k = topk_idx.shape
        expert_of_slot = topk_idx.flatten()  # (N*k,) slot s belongs to token s // k
        order = expert_of_slot.argsort(stable=True)  # (N*k,) slots grouped by expert
        token_of_slot = order // k  # (N*k,) which token each sorted slot reads
        # slots per expert, the split sizes: a host sync, the one price of running each expert on its own slice
        counts = slots_per_expert(topk_idx, self.w1.shape[0]).tolist()
        # index_select, not x[token_of_slot]: its backward is a scatter-add, several times cheaper on CPU
        xs = x.index_select(0, token_of_slot).split(counts)  # E tensors (n_e, C)
        # unbind, not self.w1[e]: one gradient tensor per weight, not one full-size zero tensor per expert
        experts = zip(xs, self.w1.unbind(0), self.w3.unbind(0), self.w2.unbind(0))
        # eager skips idle experts (most of them when generate() feeds one token); a compiled graph
        # cannot branch on a data-dependent size, and an empty matmul is correct anyway
        compiling = torch.compiler.is_compiling()
        ys = torch.cat([swiglu(xe, w1, w3, w2) for xe, w1, w3, w2 in experts if compiling or len(xe)])  # (N*k, C)
        ys = ys * weights.flatten().index_select(0, order).unsqueeze(-1)  # scale each slot's output by its gate weight
        return torch.zeros_like(x).index_add_(0, token_of_slot, ys)  # (N, C) sum the k outputs per token


def compile_moe(model):
    """torch.compile for a model with MoE layers: the dispatch's per-expert split sizes (.tolist())
    become symbolic integers in the graph (capture_scalar_outputs), not graph breaks and recompiles."""
    torch._dynamo.config.capture_scalar_outputs = True
    return torch.compile(model)


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=False)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=False)
        self.mlp = MoE(config) if config.is_moe else MLP(config)

    def forward(self, x, h, core, kv_cache=None):
        x = x + self.attn(self.ln_1(x), kv_cache)
        y, h, routing = self.mlp(self.ln_2(x), h, core)  # router and experts both read ln_2(x)
        return x + y, h, routing


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        # the router parts all layers share: the cell (Eq. 5) and the S-proj projection; None without a cell
        self.router_core = RouterCore(config) if config.has_router_core else None
        self.ln_f = nn.LayerNorm(config.n_embd, bias=False)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied input and output embeddings
        nn.init.normal_(self.wte.weight, std=0.02)
        nn.init.normal_(self.wpe.weight, std=0.02)

    def forward(self, idx, targets=None, kv_caches=None):
        """Returns (logits, loss, aux). loss = lm + lb_coef * lb + z_coef * z (None without
        targets); aux holds the separate losses and each MoE layer's Routing. kv_caches
        (generate() only): one KVCache per layer; idx then holds only the tokens after the cached ones."""
        B, T = idx.shape
        start = len(kv_caches[0]) if kv_caches else 0  # position of idx's first token
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens is longer than block_size={self.config.block_size}")
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)

        h = None  # the router state h_0 = 0 per token, created by the first recurrent router
        routing = []
        for i, block in enumerate(self.blocks):
            kv_cache = kv_caches[i] if kv_caches else None
            x, h, layer_routing = block(x, h, self.router_core, kv_cache)  # h_{i-1} -> h_i, not detached
            if layer_routing is not None:
                routing.append(layer_routing)
        x = self.ln_f(x)

        aux = {"routing": routing}
        if targets is None:
            return self.lm_head(x[:, -1:, :]), None, aux  # (B, 1, V) only the last position is needed
        logits = self.lm_head(x)  # (B, T, V)
        lm_loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        lb, zl = aux_losses(routing)
        loss = lm_loss + self.config.lb_loss_coef * lb + self.config.z_loss_coef * zl
        aux.update(lm_loss=lm_loss.detach(), lb_loss=lb.detach(), z_loss=zl.detach())
        return logits, loss, aux

    # -------------------------------------------------------------------------
    # counting

    def num_params(self):
        """Total parameters (the tied embedding counted once)."""
        return sum(p.numel() for p in self.parameters())

    def num_non_embedding_params(self):
        """Parameters outside the embeddings, the model size the paper reports (Tabs. 1, 4, 6): all
        but the token embedding (also the lm_head: they are tied) and the position embedding."""
        return self.num_params() - self.wte.weight.numel() - self.wpe.weight.numel()

    def num_active_params(self):
        """Parameters one token uses: all but the experts it is not routed to."""
        c = self.config
        inactive = c.n_layer * (c.n_experts - c.top_k) * 3 * c.n_embd * c.mlp_hidden if c.is_moe else 0
        return self.num_params() - inactive

    def flops_per_token(self):
        """Training FLOPs per token (forward + backward): 6 per active parameter use, plus the
        attention scores. The router core shared by all layers is used once per layer; position
        embeddings are a lookup. (Norm weights and biases count as matmul weights: a rounding error.)"""
        c = self.config
        shared = sum(p.numel() for p in self.router_core.parameters()) if self.router_core else 0
        param_uses = self.num_active_params() - self.wpe.weight.numel() + (c.n_layer - 1) * shared
        return 6 * param_uses + 12 * c.n_layer * c.n_embd * c.block_size

    def configure_optimizer(self, weight_decay, learning_rate, betas, device_type):
        # decay every matrix (and stacked expert tensor); not norms and biases
        decay = [p for p in self.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device_type == "cuda")

    # -------------------------------------------------------------------------
    # sampling

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, kv_cache=True):
        """Extend idx (B, T) by max_new_tokens. temperature 0 means greedy (argmax); top_k keeps
        only the k likeliest tokens.

        The model sees a window of the latest tokens. When a new token would make it longer than
        block_size, the window restarts at the last block_size // 2 tokens (at least one):
        positions are learned embeddings, so cached keys cannot slide along, and restarting at
        half refills the cache with one forward every block_size // 2 tokens. kv_cache=False
        recomputes the whole window each step; it is the reference the cached path must match
        token for token.
        """
        block_size = self.config.block_size
        window = max(0, idx.size(1) - block_size)  # index of the window's first token; long prompts are cropped
        caches = None
        for _ in range(max_new_tokens):
            if idx.size(1) - window > block_size:
                window, caches = idx.size(1) - max(1, block_size // 2), None  # restart the window (and the cache)
            if not kv_cache:
                logits, _, _ = self(idx[:, window:])
            elif caches is None:
                caches = [KVCache() for _ in self.blocks]
                logits, _, _ = self(idx[:, window:], kv_caches=caches)  # prefill the whole window at once
            else:
                logits, _, _ = self(idx[:, -1:], kv_caches=caches)  # only the newest token
            logits = logits[:, -1, :]  # (B, V)
            if temperature == 0:
                next_idx = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = (logits - logits.max(dim=-1, keepdim=True).values) / temperature  # no overflow when tiny
                if top_k is not None:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < v[:, [-1]]] = -float("inf")
                next_idx = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
            idx = torch.cat((idx, next_idx), dim=1)
        return idx
