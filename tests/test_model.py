"""Exactness and property tests of the model and the routers: each compares against an
independent reference or a property that a bug would break."""


import pytest
import torch
import torch.nn.functional as F

from model import GPT, MLP, ROUTER_PASSING, GPTConfig, KVCache, MoE, swiglu
from router import GRUCell, RNNCell, RouterCore, load_balance_loss


@pytest.fixture(autouse=True)
def float64():
    """Exact comparisons without float32 rounding noise; restored for the other test files."""
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def tiny_config(**overrides):
    settings = dict(vocab_size=11, block_size=16, n_layer=3, n_head=2, n_embd=16, n_experts=4, top_k=2,
                    mlp_hidden=8, router="gru", router_dim=6)
    return GPTConfig(**{**settings, **overrides})


@pytest.mark.parametrize("ours, theirs", [(GRUCell, torch.nn.GRUCell), (RNNCell, torch.nn.RNNCell)])
def test_recurrent_cell_equals_torch(ours, theirs):
    torch.manual_seed(0)
    cell, ref = ours(5), theirs(5, 5)
    ref.load_state_dict(cell.state_dict())  # same names and layout as torch's cells
    x, h = torch.randn(7, 5, requires_grad=True), torch.randn(7, 5, requires_grad=True)
    out, out_ref = cell(x, h), ref(x, h)
    torch.testing.assert_close(out, out_ref)
    grads = torch.autograd.grad(out.square().sum(), [x, h, *cell.parameters()])
    grads_ref = torch.autograd.grad(out_ref.square().sum(), [x, h, *ref.parameters()])
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref)


def test_moe_with_one_expert_and_top1_equals_dense_mlp():
    torch.manual_seed(0)
    moe = MoE(tiny_config(n_experts=1, top_k=1, router="linear"))
    mlp = MLP(tiny_config(n_experts=0))
    with torch.no_grad():
        for name in ("w1", "w2", "w3"):
            getattr(mlp, name).copy_(getattr(moe, name)[0])
    x = torch.randn(2, 5, 16, requires_grad=True)
    y_moe, _, routing = moe(x, None, None)
    y_mlp, _, _ = mlp(x, None, None)
    torch.testing.assert_close(y_moe, y_mlp)
    assert torch.equal(routing.probs, torch.ones(10, 1))  # one expert gets all the weight
    g_moe = torch.autograd.grad(y_moe.sin().sum(), [x, moe.w1, moe.w2, moe.w3])
    g_mlp = torch.autograd.grad(y_mlp.sin().sum(), [x, mlp.w1, mlp.w2, mlp.w3])
    torch.testing.assert_close(g_moe[0], g_mlp[0])
    for g, g_ref in zip(g_moe[1:], g_mlp[1:]):
        torch.testing.assert_close(g[0], g_ref)


def brute_force_moe(moe, x, h, core):
    """Every expert on every token, weighted by a dense (N, E) gate that is zero outside the top-k."""
    N = x.shape[0] * x.shape[1]
    logits, _ = moe.router(x.view(N, -1), h, core)
    probs = F.softmax(logits, dim=-1)
    weights, idx = probs.topk(moe.top_k, dim=-1)
    if moe.norm_topk:
        weights = weights / weights.sum(-1, keepdim=True)
    gate = torch.zeros_like(probs).scatter(1, idx, weights)  # (N, E)
    outs = torch.stack([swiglu(x.view(N, -1), moe.w1[e], moe.w3[e], moe.w2[e]) for e in range(moe.w1.shape[0])], 1)
    return (gate.unsqueeze(-1) * outs).sum(1).view_as(x)


@pytest.mark.parametrize("router, shared_proj", [("linear", False), ("mlp", False), ("gru", False), ("rnn", False),
                                                 ("gru", True)])
@pytest.mark.parametrize("norm_topk", [True, False])
def test_dispatch_equals_brute_force(router, shared_proj, norm_topk):
    torch.manual_seed(0)
    config = tiny_config(router=router, norm_topk=norm_topk, n_experts=5, top_k=2, router_shared_proj=shared_proj)
    moe = MoE(config)
    core = RouterCore(config) if config.has_router_core else None
    x = torch.randn(3, 7, 16, requires_grad=True)
    h = torch.randn(21, 6) if core else None
    y, _, _ = moe(x, h, core)
    y_ref = brute_force_moe(moe, x, h, core)
    torch.testing.assert_close(y, y_ref)
    params = [x] + list(moe.parameters()) + (list(core.parameters()) if core else [])
    grads = torch.autograd.grad(y.sin().sum(), params)
    grads_ref = torch.autograd.grad(y_ref.sin().sum(), params)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref)


