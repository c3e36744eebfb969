"""Every setting does what it says: a setting that never reaches the code that should use it fails here.

One table per script maps every setting to a probe, a check that changing the setting from its
default changes what it should, measured where it acts (the optimizer's param groups and its step,
the batches a step trains on, the output of each module a dropout is meant for, the routing, the
learning rate of each step, the text sampled, the rows scored), not where it is stored. The tables
are checked against the config dataclasses and DEFAULTS dicts themselves: a setting added later
without a probe fails test_every_setting_has_a_probe and its own parametrized case.

A setting that by design changes nothing in some mode (dropout in eval mode, router_dim for a
linear router, peak_tflops off CUDA, ...) says so in its help text (DECLARED_INERT); the probe
measures that it is inert there, and test_declared_inert_settings_say_so checks the words.
"""

import copy
import math
import os
import pickle
import shutil
import sys
from dataclasses import fields
from functools import partial
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import eval as eval_script
import sample
import train
from configurator import setting_comments
from conftest import train_here
from model import GPT, MLP, CausalSelfAttention, GPTConfig, MoE
from rmoe.checkpoint import load_checkpoint, read_record
from rmoe.training import TrainConfig, evaluate, learning_rate, train_batches
from router import ROUTERS

HELP = {"train": {**setting_comments(TrainConfig), **setting_comments(GPTConfig)},
        "sample": setting_comments(sample, "DEFAULTS"), "eval": setting_comments(eval_script, "DEFAULTS")}

# (script, setting) -> words its help must hold: where it changes nothing by design
DECLARED_INERT = {
    ("train", "dropout"): ("training only",),  # eval mode: evaluation, eval.py, sampling
    ("train", "peak_tflops"): ("CUDA only",),  # MFU is only measured on CUDA
    ("train", "router_dim"): ("gru and rnn only", "ignore"),  # routers without a recurrent state
    ("train", "router_mlp_hidden"): ("router=mlp only", "ignore"),
    ("sample", "top_k"): ("temperature 0",),  # greedy decoding samples nothing
    ("sample", "seed"): ("temperature 0",),
    ("sample", "trace_layer"): ("with trace", "terminal"),
    ("sample", "trace_topk"): ("with trace",),
    ("eval", "batch_size"): ("the scores are the same",),
}


def declared(script, name):
    """The probe measured that the setting is inert in some mode: its help must say so."""
    assert (script, name) in DECLARED_INERT, f"{script} setting {name} is inert in some mode but not declared"
    for words in DECLARED_INERT[script, name]:
        assert words in HELP[script].get(name, ""), f"the help of {name} does not say {words!r}"


# -----------------------------------------------------------------------------
# model

SMALL = dict(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16, n_experts=4, top_k=2, mlp_hidden=16,
             router_dim=8, router_mlp_hidden=8)


def config(**changes):
    return GPTConfig(**{**SMALL, **changes})


def model(**changes):
    torch.manual_seed(0)  # the same weights for every setting that shapes none
    return GPT(config(**changes))


def tokens(T=16, B=2, seed=1):
    return torch.randint(0, SMALL["vocab_size"], (B, T), generator=torch.Generator().manual_seed(seed))


def run_model(m, training=False, seed=0):
    m.train(training)
    torch.manual_seed(seed)
    idx = tokens(T=m.config.block_size)
    return m(idx, idx.roll(-1, dims=1))  # logits, loss, aux


def differ(a, b):
    return a.shape != b.shape or not torch.allclose(a, b, atol=1e-6, rtol=1e-5)


def same(a, b):
    return a.shape == b.shape and torch.equal(a, b)


def probe_block_size(ctx):
    for block_size in (8, 12):
        m = model(block_size=block_size)
        assert m.wpe.num_embeddings == block_size
        m(tokens(T=block_size))  # a whole block fits, one more token does not
        with pytest.raises(ValueError, match="longer than block_size"):
            m(tokens(T=block_size + 1))
        lengths = []  # generate's window is block_size long
        hook = m.register_forward_pre_hook(lambda mod, args: lengths.append(args[0].shape[1]))
        m.generate(tokens(T=4, B=1), 2 * block_size, kv_cache=False)
        hook.remove()
        assert max(lengths) == block_size
    # in training: the batches of each step and of each evaluation
    for block_size in (32, 16):
        spy = ctx.run(f"--block_size={block_size}")
        assert {x.shape[1] for step in spy.steps for x in step["x"]} == {block_size}
        assert {shape[1] for shapes in spy.evals for shape in shapes} == {block_size}
        assert spy.record[-1]["tokens"] == 2 * 2 * 4 * block_size  # steps x micro-steps x batch_size x block_size


def probe_vocab_size(ctx):
    for vocab_size in (40, 50):
        m = model(vocab_size=vocab_size)
        logits, _, _ = m(tokens())
        assert m.wte.num_embeddings == vocab_size and logits.shape[-1] == vocab_size
    spy = ctx.run()  # train.py sets it from the data
    with open(os.path.join(ctx.data, "meta.pkl"), "rb") as f:
        assert spy.steps[0]["model"].config.vocab_size == len(pickle.load(f)["itos"])


def probe_n_layer(ctx):
    for n_layer in (1, 3):
        m = model(n_layer=n_layer)
        _, _, aux = run_model(m)
        assert len(m.blocks) == n_layer and len(aux["routing"]) == n_layer
    for n_layer in (1, 8):  # and the GPT-2 init of the layers that write into the residual stream
        torch.manual_seed(0)
        m = GPT(config(n_layer=n_layer, n_embd=64, mlp_hidden=64))
        expected = 0.02 / math.sqrt(2 * n_layer)
        for w in (m.blocks[0].attn.c_proj.weight, m.blocks[0].mlp.w2):
            assert abs(w.std().item() / expected - 1) < 0.1, (n_layer, w.std().item(), expected)
        torch.manual_seed(0)
        dense = GPT(config(n_layer=n_layer, n_embd=64, mlp_hidden=64, n_experts=0))
        assert abs(dense.blocks[0].mlp.w2.std().item() / expected - 1) < 0.1


def reference_attention(attn, x, n_head):
    """Causal attention written out, with n_head heads, on attn's weights."""
    B, T, C = x.shape
    q, k, v = (x @ attn.c_attn.weight.T).split(C, dim=2)
    q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-2, -1) / math.sqrt(C // n_head)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    y = (F.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(B, T, C)
    return y @ attn.c_proj.weight.T


def probe_n_head(ctx):
    x = torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(3))
    outs = {}
    for n_head in (1, 2, 4):
        torch.manual_seed(0)
        attn = CausalSelfAttention(config(n_head=n_head)).eval()  # the same weights: n_head shapes none
        outs[n_head] = attn(x)
        assert torch.allclose(outs[n_head], reference_attention(attn, x, n_head), atol=1e-6)
    assert differ(outs[1], outs[2]) and differ(outs[2], outs[4])


