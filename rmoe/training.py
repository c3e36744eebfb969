"""
The training settings and the pieces of one training step, shared by train.py (which runs
them), bench.py (which times train_step), compare.py and the experiment tools (which check
a run's settings before starting it).

    TrainConfig        every training setting with its default and meaning, checked on construction
    MODEL_KEYS         the model settings train.py takes (all of GPTConfig but vocab_size, which the data sets)
    RESUME_MAY_CHANGE  the model settings a resumed run may change: they shape no weight
    default_settings   the training and model settings train.py takes, with their defaults
    check_settings     a settings dict -> (TrainConfig, model settings), or a one-line ValueError
    resumed_settings   what a resumed run trains with: the checkpoint's settings and the ones given now
    start_processes    one process, or this process's place under torchrun (DDP)
    learning_rate      warm-up, cosine decay, floor
    train_batches      the seeded micro-batches of a step (the same on resume and at any process count)
    train_step         forward, backward, clip, AdamW
    evaluate           the loss on fixed batches of each split, and the routing statistics on val
"""

import hashlib
import math
import os
from dataclasses import asdict, dataclass, fields

import torch
import torch.distributed as dist

from model import GPTConfig
from rmoe.dataset import get_batch
from rmoe.routing_stats import routing_by_layer, routing_summary


@dataclass
class TrainConfig:
    # I/O
    out_dir: str = "out"  # folder of ckpt.pt, log.jsonl and the lock of this run
    init_from: str = "scratch"  # scratch | resume (from out_dir/ckpt.pt)
    eval_interval: int = 250  # steps between evaluations (and checkpoints)
    eval_iters: int = 20  # batches per split per evaluation, the same batches every time
    log_interval: int = 50  # steps between lines of the training log and records in log.jsonl
    always_save_checkpoint: bool = False  # save at every evaluation, not only when val loss improves
    # data
    dataset: str = "shakespeare_char"  # a folder under data/, or a path to a folder with train.bin, val.bin
    batch_size: int = 8  # sequences per micro-step in each process
    gradient_accumulation_steps: int = 2  # micro-steps per optimizer step, over all processes together
    # AdamW, linear warm-up, then cosine decay to min_lr
    learning_rate: float = 2e-3  # the peak rate, reached at the end of warm-up
    max_iters: int = 2000  # optimizer steps of the whole run
    weight_decay: float = 0.1  # AdamW decay of matrices (not norms and biases)
    beta1: float = 0.9  # AdamW first-moment decay
    beta2: float = 0.99  # AdamW second-moment decay
    grad_clip: float = 1.0  # 0 disables clipping
    warmup_iters: int = 100  # steps of linear warm-up; must end before max_iters
    lr_decay_iters: int = 2000  # after this many steps the rate stays at min_lr
    min_lr: float = 2e-4  # the rate after lr_decay_iters
    # system
    device: str = "auto"  # auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (bfloat16 on a CUDA GPU that has it, else float32) | float32 | bfloat16
    compile: bool = False  # torch.compile the model
    seed: int = 1337  # weights, dropout and the order of the data; compare.py varies it
    peak_tflops: float = 312.0  # your GPU's bf16 peak, for MFU (A100 312, H100 SXM 989); CUDA only, unused elsewhere

    def __post_init__(self):
        if self.init_from not in ("scratch", "resume"):
            raise ValueError(f"init_from={self.init_from!r} must be 'scratch' or 'resume'")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"dtype={self.dtype!r} must be auto, float32 or bfloat16")
        for name in ("eval_interval", "eval_iters", "log_interval", "batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        for name in ("max_iters", "warmup_iters", "lr_decay_iters", "min_lr", "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must not be negative")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate={self.learning_rate} must be positive")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1)")
        if not 0 <= self.seed < 2 ** 63:
            raise ValueError(f"seed={self.seed} must be in [0, 2**63)")
        if self.max_iters and self.warmup_iters >= self.max_iters:
            raise ValueError(f"warmup_iters={self.warmup_iters} is not below max_iters={self.max_iters}: the run "
                             f"would never leave warm-up; lower --warmup_iters")
        if not self.out_dir or os.path.isfile(self.out_dir):
            raise ValueError(f"out_dir={self.out_dir!r} must name a folder (it may not exist yet)")


MODEL_KEYS = [f.name for f in fields(GPTConfig) if f.name != "vocab_size"]  # vocab_size comes from the data
RESUME_MAY_CHANGE = {"dropout", "lb_loss_coef", "z_loss_coef"}  # model settings that shape no weight


def default_settings():
    """Every setting train.py takes, training and model, with its default."""
    return {**asdict(TrainConfig()), **{k: getattr(GPTConfig(), k) for k in MODEL_KEYS}}


