"""The training loop's pieces carry the run's meaning: the batches of a step, one optimizer step
(accumulation, clipping), the optimizer's groups, training and eval modes, the learning-rate
schedule. Each is tested on its own and, where the loop could undo it, through a run of
train.main in this process (a TINY model for a few steps)."""

import math
from contextlib import nullcontext

import numpy as np
import pytest
import torch

from rmoe.checkpoint import load_checkpoint, read_record
from conftest import train_here
from model import GPT, GPTConfig
from rmoe.training import TrainConfig, evaluate, learning_rate, train_batches, train_step


def tiny_model(**overrides):
    torch.manual_seed(0)
    settings = dict(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16, n_experts=4, top_k=2,
                    mlp_hidden=16, router="gru", router_dim=8)
    return GPT(GPTConfig(**{**settings, **overrides}))


@pytest.fixture
def forwards(monkeypatch):
    """Every GPT.forward of the test: its inputs, targets, training mode and whether grad is on."""
    calls = []
    forward = GPT.forward

    def recording(self, idx, targets=None, kv_caches=None):
        calls.append({"x": idx.clone(), "y": None if targets is None else targets.clone(),
                      "training": self.training, "grad": torch.is_grad_enabled()})
        return forward(self, idx, targets, kv_caches)
    monkeypatch.setattr(GPT, "forward", recording)
    return calls


# -----------------------------------------------------------------------------
# the batches of a step

def test_each_micro_step_and_process_of_a_step_gets_its_own_batch():
    data = np.arange(10_000, dtype=np.uint16) % 251
    cfg = TrainConfig(batch_size=3, gradient_accumulation_steps=4, seed=5)
    one = train_batches(data, cfg, 8, 7, 0, 4, "cpu")  # one process, 4 micro-steps
    assert len(one) == 4
    xs = [x for x, _ in one]
    for i in range(4):
        for j in range(i):
            assert not torch.equal(xs[i], xs[j]), (i, j)
    for x, y in one:
        assert torch.equal(y[:, :-1], x[:, 1:])  # targets are the next tokens
    # two processes with 2 micro-steps each see the same 4 batches, split between them
    two = train_batches(data, cfg, 8, 7, 0, 2, "cpu") + train_batches(data, cfg, 8, 7, 1, 2, "cpu")
    for (x1, y1), (x2, y2) in zip(one, two):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    # another step, another batch; the same step again, the same batch (resume sees the same data)
    assert not torch.equal(train_batches(data, cfg, 8, 8, 0, 4, "cpu")[0][0], xs[0])
    assert torch.equal(train_batches(data, cfg, 8, 7, 0, 4, "cpu")[0][0], xs[0])


def test_the_loop_feeds_each_micro_step_a_different_batch(tiny_data, tmp_path, forwards):
    train_here(tiny_data, tmp_path, "--max_iters=3", "--eval_interval=100", "--gradient_accumulation_steps=2")
    trained = [c for c in forwards if c["grad"]]
    assert len(trained) == 6  # 3 steps x 2 micro-steps
    xs = [c["x"] for c in trained]
    for i in range(len(xs)):
        for j in range(i):
            assert not torch.equal(xs[i], xs[j]), (i, j)  # not within a step, nor across steps
    for c in trained:
        assert torch.equal(c["y"][:, :-1], c["x"][:, 1:])


# -----------------------------------------------------------------------------
# one optimizer step: accumulation and clipping

class RecordingOptimizer:
    """Stands in for AdamW: step() keeps a copy of the gradients it would apply."""

    def __init__(self, params):
        self.params = list(params)
        self.seen = None

    def step(self):
        self.seen = [p.grad.clone() for p in self.params]

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None


def micro_batches(n=3):
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(n):
        x = torch.randint(0, 40, (2, 16), generator=g)
        batches.append((x, torch.randint(0, 40, (2, 16), generator=g)))
    return batches


def mean_of_micro_batch_gradients(model, batches):
    total = [torch.zeros_like(p) for p in model.parameters()]
    for x, y in batches:
        model.zero_grad(set_to_none=True)
        model(x, y)[1].backward()
        total = [t + p.grad for t, p in zip(total, model.parameters())]
    model.zero_grad(set_to_none=True)
    return [t / len(batches) for t in total]