def probe_n_embd(ctx):
    for n_embd in (16, 24):
        m = model(n_embd=n_embd)
        widths = []
        m.ln_f.register_forward_pre_hook(lambda mod, args: widths.append(args[0].shape[-1]))
        run_model(m)
        assert widths == [n_embd] and m.wte.embedding_dim == n_embd and m.blocks[0].mlp.w1.shape[1] == n_embd


def dropout_outputs(make, call, p):
    """(train-mode output, eval-mode output) of a module with dropout p, on fixed weights and input."""
    torch.manual_seed(0)
    module = make(config(dropout=p, router="linear"))
    x = torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(1)
    out_train = call(module.train(), x)
    with torch.no_grad():
        out_eval = call(module.eval(), x)
    return module, out_train.detach(), out_eval


def probe_dropout(ctx):
    modules = {"attention": (CausalSelfAttention, lambda m, x: m(x)),
               "dense MLP": (MLP, lambda m, x: m(x, None, None)[0]),
               "MoE": (MoE, lambda m, x: m(x, None, None)[0])}
    for what, (make, call) in modules.items():
        _, off_train, off_eval = dropout_outputs(make, call, 0.0)
        module, on_train, on_eval = dropout_outputs(make, call, 0.5)
        assert same(off_train, off_eval), what
        assert torch.allclose(on_eval, off_eval), f"dropout acts in eval mode in the {what}"
        assert differ(on_train, on_eval), f"dropout does not act in the {what} in training mode"
        zeros = (on_train == 0).float().mean().item()
        assert zeros > 0.3, f"the {what}'s output is not dropped out ({zeros:.2f} zeros)"
    # attention also drops attention weights, not only its output
    torch.manual_seed(0)
    attn = CausalSelfAttention(config(dropout=0.5))
    attn.resid_dropout = nn.Identity()
    x = torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.manual_seed(1)
        assert differ(attn.train()(x), attn.eval()(x)), "attention weights are not dropped out in training mode"
    # the embeddings, and the whole model
    inputs = {}
    for p in (0.0, 0.5):
        m = model(dropout=p)
        m.blocks[0].register_forward_pre_hook(lambda mod, args, p=p: inputs.update({(p, mod.training): args[0]}))
        logits_train, _, _ = run_model(m, training=True)
        logits_eval, _, _ = run_model(m, training=False)
        inputs[p, "logits"] = (logits_train, logits_eval)
    assert (inputs[0.5, True] == 0).float().mean() > 0.3, "the embeddings are not dropped out in training mode"
    assert same(inputs[0.5, False], inputs[0.0, False]) and same(inputs[0.0, True], inputs[0.0, False])
    assert torch.allclose(inputs[0.5, "logits"][1], inputs[0.0, "logits"][1])
    assert differ(inputs[0.5, "logits"][0], inputs[0.0, "logits"][0])
    declared("train", "dropout")
    # in training: evaluation is in eval mode, training steps are not; a resumed run takes a new dropout
    spy = ctx.run("--dropout=0.5", "--always_save_checkpoint=True")
    assert [step["training"] for step in spy.steps] == [True, True] and not any(spy.eval_training)
    assert all(m.p == 0.5 for m in spy.steps[0]["model"].modules() if isinstance(m, nn.Dropout))
    resumed = ctx.run("--init_from=resume", "--max_iters=3", "--dropout=0.25", out=spy.out)
    assert all(m.p == 0.25 for m in resumed.steps[0]["model"].modules() if isinstance(m, nn.Dropout))
    assert resumed.steps[0]["model"].blocks[0].attn.dropout == 0.25


def probe_n_experts(ctx):
    for n_experts in (3, 6):
        m = model(n_experts=n_experts)
        _, _, aux = run_model(m)
        assert m.blocks[0].mlp.w1.shape[0] == n_experts
        assert all(r.probs.shape[-1] == n_experts for r in aux["routing"])
    dense = model(n_experts=0)
    _, _, aux = run_model(dense)
    assert aux["routing"] == [] and all(isinstance(b.mlp, MLP) for b in dense.blocks)


def probe_top_k(ctx):
    outs = {}
    for top_k in (1, 3):
        m = model(top_k=top_k)
        logits, _, aux = run_model(m)
        assert all(r.topk_idx.shape[-1] == top_k for r in aux["routing"])
        outs[top_k] = logits
    assert differ(outs[1], outs[3])


def probe_mlp_hidden(ctx):
    for mlp_hidden in (16, 24):
        assert model(mlp_hidden=mlp_hidden).blocks[0].mlp.w1.shape[-1] == mlp_hidden
        assert model(mlp_hidden=mlp_hidden, n_experts=0).blocks[0].mlp.w1.shape[-1] == mlp_hidden


def probe_norm_topk(ctx):
    x = torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(3))
    out = {}
    for norm in (True, False):
        torch.manual_seed(0)
        moe = MoE(config(norm_topk=norm, router="linear"))
        out[norm] = moe(x, None, None)
    kept = out[True][2].probs.topk(2, dim=-1).values.sum(-1)  # the k gate scores of each token, summing to < 1
    assert (kept < 0.999).all()
    # unnormalised, each token's output is its normalised output times the sum of its k scores
    assert torch.allclose(out[False][0], out[True][0] * kept.view(2, 8, 1), atol=1e-6)


def routing_of(cfg, weights_seed=0):
    """What routing a config gives: parameter shapes, each layer's logits, and the gradient of
    a fixed function of all layers' logits with respect to every parameter."""
    torch.manual_seed(weights_seed)
    m = GPT(cfg)
    _, _, aux = m(tokens())
    logits = [r.logits for r in aux["routing"]]
    g = torch.Generator().manual_seed(2)
    objective = sum((lg * torch.randn(lg.shape, generator=g)).sum() for lg in logits)
    params = dict(m.named_parameters())
    grads = torch.autograd.grad(objective, list(params.values()), allow_unused=True)
    return {"shapes": {n: p.shape for n, p in params.items()}, "logits": [lg.detach() for lg in logits],
            "grads": {n: gr for n, gr in zip(params, grads) if gr is not None}, "model": m}


def routing_changed(a, b):
    if a["shapes"] != b["shapes"] or len(a["logits"]) != len(b["logits"]):
        return True
    if any(differ(x, y) for x, y in zip(a["logits"], b["logits"])):
        return True
    return a["grads"].keys() != b["grads"].keys() or any(differ(a["grads"][n], b["grads"][n]) for n in a["grads"])