@pytest.mark.parametrize("router", ["linear", "gru"])
def test_causal_future_tokens_do_not_change_past_logits(router):
    torch.manual_seed(0)
    model = GPT(tiny_config(router=router)).eval()
    idx = torch.randint(0, 11, (2, 16))
    changed = idx.clone()
    changed[:, 9:] = (changed[:, 9:] + 1) % 11
    logits, _, _ = model(idx, torch.zeros_like(idx))
    logits_changed, _, _ = model(changed, torch.zeros_like(idx))
    torch.testing.assert_close(logits[:, :9], logits_changed[:, :9], rtol=0, atol=0)
    assert not torch.allclose(logits[:, 9:], logits_changed[:, 9:])  # the change did reach the model


def test_batch_independence():
    torch.manual_seed(0)
    model = GPT(tiny_config()).eval()
    idx = torch.randint(0, 11, (4, 16))
    together, _, aux = model(idx, torch.zeros_like(idx))
    alone, _, aux_alone = model(idx[2:3], torch.zeros_like(idx[2:3]))
    torch.testing.assert_close(together[2:3], alone)
    for layer, layer_alone in zip(aux["routing"], aux_alone["routing"]):  # same experts for the same tokens
        assert torch.equal(layer.topk_idx[32:48], layer_alone.topk_idx)


def last_layer_router_grads(passing):
    """Gradient of the last layer's router logits with respect to the FIRST layer's projection,
    with the experts' outputs zeroed so the residual stream cannot carry it."""
    torch.manual_seed(0)
    model = GPT(tiny_config(router_passing=passing))
    with torch.no_grad():
        for block in model.blocks:
            block.mlp.w2.zero_()  # MoE outputs 0: the only way from layer 0's router to layer 2's is h
    idx = torch.randint(0, 11, (2, 16))
    _, _, aux = model(idx, idx)
    last_logits = aux["routing"][-1].logits
    first_proj = model.blocks[0].mlp.router.proj.weight
    (grad,) = torch.autograd.grad(last_logits.square().sum(), [first_proj], allow_unused=True)
    return torch.zeros_like(first_proj) if grad is None else grad


def test_recurrent_gradient_reaches_first_layer_router_only_when_passing():
    assert last_layer_router_grads("full").abs().sum() > 1e-6  # through h_2 <- h_1 <- h_0
    assert torch.equal(last_layer_router_grads("detach"), torch.zeros(6, 16))
    assert torch.equal(last_layer_router_grads("none"), torch.zeros(6, 16))


def test_detach_passes_the_same_state_forward_as_full_passing_and_np_does_not():
    torch.manual_seed(0)
    full = GPT(tiny_config(router_passing="full")).eval()
    idx = torch.randint(0, 11, (2, 16))
    outputs = {}
    for passing in ROUTER_PASSING:
        model = GPT(tiny_config(router_passing=passing)).eval()
        model.load_state_dict(full.state_dict())  # the same weights: only the passing differs
        logits, _, aux = model(idx, idx)
        outputs[passing] = logits, [r.logits for r in aux["routing"]]
    logits, routing = outputs["full"]
    torch.testing.assert_close(outputs["detach"][0], logits, rtol=0, atol=0)
    for layer, full_layer in zip(outputs["detach"][1], routing):
        torch.testing.assert_close(layer, full_layer, rtol=0, atol=0)
    assert not torch.allclose(outputs["none"][1][-1], routing[-1])  # NP routes from h_0 instead
    assert not torch.allclose(outputs["none"][0], logits)


@pytest.mark.parametrize("passing, from_h0", [("none", True), ("full", False)])
def test_no_passing_routes_every_layer_from_h0(passing, from_h0):
    torch.manual_seed(0)
    model = GPT(tiny_config(router_passing=passing)).eval()
    inputs = []  # each MoE layer's input ln_2(x)
    for block in model.blocks:
        block.mlp.register_forward_hook(lambda mod, args, out: inputs.append(args[0].reshape(-1, 16)))
    idx = torch.randint(0, 11, (2, 16))
    _, _, aux = model(idx, idx)
    for i, (block, x) in enumerate(zip(model.blocks, inputs)):
        router = block.mlp.router
        x_p = router.proj(x)
        expected = router.gate(model.router_core.cell(x_p, torch.zeros_like(x_p)))  # Eq. 5 with h_0 = 0
        same = torch.allclose(aux["routing"][i].logits, expected)
        assert same if (from_h0 or i == 0) else not same