def norm(grads):
    return torch.sqrt(sum(g.square().sum() for g in grads)).item()


def test_accumulated_gradient_is_the_mean_of_the_micro_batch_gradients():
    model, batches = tiny_model(), micro_batches(3)
    expected = mean_of_micro_batch_gradients(model, batches)
    optimizer = RecordingOptimizer(model.parameters())
    losses = train_step(model, optimizer, batches, 0, nullcontext(), ddp=False)
    for got, want in zip(optimizer.seen, expected):
        torch.testing.assert_close(got, want)
    lm = [model(x, y)[2]["lm_loss"] for x, y in batches]
    torch.testing.assert_close(losses[0], sum(lm))  # summed lm loss; the loop divides by the micro-steps
    assert all(p.grad is None for p in model.parameters())  # nothing left over for the next step


@pytest.mark.parametrize("clip", [1e-3, 1e6])
def test_gradient_norm_reaching_the_optimizer_is_clipped_to_grad_clip(clip):
    model, batches = tiny_model(), micro_batches(2)
    raw = mean_of_micro_batch_gradients(model, batches)
    optimizer = RecordingOptimizer(model.parameters())
    train_step(model, optimizer, batches, clip, nullcontext())
    assert norm(raw) > 1e-3  # so the small limit does clip
    if clip < norm(raw):  # scaled down to the limit, in the same direction
        assert norm(optimizer.seen) == pytest.approx(clip, rel=1e-4)
        for got, want in zip(optimizer.seen, raw):
            torch.testing.assert_close(got, want * clip / norm(raw), rtol=1e-4, atol=1e-9)
    else:  # below the limit: untouched
        for got, want in zip(optimizer.seen, raw):
            torch.testing.assert_close(got, want)


# -----------------------------------------------------------------------------
# training and eval modes

def test_training_forwards_are_in_training_mode_and_evaluations_in_eval_mode(tiny_data, tmp_path, forwards):
    train_here(tiny_data, tmp_path, "--max_iters=5", "--eval_interval=2", "--gradient_accumulation_steps=1",
               "--dropout=0.1")
    evaluations = [c for c in forwards if not c["grad"]]
    trained = [c for c in forwards if c["grad"]]
    assert len(evaluations) == 4 * 2 * 2  # steps 0, 2, 4 and 5; train and val; eval_iters=2
    assert len(trained) == 5
    assert all(c["training"] for c in trained)  # dropout is on at every step, also after an evaluation
    assert not any(c["training"] for c in evaluations)
    assert forwards[-1]["grad"] is False and forwards[0]["grad"] is False  # an evaluation first and last


def test_dropout_acts_in_training_mode_only():
    model = tiny_model(dropout=0.5)
    idx = torch.randint(0, 40, (2, 16), generator=torch.Generator().manual_seed(0))
    model.train()
    assert not torch.equal(model(idx, idx)[0], model(idx, idx)[0])  # dropout draws differ
    model.eval()
    a, b = model(idx, idx), model(idx, idx)
    assert torch.equal(a[0], b[0])
    for ra, rb in zip(a[2]["routing"], b[2]["routing"]):
        assert torch.equal(ra.logits, rb.logits)
    without = tiny_model(dropout=0.0).eval()
    torch.testing.assert_close(without(idx, idx)[0], a[0])  # eval mode is the model without dropout


def test_evaluate_is_deterministic_and_leaves_the_model_training(tiny_data):
    from rmoe.dataset import read_split
    model = tiny_model(dropout=0.5, vocab_size=64)
    data = {split: read_split(tiny_data, split) for split in ("train", "val")}
    cfg = TrainConfig(eval_iters=3, batch_size=2)
    first, routing = evaluate(model, data, cfg, 16, nullcontext(), "cpu")
    assert model.training
    second, _ = evaluate(model, data, cfg, 16, nullcontext(), "cpu")
    assert first == second
    assert len(routing) == 2 and set(first) == {"train", "val"}


# -----------------------------------------------------------------------------
# the optimizer's parameter groups