def probe_router(ctx):
    seen = []
    for name, cls in ROUTERS.items():
        r = routing_of(config(router=name))
        assert all(type(b.mlp.router) is cls for b in r["model"].blocks)
        assert cls.cell is None or type(r["model"].router_core.cell) is cls.cell
        assert all(not same(r["logits"][0], other["logits"][0]) for other in seen)
        seen.append(r)


ROUTER_CHANGES = {"router_dim": [12], "router_passing": ["none", "detach"], "router_shared_proj": [True],
                  "router_mlp_hidden": [12]}


def test_router_settings_act_exactly_for_the_routers_that_read_them():
    """Every router_* setting changes the routing of every router that declares it, and for the others
    is refused (a switch) or ignored by design with help that says so (a size)."""
    router_fields = [f for f in fields(GPTConfig) if f.name.startswith("router_")]
    assert {f.name for f in router_fields} == set(ROUTER_CHANGES), "a router setting without a changed value here"
    for name, cls in ROUTERS.items():
        base = routing_of(config(router=name))
        for f in router_fields:
            for value in ROUTER_CHANGES[f.name]:
                if f.name in cls.settings:
                    assert routing_changed(base, routing_of(config(router=name, **{f.name: value}))), \
                        f"{f.name}={value!r} does not change the routing of router={name}"
                elif isinstance(f.default, (str, bool)):
                    with pytest.raises(ValueError, match=f.name):
                        config(router=name, **{f.name: value})
                else:
                    assert not routing_changed(base, routing_of(config(router=name, **{f.name: value})))
                    declared("train", f.name)


def probe_router_dim(ctx):
    for name in ("gru", "rnn"):
        for dim in (8, 12):
            m = model(router=name, router_dim=dim)
            states = []
            m.blocks[1].mlp.register_forward_hook(lambda mod, args, out: states.append(out[1]))
            run_model(m)
            assert states[0].shape[-1] == dim  # the recurrent state h has router_dim numbers per token
    for name in ("linear", "mlp"):
        assert not routing_changed(routing_of(config(router=name)), routing_of(config(router=name, router_dim=12)))
        declared("train", "router_dim")


def probe_router_passing(ctx):
    for name in ("gru", "rnn"):
        full = routing_of(config(router=name, n_layer=3))
        none = routing_of(config(router=name, n_layer=3, router_passing="none"))
        detach = routing_of(config(router=name, n_layer=3, router_passing="detach"))
        # none: every layer starts from h_0, so the first layer routes alike and the later ones do not
        assert same(full["logits"][0], none["logits"][0])
        assert all(differ(a, b) for a, b in zip(full["logits"][1:], none["logits"][1:]))
        # detach: the same routing, without the gradient through h_{i-1}
        assert all(torch.allclose(a, b) for a, b in zip(full["logits"], detach["logits"]))
        key = "blocks.0.mlp.router.proj.weight"
        assert differ(full["grads"][key], detach["grads"][key])


def probe_router_shared_proj(ctx):
    for name in ("gru", "rnn"):
        shared = model(router=name, router_shared_proj=True)
        assert shared.router_core.proj is not None and all(b.mlp.router.proj is None for b in shared.blocks)
        assert model(router=name).router_core.proj is None
        _, _, before = run_model(shared)
        with torch.no_grad():
            shared.router_core.proj.weight.mul_(2)
        _, _, after = run_model(shared)  # the one projection is every layer's
        assert all(differ(a.logits, b.logits) for a, b in zip(before["routing"], after["routing"]))


def probe_router_mlp_hidden(ctx):
    for hidden in (8, 12):
        m = model(router="mlp", router_mlp_hidden=hidden)
        widths = []
        m.blocks[0].mlp.router.gate.register_forward_pre_hook(lambda mod, args: widths.append(args[0].shape[-1]))
        run_model(m)
        assert widths == [hidden]
    for name in ("linear", "gru", "rnn"):
        assert not routing_changed(routing_of(config(router=name)),
                                   routing_of(config(router=name, router_mlp_hidden=12)))
        declared("train", "router_mlp_hidden")


def aux_loss_probe(coef_name, aux_name, ctx):
    results = {}
    for coef in (0.0, 0.5):
        m = model(**{"lb_loss_coef": 0.0, "z_loss_coef": 0.0, coef_name: coef})
        _, loss, aux = run_model(m)
        gate = m.blocks[0].mlp.router.gate.weight
        results[coef] = (loss.detach(), aux, torch.autograd.grad(loss, gate)[0])
    (loss0, aux0, grad0), (loss5, _, grad5) = results[0.0], results[0.5]
    assert aux0[aux_name] > 0
    assert torch.allclose(loss5 - loss0, 0.5 * aux0[aux_name], atol=1e-6)  # the loss holds coef * that loss
    assert differ(grad0, grad5)  # and so does its gradient reaching the router
    # in training, and on resume, which may change it
    spy = ctx.run(f"--{coef_name}=0.5", "--always_save_checkpoint=True")
    for run in (spy, ctx.run("--init_from=resume", "--max_iters=3", f"--{coef_name}=0.25", out=spy.out)):
        m, (x, y) = run.steps[0]["model"], run.steps[0]["batches"][0]
        _, loss, aux = m(x, y)
        coef = 0.5 if run is spy else 0.25
        other = "z_loss_coef" if coef_name == "lb_loss_coef" else "lb_loss_coef"
        rest = aux["lm_loss"] + getattr(GPTConfig(), other) * aux["z_loss" if aux_name == "lb_loss" else "lb_loss"]
        assert torch.allclose(loss, rest + coef * aux[aux_name], atol=1e-5)


def probe_lb_loss_coef(ctx):
    aux_loss_probe("lb_loss_coef", "lb_loss", ctx)


def probe_z_loss_coef(ctx):
    aux_loss_probe("z_loss_coef", "z_loss", ctx)


MODEL_PROBES = {
    "block_size": probe_block_size, "vocab_size": probe_vocab_size, "n_layer": probe_n_layer,
    "n_head": probe_n_head, "n_embd": probe_n_embd, "dropout": probe_dropout, "n_experts": probe_n_experts,
    "top_k": probe_top_k, "mlp_hidden": probe_mlp_hidden, "norm_topk": probe_norm_topk, "router": probe_router,
    "router_dim": probe_router_dim, "router_passing": probe_router_passing,
    "router_shared_proj": probe_router_shared_proj, "router_mlp_hidden": probe_router_mlp_hidden,
    "lb_loss_coef": probe_lb_loss_coef, "z_loss_coef": probe_z_loss_coef,
}