def test_shared_projection_is_one_weight():
    model = GPT(tiny_config(router_shared_proj=True))
    assert all(block.mlp.router.proj is None for block in model.blocks)
    names = list(model.state_dict())
    assert sum(".proj." in n for n in names) == 1 and "router_core.proj.weight" in names


def test_router_parameter_count_matches_paper_formula():
    # Eqs. 4-6 with a bias-free Proj_i (h x p) and G_i (p x N) per layer and one GRUCell (6p^2 + 6p):
    # L * (h*p + p*N) + 6p^2 + 6p; at enwik8 medium that is 475,904, Tab. 1's "0.47M" router
    # (the experts do not change the router; mlp_hidden=2 keeps the model small)
    config = GPTConfig(vocab_size=256, n_layer=8, n_head=8, n_embd=352, n_experts=16, mlp_hidden=2, router_dim=128)
    model = GPT(config)
    router_params = sum(p.numel() for n, p in model.named_parameters() if "router" in n)
    assert router_params == 8 * (352 * 128 + 128 * 16) + 6 * 128 ** 2 + 6 * 128 == 475_904
    linear = GPT(GPTConfig(**{**vars(config), "router": "linear"}))
    assert model.num_params() - linear.num_params() == 475_904 - 8 * 352 * 16
    # active = total minus the 14 experts per layer a token does not use
    assert model.num_params() - model.num_active_params() == 8 * 14 * 3 * 352 * 2


def test_load_balance_loss_is_top_k_at_perfect_balance_and_grows_with_imbalance():
    E, k, N = 4, 2, 8
    # balanced: each expert gets 4 of the 16 slots, the mean probability is 1/E
    topk_balanced = torch.tensor([[0, 1], [2, 3]] * 4)
    probs = torch.full((N, E), 1 / E)
    assert load_balance_loss(probs, topk_balanced).item() == pytest.approx(k)
    # imbalanced: probability and assignments on experts 0 and 1
    peaked = torch.tensor([[0.45, 0.45, 0.05, 0.05]]).repeat(N, 1)
    topk_skewed = torch.tensor([[0, 1]]).repeat(N, 1)
    assert load_balance_loss(peaked, topk_skewed).item() == pytest.approx(E * 2 * 1.0 * 0.45)  # 3.6 > k
    assert load_balance_loss(peaked, topk_skewed) > load_balance_loss(probs, topk_balanced)


def test_load_balance_loss_sends_gradient_to_experts_outside_top_k():
    torch.manual_seed(0)
    logits = torch.randn(10, 4, requires_grad=True)
    probs = F.softmax(logits, -1)
    _, idx = probs.topk(1, dim=-1)
    (grad,) = torch.autograd.grad(load_balance_loss(probs, idx), [logits])
    unchosen = torch.ones(10, 4, dtype=torch.bool).scatter(1, idx, False)
    assert grad[unchosen].abs().min() > 0


def test_model_loss_adds_weighted_aux_losses_averaged_over_layers():
    torch.manual_seed(0)
    model = GPT(tiny_config(lb_loss_coef=0.5, z_loss_coef=0.25))
    idx = torch.randint(0, 11, (2, 16))
    _, loss, aux = model(idx, idx)
    routing = aux["routing"]
    assert len(routing) == 3
    lb = sum(load_balance_loss(r.probs, r.topk_idx) for r in routing) / 3
    z = sum(torch.logsumexp(r.logits, -1).square().mean() for r in routing) / 3
    lm = F.cross_entropy(model(idx, idx)[0].flatten(0, 1), idx.flatten())
    torch.testing.assert_close(loss, lm + 0.5 * lb + 0.25 * z)


def test_dense_model_has_no_routing_and_no_aux_loss():
    model = GPT(tiny_config(n_experts=0))
    idx = torch.randint(0, 11, (2, 16))
    _, loss, aux = model(idx, idx)
    assert aux["routing"] == [] and aux["lb_loss"].item() == 0
    torch.testing.assert_close(loss, aux["lm_loss"])
    assert model.router_core is None and model.num_params() == model.num_active_params()


