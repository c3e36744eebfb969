"""
How fast rmoe runs on this machine, as ratios timed side by side in one run.

    python bench.py                                   # every row, at the default (rmoe_small) shapes
    python bench.py --uniform=True                    # experts get tokens round-robin
    python bench.py --rows=step --config=config/rmoe_gpu.py --device=cuda

Rows:
  layer    one MoE layer (linear router), forward + backward, against a dense SwiGLU MLP
           with the same active parameters (hidden = top_k x mlp_hidden), on the same tokens
  step     one training step (forward, backward, clipping, AdamW) of the config's RMoE, the
           same model with a linear router (SMoE) and with a dense MLP (same active
           parameters); time ratios next to the ratios of their counted FLOPs
  sample   generate() of sample_tokens tokens with and without the KV cache
  profile  where one RMoE training step's time goes, from the PyTorch profiler

In each round A and B run once each, back to back, so a busy moment slows both; a
ratio is the median over rounds of time(A) / time(B). MFU is against the
matmul peak measured here, in the benchmark's dtype. --uniform=True sends
token n to experts (n*k + j) mod E, j < k: every expert gets the same load,
which times the kernels apart from what the router learned.
"""

import statistics
import sys
import time
from dataclasses import fields
from functools import partial

import torch
from torch.autograd.profiler import record_function
from torch.profiler import profile

from configurator import ConfigError, fail, parse_args, precision, run_script, script_settings
from model import GPT, MLP, CausalSelfAttention, GPTConfig, MoE, compile_moe
from router import Router, RouterCore
from rmoe.training import MODEL_KEYS, TrainConfig, default_settings, train_step

DEFAULTS = {
    "config": "config/rmoe_small.py",  # the RMoE training config whose shapes are timed
    "rows": "layer,step,sample,profile",  # which rows to time, comma-separated (see above)
    "device": "auto",  # auto | cpu | cuda | cuda:N | mps
    "dtype": "float32",  # float32 | bfloat16 (autocast, as train.py does)
    "rounds": 20,  # timed rounds per ratio (a third of them for sampling, which is slow)
    "uniform": False,  # force an even expert load
    "compile": False,  # torch.compile the models of the step row
    "sample_tokens": 500,  # tokens generated per timing of the sample row
    "vocab_size": 84,  # shakespeare_char's vocabulary
    "seed": 1337,  # seed of the random weights and inputs
}
ROWS = ("layer", "step", "sample", "profile")


def main(argv):
    cfg, device = script_settings(sys.modules[__name__], argv)
    try:
        settings, _ = parse_args(default_settings(), [cfg["config"]], "")
        TrainConfig(**{f.name: settings[f.name] for f in fields(TrainConfig)})  # train.py's checks
    except (ConfigError, ValueError) as e:
        fail(e)
    rows = cfg["rows"].split(",")
    if not set(rows) <= set(ROWS):
        fail(f"rows={cfg['rows']!r}: each row must be one of {', '.join(ROWS)}")
    if cfg["dtype"] not in ("float32", "bfloat16"):
        fail(f"dtype={cfg['dtype']!r} must be float32 or bfloat16")
    if cfg["rounds"] < 1 or cfg["sample_tokens"] < 1:
        fail("rounds and sample_tokens must be at least 1")
    torch.manual_seed(cfg["seed"])
    model_settings = {k: settings[k] for k in MODEL_KEYS}
    try:
        rmoe = GPTConfig(**model_settings, vocab_size=cfg["vocab_size"])
        if not rmoe.is_moe:
            raise ValueError(f"{cfg['config']} is dense (n_experts=0); give an RMoE config (n_experts > 0, "
                             f"router gru or rnn) such as config/rmoe_small.py")
        if not rmoe.has_router_core:
            raise ValueError(f"{cfg['config']} has router={rmoe.router!r}; give an RMoE config (router gru or rnn) "
                             f"such as config/rmoe_small.py")
    except ValueError as e:
        fail(e)
    plain = {f.name: f.default for f in fields(GPTConfig) if f.name.startswith("router_")}  # no ablation switch
    smoe = GPTConfig(**{**model_settings, **plain, "router": "linear"}, vocab_size=cfg["vocab_size"])
    dense = GPTConfig(**{**model_settings, **plain, "n_experts": 0, "mlp_hidden": rmoe.top_k * rmoe.mlp_hidden},
                      vocab_size=cfg["vocab_size"])
    bench = Bench(device, cfg["dtype"], cfg["rounds"], cfg["uniform"], cfg["compile"])
    batch = (settings["batch_size"], rmoe.block_size)

    print(f"{device}, {cfg['dtype']}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"{cfg['config']}: batch {batch[0]} x {batch[1]} tokens, {rmoe.n_layer} layers x {rmoe.n_embd}, "
          f"{rmoe.n_experts} experts top-{rmoe.top_k} (hidden {rmoe.mlp_hidden}), router p={rmoe.router_dim}"
          f"{', uniform expert load' if cfg['uniform'] else ''}")
    print(f"matmul peak measured here: {bench.peak_flops / 1e9:,.0f} GFLOP/s")
    print(f"{'row':<52} {'ratio':>7} {'A':>10} {'B':>10}")
    if "layer" in rows:
        bench.layer(smoe, dense, batch)
    if "step" in rows:
        bench.steps(rmoe, smoe, dense, batch)
    if "sample" in rows:
        bench.sample(rmoe, cfg["sample_tokens"])
    if "profile" in rows:
        bench.profile(rmoe, batch)