def test_norms_and_biases_are_not_decayed_and_every_matrix_is():
    model = tiny_model()
    optimizer = model.configure_optimizer(0.1, 1e-3, (0.9, 0.99), "cpu")
    assert sorted(g["weight_decay"] for g in optimizer.param_groups) == [0.0, 0.1]
    decayed = next(g for g in optimizer.param_groups if g["weight_decay"] == 0.1)["params"]
    kept = next(g for g in optimizer.param_groups if g["weight_decay"] == 0.0)["params"]
    assert decayed and kept
    assert all(p.dim() >= 2 for p in decayed) and all(p.dim() < 2 for p in kept)
    grouped = [id(p) for p in decayed + kept]
    assert len(grouped) == len(set(grouped))  # each parameter once
    assert set(grouped) == {id(p) for p in model.parameters()}  # and every one
    names = {id(p): n for n, p in model.named_parameters()}
    assert any("ln_" in names[id(p)] for p in kept)  # the LayerNorm weights are among the kept


def test_the_run_saves_the_decay_groups(tiny_data, tmp_path):
    train_here(tiny_data, tmp_path, "--max_iters=2", "--eval_interval=2", "--weight_decay=0.3")
    ckpt = load_checkpoint(str(tmp_path / "ckpt.pt"))
    groups = ckpt["optimizer"]["param_groups"]
    state = ckpt["optimizer"]["state"]
    model = GPT(GPTConfig(**ckpt["model_config"]))
    by_decay = {g["weight_decay"]: g["params"] for g in groups}
    assert set(by_decay) == {0.3, 0.0}
    assert len(by_decay[0.3]) == sum(p.dim() >= 2 for p in model.parameters())
    assert len(by_decay[0.0]) == sum(p.dim() < 2 for p in model.parameters())
    assert all(state[i]["exp_avg"].dim() >= 2 for i in by_decay[0.3])
    assert all(state[i]["exp_avg"].dim() < 2 for i in by_decay[0.0])


# -----------------------------------------------------------------------------
# the learning-rate schedule

def test_learning_rate_warms_up_peaks_decays_by_cosine_and_stays_at_min_lr():
    cfg = TrainConfig(learning_rate=1.0, min_lr=0.1, warmup_iters=10, lr_decay_iters=110, max_iters=200)
    lr = [learning_rate(step, cfg) for step in range(200)]
    assert lr[0] == pytest.approx(1 / 11)  # a first step that moves, but gently
    rises = np.diff(lr[:11])
    assert np.allclose(rises, rises[0]) and rises[0] > 0  # linear warm-up
    assert lr[10] == pytest.approx(1.0) and max(lr) == pytest.approx(1.0)  # the peak, at the end of warm-up
    assert lr[60] == pytest.approx((1.0 + 0.1) / 2)  # cosine midpoint
    assert lr[35] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert all(a > b for a, b in zip(lr[10:110], lr[11:111]))  # decays all the way
    assert lr[110] == pytest.approx(0.1) and all(x == pytest.approx(0.1) for x in lr[110:])


def test_the_run_trains_and_logs_at_the_scheduled_rate(tiny_data, tmp_path, monkeypatch):
    used = []  # the rate of each group at every optimizer step
    step = torch.optim.AdamW.step

    def recording(self, *args, **kwargs):
        used.append([g["lr"] for g in self.param_groups])
        return step(self, *args, **kwargs)
    monkeypatch.setattr(torch.optim.AdamW, "step", recording)
    args = ["--max_iters=7", "--eval_interval=100", "--warmup_iters=2", "--lr_decay_iters=5",
            "--learning_rate=1e-2", "--min_lr=1e-3"]
    train_here(tiny_data, tmp_path, *args)
    cfg = TrainConfig(max_iters=7, warmup_iters=2, lr_decay_iters=5, learning_rate=1e-2, min_lr=1e-3)
    expected = [learning_rate(s, cfg) for s in range(7)]
    assert len(set(expected)) > 4  # the schedule does change over the run
    assert used == [[lr, lr] for lr in expected]
    logged = [r for r in read_record(str(tmp_path)) if r["kind"] == "train"]
    assert [r["step"] for r in logged] == list(range(1, 8))
    for r in logged:  # the record's step s is the state after s updates; the s-th ran at step s - 1's rate
        assert r["lr"] == pytest.approx(learning_rate(r["step"] - 1, cfg))