def test_generate_greedy_is_deterministic_and_crops_long_prompts():
    torch.manual_seed(0)
    model = GPT(tiny_config()).eval()
    prompt = torch.randint(0, 11, (1, 40))  # longer than block_size=16
    a = model.generate(prompt, 5, temperature=0)
    b = model.generate(prompt[:, -16:], 5, temperature=0)
    assert a.shape == (1, 45) and torch.equal(a[:, -5:], b[:, -5:])
    assert torch.equal(model.generate(prompt, 5, temperature=1e-40), a)  # a tiny temperature is greedy, not NaN


def test_model_compiles_to_one_graph_with_the_same_loss_and_gradients():
    """torch.compile(fullgraph=True) must trace forward and backward of the MoE dispatch without a
    break: the expert counts have a fixed size and the split sizes become symbolic integers
    (capture_scalar_outputs, set by compile_moe). aot_eager traces like inductor, without code generation."""
    torch.manual_seed(0)
    model = GPT(tiny_config(n_layer=2))
    idx = torch.randint(0, 11, (2, 16))
    _, reference, _ = model(idx, idx)
    expected = torch.autograd.grad(reference, list(model.parameters()))
    with torch._dynamo.config.patch(capture_scalar_outputs=True):
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        _, loss, _ = compiled(idx, idx)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    torch.testing.assert_close(loss, reference)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e)


def generate_with_routing(model, prompt, n_tokens, **kwargs):
    """generate()'s tokens, and the top-k experts each layer chose for the token at the end of
    the window at every step (the one whose logits pick the next token): (steps, layers, B, k)."""
    chosen = []
    hooks = [block.mlp.register_forward_hook(lambda m, inp, out: chosen.append(out[2].topk_idx))
             for block in model.blocks]
    B = prompt.size(0)
    out = model.generate(prompt, n_tokens, **kwargs)
    for hook in hooks:
        hook.remove()
    n_layer = len(model.blocks)
    last = [idx.view(B, -1, idx.size(-1))[:, -1] for idx in chosen]  # (B, k) per call
    return out, torch.stack(last).view(n_tokens, n_layer, B, -1)