class Bench:

    def __init__(self, device, dtype, rounds, uniform, compile):
        self.device, self.rounds, self.uniform, self.compile = device, rounds, uniform, compile
        _, self.autocast = precision(device, dtype)
        self.peak_flops = self.matmul_peak(torch.bfloat16 if dtype == "bfloat16" else torch.float32)

    def sync(self):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def seconds(self, fn, n=1):
        self.sync()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        self.sync()
        return (time.perf_counter() - t0) / n

    def side_by_side(self, a, b, rounds):
        """Median seconds of a and of b, and the median over rounds of time(a) / time(b)."""
        a(), b()  # warm-up: allocator, lazy init, compile
        times = []
        for r in range(rounds):
            if r % 2:  # alternate which runs first, so neither always follows the other
                tb, ta = self.seconds(b), self.seconds(a)
            else:
                ta, tb = self.seconds(a), self.seconds(b)
            times.append((ta, tb))
        return (statistics.median(ta for ta, _ in times), statistics.median(tb for _, tb in times),
                statistics.median(ta / tb for ta, tb in times))

    def matmul_peak(self, dtype):
        n = 4096 if self.device.startswith("cuda") else 1024
        a, b = (torch.randn(n, n, device=self.device, dtype=dtype) for _ in range(2))
        a @ b
        return 2 * n ** 3 / min(self.seconds(lambda: a @ b, 5) for _ in range(3))

    def show(self, name, a, b, ratio, unit="ms"):
        print(f"{name:<52} {ratio:>6.2f}x {a * 1e3:>7.1f} {unit} {b * 1e3:>7.1f} {unit}")

    def force_uniform(self, model):
        """Make every MoE router's top-k pick experts round-robin (the logits' graph is kept)."""
        for m in model.modules():
            if isinstance(m, MoE):
                m.router.register_forward_hook(round_robin_logits(m.top_k))

    def compiled(self, model):
        return compile_moe(model) if self.compile else model

    def timed_step(self, model, batch):
        if self.uniform:
            self.force_uniform(model)
        optimizer = model.configure_optimizer(0.1, 1e-3, (0.9, 0.99), self.device.split(":")[0])
        x = torch.randint(0, model.config.vocab_size, batch, device=self.device)
        return partial(train_step, model, optimizer, [(x, x)], 1.0, self.autocast)  # train.py's own step

    def layer(self, smoe, dense, batch):
        moe, mlp = MoE(smoe).to(self.device), MLP(dense).to(self.device)
        if self.uniform:
            self.force_uniform(moe)
        x = torch.randn(*batch, smoe.n_embd, device=self.device, requires_grad=True)

        def run(layer):
            def fwd_bwd():
                with self.autocast:
                    y, _, _ = layer(x, None, None)
                y.float().square().mean().backward()
            return fwd_bwd
        a, b, ratio = self.side_by_side(run(moe), run(mlp), 3 * self.rounds)
        self.show(f"MoE layer ({smoe.n_experts} experts top-{smoe.top_k}) / dense MLP, fwd+bwd", a, b, ratio)

    def steps(self, rmoe, smoe, dense, batch):
        models = {name: GPT(c).to(self.device) for name, c in (("RMoE", rmoe), ("SMoE", smoe), ("dense", dense))}
        step = {name: self.timed_step(self.compiled(m), batch) for name, m in models.items()}
        flops = {name: m.flops_per_token() for name, m in models.items()}
        tokens = batch[0] * batch[1]
        for a, b in (("RMoE", "SMoE"), ("SMoE", "dense")):
            ta, tb, ratio = self.side_by_side(step[a], step[b], self.rounds)
            self.show(f"training step {a} / {b} (FLOPs {flops[a] / flops[b]:.3f}x)", ta, tb, ratio)
            for name, t in ((a, ta), (b, tb)):
                print(f"    {name}: {tokens / t:,.0f} tok/s, {flops[name] / 1e6:.2f} MFLOP/token, "
                      f"MFU {100 * flops[name] * tokens / t / self.peak_flops:.0f}% of the measured peak")

    def sample(self, rmoe, n_tokens):
        model = GPT(rmoe).to(self.device).eval()  # no --uniform here: one token per step cannot be spread
        prompt = torch.zeros(1, 1, dtype=torch.long, device=self.device)

        def generate(kv_cache):
            def run():
                with self.autocast:
                    model.generate(prompt, n_tokens, temperature=1.0, kv_cache=kv_cache)
            return run
        ta, tb, ratio = self.side_by_side(generate(False), generate(True), max(1, self.rounds // 3))
        self.show(f"sampling {n_tokens} tokens: without / with the KV cache", ta, tb, ratio, unit="ms")
        print(f"    {n_tokens / ta:,.0f} tokens/s without, {n_tokens / tb:,.0f} tokens/s with the cache")

    def profile(self, rmoe, batch):
        """Self time of every profiled op, attributed to the innermost labelled module; a backward
        op goes where the forward op that created its autograd node ran (same sequence number)."""
        model = GPT(rmoe).to(self.device)
        labels = {CausalSelfAttention: "attention", MoE: "experts and dispatch", Router: "router (Proj_i, G_i)",
                  RouterCore: "recurrent cell"}
        for m in model.modules():
            for kind, name in labels.items():
                if isinstance(m, kind):
                    label(m.cell if isinstance(m, RouterCore) else m, name)
        step = self.timed_step(model, batch)
        step()
        with profile() as prof:
            for _ in range(3):  # one step can catch a busy moment of the machine
                step()
            self.sync()
        events = prof.events()
        names = set(labels.values())
        created_in = {}  # autograd sequence number -> label of the forward op that created the node

        def owner(event):
            while event is not None:
                if event.name in names:
                    return event.name
                if event.name.startswith("autograd::engine::evaluate_function"):
                    return created_in.get(event.sequence_nr, "rest")
                if event.name.startswith("Optimizer.step"):
                    return "optimizer"
                event = event.cpu_parent
            return "rest"
        for e in events:
            if e.sequence_nr >= 0 and not e.name.startswith("autograd"):
                created_in.setdefault(e.sequence_nr, owner(e))
        spent = {}
        for e in events:
            spent[owner(e)] = spent.get(owner(e), 0) + e.self_cpu_time_total
        total = sum(spent.values())
        order = ["attention", "experts and dispatch", "router (Proj_i, G_i)", "recurrent cell", "optimizer", "rest"]
        print("where an RMoE training step's CPU time goes (3 steps, profiler self time):")
        print("    " + ", ".join(f"{name} {100 * spent.get(name, 0) / total:.0f}%" for name in order))
        print("    (rest: embeddings, norms, the head and loss, the load-balance loss, gradient clipping)")


def round_robin_logits(k):
    """A forward hook for a router: token n's top-k become experts (n*k + j) mod E, j < k."""
    def hook(router, args, out):
        logits, h = out  # (N, E)
        N, E = logits.shape
        picks = (torch.arange(N, device=logits.device)[:, None] * k + torch.arange(k, device=logits.device)) % E
        forced = torch.zeros_like(logits).scatter_(1, picks, 10.0)  # (N, E) the k picks far ahead
        return forced + 0 * logits, h  # + 0 * logits: the router's backward still runs
    return hook


def label(module, name):
    """Wrap the module's forward in a profiler range called name."""
    def enter(m, args):
        m.profiler_range = record_function(name)
        m.profiler_range.__enter__()

    def leave(m, args, out):
        m.profiler_range.__exit__(None, None, None)
    module.register_forward_pre_hook(enter)
    module.register_forward_hook(leave)


if __name__ == "__main__":
    run_script(main, sys.argv[1:])