def check_settings(settings):
    """(TrainConfig, model settings) of a settings dict; a bad value is a ValueError, before anything is touched."""
    model_settings = {k: settings[k] for k in MODEL_KEYS}
    GPTConfig(**model_settings)
    return TrainConfig(**{f.name: settings[f.name] for f in fields(TrainConfig)}), model_settings


def start_processes(device, gradient_accumulation_steps):
    """(ddp, rank, world_size, device) of this process. Under torchrun (RANK set) it joins the
    process group: nccl, one GPU per process, or gloo on CPU."""
    if "RANK" not in os.environ:
        return False, 0, 1, device
    rank, local_rank, world_size = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    if gradient_accumulation_steps % world_size:  # before the processes start waiting for each other
        raise ValueError(f"gradient_accumulation_steps={gradient_accumulation_steps} is not divisible by the "
                         f"{world_size} processes; make it a multiple of {world_size}")
    if device.startswith("cuda"):
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    elif device != "cpu":
        raise ValueError(f"DDP runs on CUDA (nccl) or CPU (gloo), not {device}; pass --device=cpu")
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return True, rank, world_size, device


def learning_rate(step, cfg):
    """Linear warm-up to learning_rate over warmup_iters steps, cosine decay to min_lr at lr_decay_iters, then min_lr."""
    if step < cfg.warmup_iters:
        return cfg.learning_rate * (step + 1) / (cfg.warmup_iters + 1)
    if step >= cfg.lr_decay_iters:
        return cfg.min_lr
    progress = (step - cfg.warmup_iters) / max(1, cfg.lr_decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)


def train_batches(data, cfg, block_size, step, rank, micro_steps, device):
    """This process's micro-batches of a step. Each is a function of (seed, step, micro-step over all
    processes): every micro-step and process sees its own batch, and resume or any process count sees
    the same data."""
    return [get_batch(data, block_size, cfg.batch_size, seeded_generator(cfg.seed, "train", step, micro), device)
            for micro in range(rank * micro_steps, (rank + 1) * micro_steps)]


def train_step(model, optimizer, batches, grad_clip, autocast, ddp=False):
    """One optimizer step: the gradient of the mean loss over the micro-batches (DDP's all-reduce then
    averages over processes), its norm clipped to grad_clip (0: no clipping). Returns the lm, lb and
    z losses summed over the micro-batches, a (3,) tensor left on the device."""
    step_losses = 0
    for micro, (x, y) in enumerate(batches):
        if ddp:
            model.require_backward_grad_sync = micro == len(batches) - 1  # all-reduce once, on the last
        with autocast:
            _, loss, aux = model(x, y)
        (loss / len(batches)).backward()
        step_losses = step_losses + torch.stack([aux[k].float().to(x.device) for k in ("lm_loss", "lb_loss", "z_loss")])
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return step_losses


@torch.no_grad()
def evaluate(model, data, cfg, block_size, autocast, device):
    """Mean lm loss on the same eval_iters batches of each split every time (in eval mode: no dropout),
    and the routing statistics on val. Leaves the model in training mode."""
    model.eval()
    losses, routing = {}, []
    for split in ("train", "val"):
        total = 0.0
        for k in range(cfg.eval_iters):
            x, y = get_batch(data[split], block_size, cfg.batch_size, seeded_generator(cfg.seed, "eval", split, k),
                             device)
            with autocast:
                _, _, aux = model(x, y)
            total += aux["lm_loss"].item()
            if split == "val":
                routing.append(aux["routing"])
        losses[split] = total / cfg.eval_iters
    model.train()
    return losses, [routing_summary(r.probs, r.topk_idx) for r in routing_by_layer(routing)]


def resumed_settings(settings, explicit, ckpt):
    """The checkpoint's settings, except those given explicitly now. A model setting given
    explicitly must equal the checkpoint's (the weights are made for it), but for the few
    that shape no weight (RESUME_MAY_CHANGE)."""
    saved = {**ckpt["train_config"], **ckpt["model_config"]}
    conflicts = [f"{k}={settings[k]!r} (checkpoint: {saved[k]!r})" for k in MODEL_KEYS
                 if k in explicit and k not in RESUME_MAY_CHANGE and settings[k] != saved.get(k)]
    if conflicts:
        raise ValueError(f"settings conflict with the checkpoint's model: {', '.join(conflicts)}; "
                         f"drop them to resume, or start a new --out_dir")
    keep = explicit | {"out_dir", "init_from"}  # where the checkpoint is now, not where it was written
    return {k: v if k in keep or k not in saved else saved[k] for k, v in settings.items()}


def seeded_generator(*keys):
    """A torch.Generator seeded by a tuple of ints and strings, the same in every run."""
    seed = int(hashlib.sha256(repr(keys).encode()).hexdigest()[:15], 16)
    return torch.Generator().manual_seed(seed)
