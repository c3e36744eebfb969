"""
Train a GPT with Mixture-of-Experts layers and a linear or layerwise recurrent router.

One process (CPU, one CUDA GPU or Apple MPS, picked automatically):
    python train.py config/rmoe_small.py
    python train.py config/rmoe_small.py --router=linear --out_dir=out-smoe
DDP, one process per GPU (nccl) or per CPU process (gloo):
    torchrun --standalone --nproc_per_node=2 train.py config/rmoe_small.py
Continue a run from out_dir/ckpt.pt, with the settings saved in it (model
settings cannot change; others given explicitly, such as max_iters, win):
    python train.py --out_dir=out-rmoe-small --init_from=resume --max_iters=4000

Settings: the TrainConfig below and the model's GPTConfig (model.py), set by
config files (python, run as code) and --key=value overrides; --help lists them.

Ctrl-C finishes the current step, saves out_dir/ckpt.pt at it (in place of the best one) and exits with
code 130; --init_from=resume continues exactly. A non-finite loss stops the run
without saving, so ckpt.pt keeps the last good state.
"""

import hashlib
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from checkpoint import (Record, claim, gather_rng_states, load_checkpoint, model_from_checkpoint, save_checkpoint,
                        set_rng_state)
from configurator import ConfigError, fail, parse_args, pick_device, setting_comments
from dataset import data_fingerprint, get_batch, load_dataset, read_split, vocab_size
from model import GPT, GPTConfig, compile_moe
from router import routing_by_layer, routing_summary



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
    peak_tflops: float = 312.0  # your GPU's bf16 peak, for MFU (A100 312, H100 SXM 989); unused on CPU

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