@pytest.mark.parametrize("router", ["gru", "linear"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_kv_cache_gives_the_same_tokens_and_expert_choices(router, temperature):
    torch.manual_seed(0)
    model = GPT(tiny_config(router=router)).eval()
    prompt = torch.randint(0, 11, (2, 5))
    runs = []
    for kv_cache in (True, False):
        torch.manual_seed(1)  # the same sampling draws for both
        runs.append(generate_with_routing(model, prompt, 40, temperature=temperature, kv_cache=kv_cache))
    (cached, cached_experts), (reference, reference_experts) = runs
    assert cached.shape == (2, 45)  # 40 new tokens: the 16-token window restarts several times
    assert torch.equal(cached, reference)
    assert torch.equal(cached_experts, reference_experts)


def test_top_1_sampling_is_greedy():
    torch.manual_seed(0)
    model = GPT(tiny_config()).eval()
    prompt = torch.randint(0, 11, (8, 3))
    greedy = model.generate(prompt, 20, temperature=0)
    assert torch.equal(model.generate(prompt, 20, temperature=1.0, top_k=1), greedy)
    assert torch.equal(model.generate(prompt, 20, temperature=5.0, top_k=1, kv_cache=False), greedy)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_top_k_samples_every_one_of_the_k_likeliest_and_nothing_else(k):
    model = GPT(tiny_config()).eval()
    # fixed next-token logits, close enough that each of the k likeliest is drawn often
    logits = torch.tensor([0.3, 1.0, 0.1, 0.9, 0.0, 0.8, 0.2, 0.7, 0.4, 0.6, 0.5])
    model.forward = lambda idx, targets=None, kv_caches=None: (logits.expand(idx.size(0), 1, -1), None, {})
    torch.manual_seed(0)
    drawn = model.generate(torch.zeros(3000, 1, dtype=torch.long), 1, temperature=1.0, top_k=k)[:, -1]
    likeliest = set(logits.topk(k).indices.tolist())
    assert set(drawn.tolist()) == likeliest
    counts = torch.bincount(drawn, minlength=11).double()  # in proportion to their probabilities
    expected = F.softmax(logits[sorted(likeliest)], -1) * 3000
    assert torch.allclose(counts[sorted(likeliest)], expected, rtol=0.15)


@pytest.mark.parametrize("kv_cache", [True, False])
def test_generate_restarts_a_full_window_at_half_its_length(kv_cache):
    model = GPT(tiny_config()).eval()  # block_size 16
    fed = []  # tokens fed to the model at each step
    model.register_forward_pre_hook(lambda m, args: fed.append(args[0].size(1)))
    model.generate(torch.zeros(1, 5, dtype=torch.long), 30, temperature=0, kv_cache=kv_cache)
    window = list(range(5, 17)) + list(range(8, 17)) + list(range(8, 17))  # the window's length at each step
    restarts = {0, 12, 21}  # the steps that start a window: the first, then each time it would pass 16
    expected = window if not kv_cache else [n if step in restarts else 1 for step, n in enumerate(window)]
    assert fed == expected


def test_generate_works_with_a_one_token_window():
    torch.manual_seed(0)
    model = GPT(tiny_config(block_size=1)).eval()
    prompt = torch.arange(11).view(11, 1)  # every token as a prompt, so the chains differ
    cached = model.generate(prompt, 4, temperature=0)
    assert torch.equal(cached, model.generate(prompt, 4, temperature=0, kv_cache=False))
    for t in range(4):  # each new token is the argmax given the last token alone, at position 0
        logits, _, _ = model(cached[:, t:t + 1])
        assert torch.equal(cached[:, t + 1], logits[:, -1].argmax(-1))
    assert len(set(cached[:, 1].tolist())) > 1  # the chains do depend on the token


def test_kv_cache_is_fed_one_token_at_a_time():
    model = GPT(tiny_config()).eval()
    caches = [KVCache() for _ in model.blocks]
    model(torch.zeros(1, 4, dtype=torch.long), kv_caches=caches)
    with pytest.raises(ValueError, match="one token at a time"):
        model(torch.zeros(1, 2, dtype=torch.long), kv_caches=caches)


@pytest.mark.parametrize("overrides, message", [
    (dict(top_k=5), "top_k=5 must be between 1 and n_experts=4"),
    (dict(top_k=0), "top_k=0 must be between 1"),
    (dict(n_embd=15), "not divisible by n_head"),
    (dict(router_dim=0), "router_dim=0 must be at least 1"),
    (dict(router="lstm"), "router='lstm' is not one of"),
    (dict(router="linear", router_passing="none"), "router_passing='none' does not apply to router='linear'"),
    (dict(router="mlp", router_shared_proj=True), "router_shared_proj=True does not apply to router='mlp'"),
    (dict(n_experts=0, router_passing="detach"), "does not apply to router='gru' in a dense model"),
])
def test_bad_model_config_is_a_clear_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_flops_per_token_equals_a_hand_count():
    """6 FLOPs per weight use, the shared GRU cell once per layer, plus attention scores."""
    model = GPT(tiny_config())
    c = model.config
    C, H, p, E, k, L, T, V = c.n_embd, c.mlp_hidden, c.router_dim, c.n_experts, c.top_k, c.n_layer, c.block_size, 11
    per_layer = (4 * C * C  # attention q, k, v and output projections
                 + k * 3 * C * H  # the token's k SwiGLU experts
                 + C * p + p * E  # Proj_i and G_i
                 + 6 * p * p + 6 * p  # the shared GRU cell, applied again at every layer
                 + 2 * C)  # two LayerNorm weights
    weight_uses = L * per_layer + C + V * C  # final LayerNorm, tied output head
    assert model.flops_per_token() == 6 * weight_uses + 12 * L * C * T


def test_bf16_autocast_keeps_the_router_softmax_in_fp32():
    """The CUDA path trains under bf16 autocast; the same autocast on CPU checks the dtypes meet."""
    torch.manual_seed(0)
    model = GPT(tiny_config()).float()
    idx = torch.randint(0, 11, (2, 16))
    _, loss32, _ = model(idx, idx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss16, aux = model(idx, idx)
    loss16.backward()
    assert logits.dtype == torch.bfloat16 and aux["routing"][0].probs.dtype == torch.float32
    assert abs(loss16.item() - loss32.item()) < 0.02
    assert model.blocks[0].mlp.w1.grad.dtype == torch.float32