# a dense model (n_experts=0) has no routing: these change nothing in it (n_experts' help says dense)
DENSE_IGNORES = {"top_k": 1, "norm_topk": False, "router": "linear", "router_dim": 12, "router_mlp_hidden": 12,
                 "lb_loss_coef": 0.5, "z_loss_coef": 0.5}
DENSE_REFUSES = {"router_passing": "none", "router_shared_proj": True}


def test_a_dense_model_ignores_exactly_the_routing_settings():
    assert "0 = a dense MLP" in HELP["train"]["n_experts"]
    m = model(n_experts=0)
    logits, loss, _ = run_model(m)
    for name, value in DENSE_IGNORES.items():
        other = model(n_experts=0, **{name: value})
        o_logits, o_loss, _ = run_model(other)
        assert same(logits, o_logits) and same(loss, o_loss), name
        assert {n: p.shape for n, p in m.named_parameters()} == {n: p.shape for n, p in other.named_parameters()}
    for name, value in DENSE_REFUSES.items():
        with pytest.raises(ValueError, match="dense model"):
            config(n_experts=0, **{name: value})
    # and every other model setting still acts in a dense model
    for name, value in {"n_head": 4, "n_embd": 24, "n_layer": 3, "mlp_hidden": 24, "block_size": 12}.items():
        other = model(n_experts=0, **{name: value})
        assert {n: p.shape for n, p in m.named_parameters()} != {n: p.shape for n, p in other.named_parameters()} \
            or differ(logits, run_model(other)[0]), name
    assert (DENSE_IGNORES.keys() | DENSE_REFUSES.keys()) < MODEL_PROBES.keys()


# -----------------------------------------------------------------------------
# training: a run of train.main in this process, with its step and its evaluation watched

BASE = ["--max_iters=2", "--eval_interval=2", "--device=cpu"]


def grad_norm(model):
    return torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]).norm().item()


class Watch:
    """What reached the training step and the evaluation of a run of train.main."""

    def __init__(self, out):
        self.out, self.steps, self.evals, self.eval_training, self.eval_matmul, self.compiled = out, [], [], [], [], []