def main(argv):
    # ---- settings: defaults < config files < --key=value
    try:
        settings, explicit = parse_args(default_settings(), argv, __doc__,
                                        help={**setting_comments(TrainConfig), **setting_comments(GPTConfig)})
        ckpt_path = os.path.join(settings["out_dir"], "ckpt.pt")
        ckpt = None
        if settings["init_from"] == "resume":
            ckpt = load_checkpoint(ckpt_path, for_resume=True)
            settings = resumed_settings(settings, explicit, ckpt)
        cfg, model_settings = check_settings(settings)
        device = pick_device(cfg.device)
        if ckpt is not None and cfg.max_iters < ckpt["iter_num"]:
            raise ValueError(f"max_iters={cfg.max_iters} is before the checkpoint's step {ckpt['iter_num']}; "
                             f"raise --max_iters to train on")
    except (ConfigError, ValueError) as e:
        fail(e)

    # ---- processes and device
    ddp = "RANK" in os.environ  # set by torchrun
    if ddp:
        rank, local_rank, world_size = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
        if cfg.gradient_accumulation_steps % world_size:  # before the processes start waiting for each other
            fail(f"gradient_accumulation_steps={cfg.gradient_accumulation_steps} is not divisible by the "
                 f"{world_size} processes; make it a multiple of {world_size}")
        if device.startswith("cuda"):
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(device)
        elif device != "cpu":
            fail(f"DDP runs on CUDA (nccl) or CPU (gloo), not {device}; pass --device=cpu")
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    else:
        rank, world_size = 0, 1
    master = rank == 0
    micro_steps = cfg.gradient_accumulation_steps // world_size  # this process's share
    device_type = "cuda" if device.startswith("cuda") else device
    dtype = cfg.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device_type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    autocast = (nullcontext() if dtype == "float32" else
                torch.autocast(device_type=device_type, dtype=torch.bfloat16))
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(cfg.seed + rank)  # dropout differs per process; data order is seeded separately

    # ---- data (prepared on first use), and the same data on resume
    data_dir, vocab = load_dataset(cfg.dataset, master, ddp)
    block_size = model_settings["block_size"]
    data = {split: read_split(data_dir, split) for split in ("train", "val")}
    for split, tokens in data.items():
        if len(tokens) <= block_size:
            fail(f"{split}.bin of {data_dir} has {len(tokens)} tokens, not more than block_size={block_size}; "
                 f"lower block_size or use more text")
    fingerprint = data_fingerprint(data_dir)
    if ckpt is not None and ckpt.get("data_sha256", fingerprint) != fingerprint:
        fail(f"the data in {data_dir} is not the data the checkpoint was trained on (train.bin, val.bin or "
             f"meta.pkl changed); resume with the data it was trained on, or start a new --out_dir")

    # ---- model, optimizer, and the step to start from
    if ckpt is None:
        model = GPT(GPTConfig(**model_settings, vocab_size=vocab_size(vocab)))
        iter_num, best_val_loss, best_step, saved_step = 0, float("inf"), None, None
    else:
        ckpt["model_config"].update({k: model_settings[k] for k in RESUME_MAY_CHANGE})
        try:
            model = model_from_checkpoint(ckpt, ckpt_path)
        except ValueError as e:
            fail(e)
        iter_num, best_val_loss, best_step = ckpt["iter_num"], ckpt["best_val_loss"], ckpt.get("best_step")
        saved_step = iter_num
    model.to(device)
    optimizer = model.configure_optimizer(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), device_type)
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])  # moves the state to the parameters' device
        set_rng_state(ckpt["rng"][rank % len(ckpt["rng"])], device_type)
        ckpt = None  # free the memory
    raw_model = model
    if cfg.compile:
        model = compile_moe(model)
    if ddp:
        model = DDP(model, device_ids=[local_rank] if device_type == "cuda" else None)

    # ---- out_dir belongs to this run alone; the master writes in it, and a failure stops every process
    problem, record = None, None
    if master:
        try:
            os.makedirs(cfg.out_dir, exist_ok=True)
            lock = claim(cfg.out_dir)  # held until the run ends
            if saved_step is None and os.path.exists(ckpt_path):  # a run from scratch
                problem = (f"{ckpt_path} already exists; continue it with --init_from=resume, or pick a new "
                           f"--out_dir (nothing was overwritten)")
            else:
                record = Record(cfg.out_dir, saved_step)
        except (OSError, ValueError) as e:
            problem = str(e) if isinstance(e, ValueError) else (
                f"cannot write in out_dir {cfg.out_dir} ({e.strerror}); pick another --out_dir")
    stop_together(problem, ddp)

    tokens_per_step = cfg.gradient_accumulation_steps * cfg.batch_size * block_size  # over all processes
    if master:
        c = raw_model.config
        say(f"model: {c.n_layer} layers x {c.n_embd} wide, "
            + (f"{c.n_experts} experts top-{c.top_k}, router {c.router}" if c.is_moe else "dense MLP")
            + f" | params {raw_model.num_params() / 1e6:.2f}M total, "
            f"{raw_model.num_active_params() / 1e6:.2f}M active per token")
        say(f"device {device} ({dtype}), {world_size} process(es), {tokens_per_step:,} tokens per step, "
            f"from step {iter_num} to {cfg.max_iters}")

    def save(rng):
        """Write out_dir/ckpt.pt at iter_num (only ever after a finite loss); returns the error of a failed write."""
        nonlocal saved_step
        try:
            save_checkpoint({
                "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                "model_config": asdict(raw_model.config), "train_config": asdict(cfg), "vocab": vocab,
                "data_sha256": fingerprint, "iter_num": iter_num, "best_val_loss": best_val_loss,
                "best_step": best_step, "rng": rng,
            }, ckpt_path)
        except ValueError as e:
            return str(e)
        saved_step = iter_num
        say(f"  saved {ckpt_path}")

    # ---- the loop
    interrupted = []  # Ctrl-C appends here; the loop finishes its step, saves and exits

    def on_interrupt(signum, frame):
        interrupted.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once
    signal.signal(signal.SIGINT, on_interrupt)
    started = t0 = time.time()
    timed_steps, failed = 0, None  # failed: the master's failed write of the record
    while True:
        lr = learning_rate(iter_num, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr

        if iter_num % cfg.eval_interval == 0 or iter_num == cfg.max_iters:
            rng = gather_rng_states(ddp, world_size, device_type)  # a collective: every process takes part
            problem = failed
            if master:
                losses, per_layer = evaluate(raw_model, data, cfg, block_size, autocast, device)
                say(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
                if not math.isfinite(losses["train"] + losses["val"]):  # a finite step can leave non-finite weights
                    problem = nonfinite(f"the evaluation loss is {losses['train'] + losses['val']}", iter_num,
                                        ckpt_path)
                else:
                    for i, s in enumerate(per_layer):
                        say(f"  layer {i}: max expert share {s['max_share']:.3f} (even: "
                            f"{1 / raw_model.config.n_experts:.3f}), gate entropy {s['entropy']:.3f} "
                            f"of {math.log(raw_model.config.n_experts):.3f} nats, inner / outer balance "
                            f"{s['inner_balance']:.2f} / {s['outer_balance']:.2f}")
                    bpc = {"val_bpc": losses["val"] / math.log(2)} if vocab else {}  # a token is a character or byte
                    problem = record.write({"kind": "eval", "step": iter_num, "tokens": iter_num * tokens_per_step,
                                            "train_loss": losses["train"], "val_loss": losses["val"], **bpc,
                                            "routing": per_layer})
                    improved = losses["val"] < best_val_loss
                    if improved:
                        best_val_loss, best_step = losses["val"], iter_num
                    if problem is None and iter_num > 0 and (improved or cfg.always_save_checkpoint):
                        problem = save(rng)
            stop_together(problem, ddp)
            t0, timed_steps = time.time(), 0  # evaluation time is not step time
        if iter_num >= cfg.max_iters:
            break

        batches = train_batches(data["train"], cfg, block_size, iter_num, rank, micro_steps, device)
        step_losses = train_step(model, optimizer, batches, cfg.grad_clip, autocast, ddp)

        # one host sync per step: a non-finite loss, a Ctrl-C or a failed write in any process stops them all
        flags = [float(len(interrupted)), float(failed is not None)]
        stop = torch.cat([step_losses, torch.tensor(flags, device=device)])
        if ddp:
            dist.all_reduce(stop)  # a sum: NaN or inf from any process stays non-finite
        *loss_sums, interrupts, failures = stop.tolist()
        if failures:
            stop_together(failed, ddp)
        if not math.isfinite(sum(loss_sums)):
            fail(nonfinite(f"loss is {sum(loss_sums)}", iter_num, ckpt_path))  # every process saw it
        lm_loss, lb_loss, z_loss = (x / cfg.gradient_accumulation_steps for x in loss_sums)  # the step's means
        iter_num += 1
        timed_steps += 1
        if iter_num % cfg.log_interval == 0 and master:
            if device_type == "cuda":
                torch.cuda.synchronize()
            dt = (time.time() - t0) / timed_steps
            t0, timed_steps = time.time(), 0
            entry = {"kind": "train", "step": iter_num, "tokens": iter_num * tokens_per_step, "lr": lr,
                     "loss": lm_loss, "lb_loss": lb_loss, "z_loss": z_loss, "ms_per_step": dt * 1000,
                     "tokens_per_s": tokens_per_step / dt}
            line = (f"iter {iter_num}: loss {lm_loss:.4f}, lb {lb_loss:.3f}, lr {lr:.2e}, "
                    f"{dt * 1000:.0f} ms/step, {tokens_per_step / dt:,.0f} tok/s")
            if device_type == "cuda":
                entry["mfu"] = raw_model.flops_per_token() * entry["tokens_per_s"] / (world_size * cfg.peak_tflops * 1e12)
                line += f", mfu {100 * entry['mfu']:.1f}%"
            say(line)
            failed = record.write(entry)  # stops every process at the next step
        if interrupts:
            rng = gather_rng_states(ddp, world_size, device_type)
            problem = (failed or save(rng)) if master else None  # a record that missed this step: no save
            if master and problem is None:
                say(f"interrupted: saved {ckpt_path} at step {iter_num}, the current state (it replaces "
                    f"the best one); continue it with --init_from=resume")
            stop_together(problem, ddp)
            if ddp:
                dist.destroy_process_group()
            sys.exit(130)  # the shell's code for a run stopped by Ctrl-C

    if master:
        wall = time.time() - started
        problem = record.write({"kind": "end", "step": iter_num, "tokens": iter_num * tokens_per_step,
                                "best_val_loss": best_val_loss, "best_step": best_step, "wall_s": wall})
        kept = f"{ckpt_path} holds step {saved_step}" if saved_step is not None else "nothing was saved"
        say(f"done: step {iter_num}, {iter_num * tokens_per_step:,} tokens in {wall / 60:.1f} min; best val loss "
            f"{best_val_loss:.4f} at step {best_step}; {kept}")
        lock.close()  # the out_dir is free for the next run
        if problem:
            fail(problem)
    if ddp:
        dist.destroy_process_group()


# -----------------------------------------------------------------------------
# the pieces of a training step

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


# -----------------------------------------------------------------------------
# stopping

def nonfinite(what, step, ckpt_path):
    kept = f"{ckpt_path} keeps the last good state" if os.path.exists(ckpt_path) else "nothing was saved"
    return (f"{what} at step {step}; training stopped and {kept}; lower --learning_rate or raise "
            f"--warmup_iters, then resume or start again")


def stop_together(problem, ddp):
    """Exit every process with the master's problem, if it has one: one that exits alone leaves the
    others waiting in their next collective."""
    if ddp:
        shared = [problem]
        dist.broadcast_object_list(shared, src=0)
        problem = shared[0]
    if problem:
        fail(problem)


def say(text):
    """print, but a closed pipe (train.py | head) does not stop the run: the rest of the output goes nowhere."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        sys.stdout = open(os.devnull, "w")


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


if __name__ == "__main__":
    main(sys.argv[1:])