@pytest.fixture
def ctx(monkeypatch, tiny_data, tmp_path):
    real_step, real_eval = train.train_step, train.evaluate
    runs = []

    def run(*args, out=None, fixed_losses=False, data=tiny_data, mean_grad=False):
        watch = Watch(out or str(tmp_path / f"run{len(runs)}"))
        runs.append(watch)

        def step(model, optimizer, batches, grad_clip, autocast, ddp=False):
            with torch.no_grad():  # the micro-batches' losses before the step (no dropout in the probes using them)
                lm = [model(x, y)[2]["lm_loss"].item() for x, y in batches]
            if mean_grad:  # the norm of the gradient of the mean loss over the micro-batches, on a copy
                twin = copy.deepcopy(model)
                torch.stack([twin(x, y)[1] for x, y in batches]).mean().backward()
                mean_grad_norm = grad_norm(twin)
            with autocast:
                matmul = (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
            before = [p.detach().clone() for p in model.parameters()]
            norms = []
            real_opt_step = optimizer.step

            def opt_step(*a, **k):
                norms.append(grad_norm(model))
                return real_opt_step(*a, **k)
            optimizer.step = opt_step
            try:
                losses = real_step(model, optimizer, batches, grad_clip, autocast, ddp)
            finally:
                del optimizer.step
            watch.steps.append({
                "x": [x for x, _ in batches], "batches": batches, "model": model, "training": model.training,
                "groups": [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups],
                "mean_grad_norm": mean_grad_norm if mean_grad else None, "grad_norm": norms[0], "matmul": matmul,
                "lm": lm, "weights": before,
                "change": max((p.detach() - b).abs().max().item() for p, b in zip(model.parameters(), before))})
            return losses

        def evaluate_watched(model, data, cfg, block_size, autocast, device):
            shapes = []
            hook = model.register_forward_pre_hook(lambda mod, a: shapes.append(tuple(a[0].shape)))
            with autocast:
                watch.eval_matmul.append((torch.ones(2, 2) @ torch.ones(2, 2)).dtype)
            modes = []
            mode_hook = model.blocks[0].register_forward_pre_hook(lambda mod, a: modes.append(mod.training))
            try:
                result = real_eval(model, data, cfg, block_size, autocast, device)
            finally:
                hook.remove()
                mode_hook.remove()
            watch.evals.append(shapes)
            watch.eval_training.append(any(modes))
            if fixed_losses:
                return {"train": 1.0, "val": 1.0}, result[1]
            return result

        monkeypatch.setattr(train, "train_step", step)
        monkeypatch.setattr(train, "evaluate", evaluate_watched)
        monkeypatch.setattr(train, "compile_moe", lambda m: watch.compiled.append(m) or m)
        train_here(data, watch.out, *BASE, *args)
        watch.record = read_record(watch.out)
        return watch

    return SimpleNamespace(run=run, data=tiny_data, tmp_path=tmp_path, monkeypatch=monkeypatch)


def steps_of(watch, kind):
    return [r["step"] for r in watch.record if r["kind"] == kind]


def probe_out_dir(ctx):
    out = str(ctx.tmp_path / "elsewhere" / "out")
    watch = ctx.run("--always_save_checkpoint=True", out=out)
    assert os.path.exists(os.path.join(out, "ckpt.pt")) and steps_of(watch, "end") == [2]


def probe_init_from(ctx):
    first = ctx.run("--always_save_checkpoint=True")
    resumed = ctx.run("--init_from=resume", "--max_iters=4", out=first.out)
    assert len(resumed.steps) == 2 and steps_of(resumed, "train") == [1, 2, 3, 4]
    evals = {r["step"]: r["val_loss"] for r in resumed.record if r["kind"] == "eval"}
    assert evals[2] == [r["val_loss"] for r in first.record if r["kind"] == "eval" and r["step"] == 2][0]
    with pytest.raises(SystemExit, match="already exists"):  # scratch does not read it
        ctx.run("--max_iters=4", out=first.out)


def probe_eval_interval(ctx):
    assert steps_of(ctx.run("--max_iters=4", "--eval_interval=2"), "eval") == [0, 2, 4]
    assert steps_of(ctx.run("--max_iters=4", "--eval_interval=3"), "eval") == [0, 3, 4]


def probe_eval_iters(ctx):
    for eval_iters in (2, 3):
        watch = ctx.run(f"--eval_iters={eval_iters}")
        assert [len(shapes) for shapes in watch.evals] == [2 * eval_iters] * 2  # batches of train and val


def probe_log_interval(ctx):
    assert steps_of(ctx.run("--max_iters=4", "--log_interval=1"), "train") == [1, 2, 3, 4]
    assert steps_of(ctx.run("--max_iters=4", "--log_interval=2"), "train") == [2, 4]


def probe_always_save_checkpoint(ctx):
    # the val loss never improves after step 0: only always_save_checkpoint saves
    never = ctx.run("--max_iters=4", fixed_losses=True)
    assert not os.path.exists(os.path.join(never.out, "ckpt.pt"))
    always = ctx.run("--max_iters=4", "--always_save_checkpoint=True", fixed_losses=True)
    assert os.path.exists(os.path.join(always.out, "ckpt.pt"))


def probe_dataset(ctx):
    other = ctx.tmp_path / "other_data"
    other.mkdir()
    for name in ("val.bin", "meta.pkl"):
        (other / name).write_bytes(open(os.path.join(ctx.data, name), "rb").read())
    np.fromfile(os.path.join(ctx.data, "train.bin"), dtype=np.uint16)[::-1].tofile(other / "train.bin")
    a, b = ctx.run(), ctx.run(data=str(other))
    assert not torch.equal(a.steps[0]["x"][0], b.steps[0]["x"][0])


def probe_batch_size(ctx):
    for batch_size in (4, 3):
        watch = ctx.run(f"--batch_size={batch_size}")
        assert {x.shape[0] for step in watch.steps for x in step["x"]} == {batch_size}
        assert {shape[0] for shapes in watch.evals for shape in shapes} == {batch_size}
        assert watch.record[-1]["tokens"] == 2 * 2 * batch_size * 32


def probe_gradient_accumulation_steps(ctx):
    for gas in (2, 3):
        watch = ctx.run(f"--gradient_accumulation_steps={gas}", "--grad_clip=0", mean_grad=True)
        assert [len(step["x"]) for step in watch.steps] == [gas, gas]
        for step in watch.steps:  # the step follows the gradient of the micro-batches' mean loss
            assert math.isclose(step["grad_norm"], step["mean_grad_norm"], rel_tol=1e-4)
        logged = [r["loss"] for r in watch.record if r["kind"] == "train"]
        assert np.allclose(logged, [np.mean(step["lm"]) for step in watch.steps], rtol=1e-4)  # the step's mean
        assert watch.record[-1]["tokens"] == 2 * gas * 4 * 32


def check_schedule(watch, **settings):
    """Each step's optimizer runs at learning_rate(step) of the run's settings (TINY's warmup_iters=0)."""
    cfg = TrainConfig(**{"warmup_iters": 0, **settings})
    lrs = [{g["lr"] for g in step["groups"]} for step in watch.steps]
    assert lrs == [{learning_rate(i, cfg)} for i in range(len(watch.steps))], (lrs, cfg)


def assert_schedule(name, value):
    """learning_rate() follows its documented curve, written out here, for the setting changed to value, and
    the curve is not the default one: linear warm-up to learning_rate, cosine decay to min_lr, then min_lr."""
    cfg = TrainConfig(**{"warmup_iters": 10, "lr_decay_iters": 60, "max_iters": 100, name: value})
    peak, low, w, d = cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, cfg.lr_decay_iters
    expected = [peak * (s + 1) / (w + 1) if s < w else low if s >= d else
                low + (peak - low) * (1 + math.cos(math.pi * (s - w) / (d - w))) / 2 for s in range(100)]
    got = [learning_rate(s, cfg) for s in range(100)]
    assert np.allclose(got, expected, rtol=1e-9, atol=0), (name, value)
    default = TrainConfig(warmup_iters=10, lr_decay_iters=60, max_iters=100)
    assert got != [learning_rate(s, default) for s in range(100)], (name, value)


def probe_learning_rate(ctx):
    assert_schedule("learning_rate", 1e-3)
    for lr in (2e-3, 1e-3):
        watch = ctx.run(f"--learning_rate={lr}", "--grad_clip=0")
        check_schedule(watch, learning_rate=lr)
        # Adam's first step moves each weight with a gradient by about the rate
        assert abs(watch.steps[0]["change"] / lr - 1) < 0.05, watch.steps[0]["change"]


def probe_max_iters(ctx):
    for max_iters in (2, 3):
        watch = ctx.run(f"--max_iters={max_iters}")
        assert len(watch.steps) == max_iters and steps_of(watch, "end") == [max_iters]


def optimizer_steps(weight_decay=0.1, betas=(0.9, 0.99), grads=2, lr=1e-2):
    """The weights after `grads` AdamW steps with fixed, different gradients, from configure_optimizer."""
    m = model()
    opt = m.configure_optimizer(weight_decay, lr, betas, "cpu")
    g = torch.Generator().manual_seed(4)
    for _ in range(grads):
        for p in m.parameters():
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return m, opt


def check_groups(watch, **expected):
    for step in watch.steps:
        decay, no_decay = step["groups"]
        for key, value in expected.items():
            if key == "weight_decay":
                assert decay["weight_decay"] == value and no_decay["weight_decay"] == 0.0
            else:
                assert decay[key] == no_decay[key] == value, (key, decay[key], value)


def probe_weight_decay(ctx):
    base, _ = optimizer_steps(weight_decay=0.0)
    decayed, opt = optimizer_steps(weight_decay=0.5)
    assert opt.param_groups[0]["weight_decay"] == 0.5
    for (name, p), q in zip(decayed.named_parameters(), base.parameters()):
        assert differ(p, q) == (p.dim() >= 2), name  # matrices decay, norms do not
    watch = ctx.run("--weight_decay=0.05", "--always_save_checkpoint=True")
    check_groups(watch, weight_decay=0.05)
    check_groups(ctx.run("--init_from=resume", "--max_iters=3", "--weight_decay=0.0", out=watch.out), weight_decay=0.0)


def probe_beta(which, ctx):
    """beta1 (which=0) or beta2 (which=1): in the optimizer's groups and its step, fresh and on resume."""
    def betas(value):  # the default betas (0.9, 0.99) with this one replaced
        return tuple(value if i == which else default for i, default in enumerate((0.9, 0.99)))
    name = f"--beta{which + 1}"
    a, _ = optimizer_steps(betas=(0.9, 0.99))
    b, opt = optimizer_steps(betas=betas(0.5))
    assert opt.param_groups[0]["betas"] == betas(0.5) and differ(a.wte.weight, b.wte.weight)
    watch = ctx.run(f"{name}=0.8", "--always_save_checkpoint=True")
    check_groups(watch, betas=betas(0.8))
    check_groups(ctx.run("--init_from=resume", "--max_iters=3", f"{name}=0.7", out=watch.out), betas=betas(0.7))


def probe_grad_clip(ctx):
    free = ctx.run("--grad_clip=0")
    assert all(step["grad_norm"] > 1e-3 for step in free.steps)
    clipped = ctx.run("--grad_clip=1e-3")
    assert all(step["grad_norm"] <= 1e-3 * (1 + 1e-4) for step in clipped.steps)  # what the optimizer steps on


def probe_warmup_iters(ctx):
    assert_schedule("warmup_iters", 20)
    assert_schedule("warmup_iters", 0)
    watch = ctx.run("--warmup_iters=2", "--max_iters=3")
    check_schedule(watch, warmup_iters=2)
    assert watch.steps[0]["groups"][0]["lr"] < watch.steps[1]["groups"][0]["lr"] < watch.steps[2]["groups"][0]["lr"]


def probe_lr_decay_iters(ctx):
    assert_schedule("lr_decay_iters", 40)
    assert_schedule("lr_decay_iters", 90)
    watch = ctx.run("--lr_decay_iters=2", "--max_iters=3")
    check_schedule(watch, lr_decay_iters=2)


def probe_min_lr(ctx):
    assert_schedule("min_lr", 1e-5)
    assert_schedule("min_lr", 0.0)
    watch = ctx.run("--lr_decay_iters=1", "--min_lr=1e-4", "--max_iters=3")
    check_schedule(watch, lr_decay_iters=1, min_lr=1e-4)
    assert watch.steps[-1]["groups"][0]["lr"] == 1e-4


def probe_device(ctx):
    watch = ctx.run("--device=cpu")
    assert {x.device.type for step in watch.steps for x in step["x"]} == {"cpu"}
    assert next(watch.steps[0]["model"].parameters()).device.type == "cpu"
    if not torch.backends.mps.is_available():  # the setting is read: a device this machine lacks is refused
        with pytest.raises(SystemExit, match="device='mps' is not available"):
            ctx.run("--device=mps")
    if torch.cuda.is_available():
        watch = ctx.run("--device=cuda")
        assert {x.device.type for step in watch.steps for x in step["x"]} == {"cuda"}


def probe_dtype(ctx):
    assert {s["matmul"] for s in ctx.run("--dtype=float32").steps} == {torch.float32}
    watch = ctx.run("--dtype=bfloat16")
    assert {s["matmul"] for s in watch.steps} == {torch.bfloat16} and set(watch.eval_matmul) == {torch.bfloat16}


def probe_compile(ctx):
    assert ctx.run().compiled == []
    watch = ctx.run("--compile=True")
    assert watch.compiled == [watch.steps[0]["model"]]


def probe_seed(ctx):
    a, b = ctx.run("--seed=1"), ctx.run("--seed=2")
    assert not torch.equal(a.steps[0]["x"][0], b.steps[0]["x"][0])  # the data order
    assert not torch.equal(a.steps[0]["weights"][0], b.steps[0]["weights"][0])  # the initial weights
    assert torch.equal(a.steps[0]["weights"][0], ctx.run("--seed=1").steps[0]["weights"][0])
    data = {s: np.arange(999, dtype=np.uint16) % 40 for s in ("train", "val")}
    seen = {}
    for seed in (1, 2):  # the evaluation's fixed batches
        m = model(vocab_size=40)
        m.register_forward_pre_hook(lambda mod, a, seed=seed: seen.setdefault(seed, []).append(a[0]))
        evaluate(m, data, TrainConfig(seed=seed, eval_iters=1), 16, torch.autocast("cpu", enabled=False), "cpu")
    assert all(not torch.equal(a, b) for a, b in zip(seen[1], seen[2]))
    assert not torch.equal(train_batches(np.arange(999, dtype=np.uint16), TrainConfig(seed=1), 8, 0, 0, 1, "cpu")[0][0],
                           train_batches(np.arange(999, dtype=np.uint16), TrainConfig(seed=2), 8, 0, 0, 1, "cpu")[0][0])


def probe_peak_tflops(ctx):
    declared("train", "peak_tflops")
    cpu = ctx.run("--peak_tflops=100.0")
    assert all("mfu" not in r for r in cpu.record)
    if torch.cuda.is_available():
        a, b = (ctx.run("--device=cuda", f"--peak_tflops={p}") for p in (100.0, 200.0))
        ma, mb = ([r["mfu"] for r in w.record if r["kind"] == "train"] for w in (a, b))
        tokens_per_s = [[r["tokens_per_s"] for r in w.record if r["kind"] == "train"] for w in (a, b)]
        assert np.allclose(np.array(ma) / np.array(tokens_per_s[0]), 2 * np.array(mb) / np.array(tokens_per_s[1]))


TRAIN_PROBES = {
    "out_dir": probe_out_dir, "init_from": probe_init_from, "eval_interval": probe_eval_interval,
    "eval_iters": probe_eval_iters, "log_interval": probe_log_interval,
    "always_save_checkpoint": probe_always_save_checkpoint, "dataset": probe_dataset, "batch_size": probe_batch_size,
    "gradient_accumulation_steps": probe_gradient_accumulation_steps, "learning_rate": probe_learning_rate,
    "max_iters": probe_max_iters, "weight_decay": probe_weight_decay, "beta1": partial(probe_beta, 0),
    "beta2": partial(probe_beta, 1), "grad_clip": probe_grad_clip, "warmup_iters": probe_warmup_iters, "lr_decay_iters": probe_lr_decay_iters,
    "min_lr": probe_min_lr, "device": probe_device, "dtype": probe_dtype, "compile": probe_compile,
    "seed": probe_seed, "peak_tflops": probe_peak_tflops,
}


def test_evaluate_reads_its_settings_directly(tiny_data):
    """evaluate() outside the loop: eval_iters batches of batch_size per split, in eval mode."""
    data = {s: np.fromfile(os.path.join(tiny_data, f"{s}.bin"), dtype=np.uint16) for s in ("train", "val")}
    m = model(vocab_size=64, block_size=16, dropout=0.5)
    shapes = []
    m.register_forward_pre_hook(lambda mod, a: shapes.append((tuple(a[0].shape), mod.training)))
    evaluate(m, data, TrainConfig(eval_iters=3, batch_size=5), 16, torch.autocast("cpu", enabled=False), "cpu")
    assert shapes == [((5, 16), False)] * 6


# -----------------------------------------------------------------------------
# sample.py and eval.py on a checkpoint trained here

@pytest.fixture(scope="module")
def checkpoint(tiny_data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("settings_ckpt"))
    train_here(tiny_data, out, *BASE, "--always_save_checkpoint=True")
    return out


def sample_main(capsys, checkpoint, *args, tty=False):
    threads, isatty = torch.get_num_threads(), sys.stdout.isatty
    try:
        capsys.readouterr()
        if tty:
            sys.stdout.isatty = lambda: True  # capsys's stream, for this call only
        sample.main([f"--out_dir={checkpoint}", "--device=cpu", "--start=the ", "--max_new_tokens=12",
                     "--num_samples=2", *args])
        return capsys.readouterr().out
    finally:
        torch.set_num_threads(threads)
        sys.stdout.isatty = isatty


def texts(out):
    return [chunk.split("\nrouting of")[0] for chunk in out.split("---------------\n") if chunk]


def sp_out_dir(capsys, checkpoint, tmp_path, monkeypatch):
    assert texts(sample_main(capsys, checkpoint))[0].startswith("the ")
    with pytest.raises(SystemExit, match=f"no checkpoint at {tmp_path}"):
        sample_main(capsys, str(tmp_path))


def sp_start(capsys, checkpoint, tmp_path, monkeypatch):
    assert all(t.startswith("king") for t in texts(sample_main(capsys, checkpoint, "--start=king")))


def sp_num_samples(capsys, checkpoint, tmp_path, monkeypatch):
    assert len(texts(sample_main(capsys, checkpoint, "--num_samples=3"))) == 3
    assert len(texts(sample_main(capsys, checkpoint, "--num_samples=1"))) == 1


def sp_max_new_tokens(capsys, checkpoint, tmp_path, monkeypatch):
    for n in (0, 5):
        assert {len(t) for t in texts(sample_main(capsys, checkpoint, f"--max_new_tokens={n}"))} == {4 + n + 1}


def sp_temperature(capsys, checkpoint, tmp_path, monkeypatch):
    greedy = [sample_main(capsys, checkpoint, "--temperature=0", f"--seed={s}") for s in (1, 2)]
    assert greedy[0] == greedy[1] and len(set(texts(greedy[0]))) == 1  # argmax: no randomness
    assert sample_main(capsys, checkpoint, "--temperature=0.5") != sample_main(capsys, checkpoint, "--temperature=2.0")


def sp_top_k(capsys, checkpoint, tmp_path, monkeypatch):
    greedy = texts(sample_main(capsys, checkpoint, "--temperature=0"))
    assert texts(sample_main(capsys, checkpoint, "--temperature=1.0", "--top_k=1")) == greedy
    assert texts(sample_main(capsys, checkpoint, "--temperature=1.0")) != greedy
    greedy_out = sample_main(capsys, checkpoint, "--temperature=0")
    assert sample_main(capsys, checkpoint, "--temperature=0", "--top_k=1") == greedy_out
    declared("sample", "top_k")


def sp_seed(capsys, checkpoint, tmp_path, monkeypatch):
    one = sample_main(capsys, checkpoint, "--seed=1")
    assert one == sample_main(capsys, checkpoint, "--seed=1") != sample_main(capsys, checkpoint, "--seed=2")
    assert sample_main(capsys, checkpoint, "--seed=1", "--temperature=0") == sample_main(capsys, checkpoint, "--seed=2",
                                                                                         "--temperature=0")
    declared("sample", "seed")


def sp_device(capsys, checkpoint, tmp_path, monkeypatch):
    if not torch.backends.mps.is_available():
        with pytest.raises(SystemExit, match="device='mps' is not available"):
            sample_main(capsys, checkpoint, "--device=mps")
    calls = []
    real = GPT.generate

    def generate(self, idx, *a, **k):
        calls.append((idx.device.type, next(self.parameters()).device.type))
        return real(self, idx, *a, **k)
    monkeypatch.setattr(GPT, "generate", generate)
    sample_main(capsys, checkpoint, "--device=cpu")
    assert set(calls) == {("cpu", "cpu")}


def sp_trace(capsys, checkpoint, tmp_path, monkeypatch):
    assert "routing of the" in sample_main(capsys, checkpoint, "--trace=True")
    assert "routing of the" not in sample_main(capsys, checkpoint)


def coloured_line(out):
    return [line for line in out.splitlines() if "\x1b[" in line and "top-1 expert" not in line]


def sp_trace_layer(capsys, checkpoint, tmp_path, monkeypatch):
    layer0 = sample_main(capsys, checkpoint, "--trace=True", "--trace_layer=0", "--num_samples=1", tty=True)
    layer1 = sample_main(capsys, checkpoint, "--trace=True", "--trace_layer=1", "--num_samples=1", tty=True)
    assert "layer 0, top-1 expert" in layer0 and "layer 1, top-1 expert" in layer1
    assert coloured_line(layer0) != coloured_line(layer1)  # the colours follow the chosen layer's experts
    # inert without trace, and outside a terminal
    assert sample_main(capsys, checkpoint, "--trace_layer=1", tty=True) == sample_main(capsys, checkpoint, tty=True)
    assert sample_main(capsys, checkpoint, "--trace=True", "--trace_layer=1") == \
        sample_main(capsys, checkpoint, "--trace=True")
    declared("sample", "trace_layer")


def sp_trace_topk(capsys, checkpoint, tmp_path, monkeypatch):
    grid = [line for line in sample_main(capsys, checkpoint, "--trace=True", "--trace_topk=True").splitlines()
            if line[:5].strip().isdigit()]
    assert grid and all(line.count("/") >= 2 for line in grid)  # 2 layers, top-2 each
    top1 = [line for line in sample_main(capsys, checkpoint, "--trace=True").splitlines() if line[:5].strip().isdigit()]
    assert top1 and all("/" not in line.split("'")[-1] for line in top1)
    assert sample_main(capsys, checkpoint, "--trace_topk=True") == sample_main(capsys, checkpoint)
    declared("sample", "trace_topk")


def sp_threads(capsys, checkpoint, tmp_path, monkeypatch):
    seen = []
    real = sample.model_from_checkpoint
    monkeypatch.setattr(sample, "model_from_checkpoint", lambda *a: seen.append(torch.get_num_threads()) or real(*a))
    for threads in (1, 2):
        sample_main(capsys, checkpoint, f"--threads={threads}", "--max_new_tokens=0", "--num_samples=1")
    assert seen == [1, 2]


SAMPLE_PROBES = {
    "out_dir": sp_out_dir, "start": sp_start, "num_samples": sp_num_samples, "max_new_tokens": sp_max_new_tokens,
    "temperature": sp_temperature, "top_k": sp_top_k, "seed": sp_seed, "device": sp_device, "trace": sp_trace,
    "trace_layer": sp_trace_layer, "trace_topk": sp_trace_topk, "threads": sp_threads,
}


def eval_main(capsys, checkpoint, *args):
    threads = torch.get_num_threads()
    try:
        capsys.readouterr()
        eval_script.main([f"--out_dir={checkpoint}", "--device=cpu", *args])
        return capsys.readouterr().out
    finally:
        torch.set_num_threads(threads)


def rows(out):
    """split -> (tokens, loss) of eval.py's table."""
    return {line.split()[0]: (line.split()[1], float(line.split()[2])) for line in out.splitlines()
            if line.split() and line.split()[0] in ("train", "val", "test")}


def ev_out_dir(capsys, checkpoint, tmp_path, monkeypatch):
    assert checkpoint in eval_main(capsys, checkpoint)
    with pytest.raises(SystemExit, match=f"no checkpoint at {tmp_path}"):
        eval_main(capsys, str(tmp_path))


def ev_splits(capsys, checkpoint, tmp_path, monkeypatch):
    assert rows(eval_main(capsys, checkpoint)).keys() == {"val"}  # all: val, and test where there is one
    assert rows(eval_main(capsys, checkpoint, "--splits=train")).keys() == {"train"}
    assert rows(eval_main(capsys, checkpoint, "--splits=train,val")).keys() == {"train", "val"}


def ev_stride(capsys, checkpoint, tmp_path, monkeypatch):
    blocks, sliding = eval_main(capsys, checkpoint), eval_main(capsys, checkpoint, "--stride=8")
    assert "every 8" in sliding and "every 8" not in blocks
    assert rows(blocks)["val"][0] == rows(sliding)["val"][0]  # every target once either way
    assert rows(blocks)["val"][1] != rows(sliding)["val"][1]  # with more context


def ev_batch_size(capsys, checkpoint, tmp_path, monkeypatch):
    forwards = []
    real = eval_script.model_from_checkpoint

    def counted(*a):
        m = real(*a)
        m.register_forward_pre_hook(lambda mod, args: forwards.append(args[0].shape[0]))
        return m
    monkeypatch.setattr(eval_script, "model_from_checkpoint", counted)
    outs = {}
    for batch_size in (1, 8):
        forwards.clear()
        outs[batch_size] = eval_main(capsys, checkpoint, f"--batch_size={batch_size}")
        counts = list(forwards)
        n_windows = sum(counts)
        assert max(counts) == min(batch_size, n_windows) and len(counts) == math.ceil(n_windows / batch_size)
    assert n_windows > 8
    assert rows(outs[1]) == rows(outs[8])
    declared("eval", "batch_size")


def ev_device(capsys, checkpoint, tmp_path, monkeypatch):
    if not torch.backends.mps.is_available():
        with pytest.raises(SystemExit, match="device='mps' is not available"):
            eval_main(capsys, checkpoint, "--device=mps")
    devices = []
    real = eval_script.split_loss
    monkeypatch.setattr(eval_script, "split_loss",
                        lambda m, *a: devices.append((next(m.parameters()).device.type, a[3])) or real(m, *a))
    eval_main(capsys, checkpoint, "--device=cpu")
    assert devices == [("cpu", "cpu")]


def ev_threads(capsys, checkpoint, tmp_path, monkeypatch):
    seen = []
    real = eval_script.model_from_checkpoint
    monkeypatch.setattr(eval_script, "model_from_checkpoint",
                        lambda *a: seen.append(torch.get_num_threads()) or real(*a))
    monkeypatch.setattr(eval_script, "split_loss", lambda *a: (1.0, 1))  # no scoring needed
    for threads in (1, 2):
        eval_main(capsys, checkpoint, f"--threads={threads}")
    assert seen == [1, 2]


def ev_dataset(capsys, checkpoint, tmp_path, monkeypatch):
    """The splits are read from --dataset's folder (the same data moved), else from the checkpoint's dataset."""
    own = load_checkpoint(os.path.join(checkpoint, "ckpt.pt"))["train_config"]["dataset"]
    shutil.copytree(own, tmp_path / "moved")
    read = []
    real = eval_script.read_split
    monkeypatch.setattr(eval_script, "read_split", lambda data_dir, split: read.append(str(data_dir)) or real(data_dir, split))
    scores = [rows(eval_main(capsys, checkpoint, *args)) for args in ([], [f"--dataset={tmp_path / 'moved'}"])]
    assert read == [own, str(tmp_path / "moved")] and scores[0] == scores[1]


EVAL_PROBES = {"out_dir": ev_out_dir, "dataset": ev_dataset, "splits": ev_splits, "stride": ev_stride,
               "batch_size": ev_batch_size, "device": ev_device, "threads": ev_threads}


# -----------------------------------------------------------------------------
# the tables hold every setting, and every setting's probe passes

def test_every_setting_has_a_probe():
    assert MODEL_PROBES.keys() == {f.name for f in fields(GPTConfig)}
    assert TRAIN_PROBES.keys() == {f.name for f in fields(TrainConfig)}
    assert SAMPLE_PROBES.keys() == sample.DEFAULTS.keys()
    assert EVAL_PROBES.keys() == eval_script.DEFAULTS.keys()


def test_every_setting_has_help():
    for script, names in (("train", [f.name for f in fields(TrainConfig) + fields(GPTConfig)]),
                          ("sample", sample.DEFAULTS), ("eval", eval_script.DEFAULTS)):
        assert [n for n in names if not HELP[script].get(n)] == [], script


def test_declared_inert_settings_say_so():
    for (script, name), words in DECLARED_INERT.items():
        for w in words:
            assert w in HELP[script][name], (script, name, w)


@pytest.mark.parametrize("name", [f.name for f in fields(GPTConfig)])
def test_model_setting_acts(name, ctx):
    assert name in MODEL_PROBES, f"GPTConfig.{name} has no probe in tests/test_settings.py"
    MODEL_PROBES[name](ctx)


@pytest.mark.parametrize("name", [f.name for f in fields(TrainConfig)])
def test_training_setting_acts(name, ctx):
    assert name in TRAIN_PROBES, f"TrainConfig.{name} has no probe in tests/test_settings.py"
    TRAIN_PROBES[name](ctx)


@pytest.mark.parametrize("name", list(sample.DEFAULTS))
def test_sample_setting_acts(name, capsys, checkpoint, tmp_path, monkeypatch):
    assert name in SAMPLE_PROBES, f"sample.py's {name} has no probe in tests/test_settings.py"
    SAMPLE_PROBES[name](capsys, checkpoint, tmp_path, monkeypatch)


@pytest.mark.parametrize("name", list(eval_script.DEFAULTS))
def test_eval_setting_acts(name, capsys, checkpoint, tmp_path, monkeypatch):
    assert name in EVAL_PROBES, f"eval.py's {name} has no probe in tests/test_settings.py"
    EVAL_PROBES[name](capsys, checkpoint, tmp_path, monkeypatch)
