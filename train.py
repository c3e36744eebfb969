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
import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from configurator import ConfigError, fail, parse_args, pick_device
from model import GPT, GPTConfig, compile_moe
from router import routing_by_layer, routing_summary

REPO = os.path.dirname(os.path.abspath(__file__))


@dataclass
class TrainConfig:
    # I/O
    out_dir: str = "out"
    init_from: str = "scratch"  # scratch | resume (from out_dir/ckpt.pt)
    eval_interval: int = 250  # steps between evaluations (and checkpoints)
    eval_iters: int = 20  # batches per split per evaluation, the same batches every time
    log_interval: int = 50
    always_save_checkpoint: bool = False  # save at every evaluation, not only when val loss improves
    # data
    dataset: str = "shakespeare_char"  # a folder under data/, or a path to a folder with train.bin, val.bin
    batch_size: int = 8  # sequences per micro-step in each process
    gradient_accumulation_steps: int = 2  # micro-steps per optimizer step, over all processes together
    # AdamW, linear warm-up, then cosine decay to min_lr
    learning_rate: float = 2e-3
    max_iters: int = 2000
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 disables clipping
    warmup_iters: int = 100
    lr_decay_iters: int = 2000  # after this many steps the rate stays at min_lr
    min_lr: float = 2e-4
    # system
    device: str = "auto"  # auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (bfloat16 on a CUDA GPU that has it, else float32) | float32 | bfloat16
    compile: bool = False  # torch.compile the model
    seed: int = 1337
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
        settings, explicit = parse_args(default_settings(), argv, __doc__)
        ckpt_path = os.path.join(settings["out_dir"], "ckpt.pt")
        ckpt = None
        if settings["init_from"] == "resume":
            ckpt = load_checkpoint(ckpt_path)
            settings = resumed_settings(settings, explicit, ckpt, ckpt_path)
        cfg, model_settings = check_settings(settings)
        device = pick_device(cfg.device)
        if ckpt is None and os.path.exists(ckpt_path):
            raise ValueError(f"{ckpt_path} already exists; continue it with --init_from=resume, "
                             f"or pick a new --out_dir (nothing was overwritten)")
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

    log_path = os.path.join(cfg.out_dir, "log.jsonl")
    if master:
        try:
            os.makedirs(cfg.out_dir, exist_ok=True)
            log = open_record(log_path, ckpt["iter_num"] if ckpt else None)
        except OSError as e:
            fail(f"cannot write in out_dir {cfg.out_dir}: {e.strerror}; pick another --out_dir")

    # ---- data (prepared on first use)
    data_dir, vocab = load_dataset(cfg.dataset, master, ddp)
    block_size = model_settings["block_size"]
    for split in ("train", "val"):
        n = os.path.getsize(os.path.join(data_dir, f"{split}.bin")) // 2  # uint16 tokens
        if n <= block_size:
            fail(f"{split}.bin of {data_dir} has {n} tokens, not more than block_size={block_size}; "
                 f"lower block_size or use more text")

    def get_batch(split, generator):
        data = np.memmap(os.path.join(data_dir, f"{split}.bin"), dtype=np.uint16, mode="r")
        ix = torch.randint(len(data) - block_size, (cfg.batch_size,), generator=generator)
        x = torch.stack([torch.from_numpy(data[i:i + block_size].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + block_size].astype(np.int64)) for i in ix])
        if device_type == "cuda":
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.to(device), y.to(device)

    # ---- model, optimizer, and the step to start from
    if ckpt is None:
        vocab_size = len(vocab) if vocab else 50304  # GPT-2's 50257 padded to a multiple of 64
        model = GPT(GPTConfig(**model_settings, vocab_size=vocab_size))
        iter_num, best_val_loss, best_step, saved_step = 0, float("inf"), None, None
    else:
        if ckpt.get("vocab") != vocab:
            fail(f"the checkpoint's vocabulary differs from the one in {data_dir} (was the dataset prepared "
                 f"again from other text?); resume with the data it was trained on")
        ckpt["model_config"].update({k: model_settings[k] for k in RESUME_MAY_CHANGE})
        try:
            model = model_from_checkpoint(ckpt, ckpt_path)
        except ValueError as e:
            fail(e)
        iter_num, best_val_loss, saved_step = ckpt["iter_num"], ckpt["best_val_loss"], ckpt["iter_num"]
        best_step = ckpt.get("best_step")
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

    tokens_per_step = cfg.gradient_accumulation_steps * cfg.batch_size * block_size  # over all processes
    if master:
        c = raw_model.config
        print(f"model: {c.n_layer} layers x {c.n_embd} wide, "
              + (f"{c.n_experts} experts top-{c.top_k}, router {c.router}" if c.is_moe else "dense MLP")
              + f" | params {raw_model.num_params() / 1e6:.2f}M total, "
              f"{raw_model.num_active_params() / 1e6:.2f}M active per token")
        print(f"device {device} ({dtype}), {world_size} process(es), {tokens_per_step:,} tokens per step, "
              f"from step {iter_num} to {cfg.max_iters}")

    @torch.no_grad()
    def evaluate():
        """Mean lm loss on the same eval_iters batches of each split every time, and routing stats on val."""
        raw_model.eval()
        losses, routing = {}, []
        for split in ("train", "val"):
            total = 0.0
            for k in range(cfg.eval_iters):
                x, y = get_batch(split, seeded_generator(cfg.seed, "eval", split, k))
                with autocast:
                    _, _, aux = raw_model(x, y)
                total += aux["lm_loss"].item()
                if split == "val":
                    routing.append(aux["routing"])
            losses[split] = total / cfg.eval_iters
        raw_model.train()
        per_layer = [routing_summary(r.probs, r.topk_idx) for r in routing_by_layer(routing)]
        return losses, per_layer

    def learning_rate(it):
        if it < cfg.warmup_iters:
            return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
        if it >= cfg.lr_decay_iters:
            return cfg.min_lr
        progress = (it - cfg.warmup_iters) / max(1, cfg.lr_decay_iters - cfg.warmup_iters)
        return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)

    def nonfinite(what):
        kept = f"{ckpt_path} keeps the last good state" if os.path.exists(ckpt_path) else "nothing was saved"
        return (f"{what} at step {iter_num}; training stopped and {kept}; lower --learning_rate or raise "
                f"--warmup_iters, then resume or start again")

    def save(rng):
        """Write out_dir/ckpt.pt at iter_num (only ever after a finite loss); returns the error of a failed write."""
        try:
            save_checkpoint({
                "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                "model_config": asdict(raw_model.config), "train_config": asdict(cfg),
                "vocab": vocab, "iter_num": iter_num, "best_val_loss": best_val_loss, "best_step": best_step,
                "rng": rng,
            }, ckpt_path)
        except ValueError as e:
            return str(e)
        nonlocal saved_step
        saved_step = iter_num
        print(f"  saved {ckpt_path}")

    def write(record):
        """Append one record to log.jsonl (master only); returns the error of a failed write."""
        try:
            log.write(json.dumps(record) + "\n")
            log.flush()
        except OSError as e:
            return (f"cannot write {log_path} ({e.strerror}); free disk space, then resume with "
                    f"--init_from=resume (the record is cut back to the checkpoint's step)")

    def stop_together(problem):
        """Exit every process with the master's problem, if it has one: one that exits alone leaves the
        others waiting in their next collective."""
        if ddp:
            shared = [problem]
            dist.broadcast_object_list(shared, src=0)
            problem = shared[0]
        if problem:
            fail(problem)

    # ---- the loop
    interrupted = []  # Ctrl-C appends here; the loop finishes its step, saves and exits

    def on_interrupt(signum, frame):
        interrupted.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once
    signal.signal(signal.SIGINT, on_interrupt)
    t0, timed_steps = time.time(), 0
    started = time.time()
    while True:
        lr = learning_rate(iter_num)
        for group in optimizer.param_groups:
            group["lr"] = lr

        if iter_num % cfg.eval_interval == 0 or iter_num == cfg.max_iters:
            rng = gather_rng_states(ddp, world_size, device_type)  # a collective: every process takes part
            problem = None
            if master:
                losses, per_layer = evaluate()
                print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
                if not math.isfinite(losses["train"] + losses["val"]):  # a finite step can leave non-finite weights
                    problem = nonfinite(f"the evaluation loss is {losses['train'] + losses['val']}")
                else:
                    for i, s in enumerate(per_layer):
                        print(f"  layer {i}: max expert share {s['max_share']:.3f} (even: "
                              f"{1 / raw_model.config.n_experts:.3f}), gate entropy {s['entropy']:.3f} "
                              f"of {math.log(raw_model.config.n_experts):.3f} nats, inner / outer balance "
                              f"{s['inner_balance']:.2f} / {s['outer_balance']:.2f}")
                    record = {"kind": "eval", "step": iter_num, "tokens": iter_num * tokens_per_step,
                              "train_loss": losses["train"], "val_loss": losses["val"]}
                    if vocab:  # one token per character: bits per character
                        record["val_bpc"] = losses["val"] / math.log(2)
                    problem = write({**record, "routing": per_layer})
                    if problem is None and iter_num > 0 and (losses["val"] < best_val_loss
                                                             or cfg.always_save_checkpoint):
                        if losses["val"] < best_val_loss:
                            best_val_loss, best_step = losses["val"], iter_num
                        problem = save(rng)
            stop_together(problem)
            t0, timed_steps = time.time(), 0  # evaluation time is not step time
        if iter_num >= cfg.max_iters:
            break

        step_losses = torch.zeros(3, device=device)  # lm, lb and z loss summed over micro-steps
        for micro in range(micro_steps):
            if ddp:
                model.require_backward_grad_sync = micro == micro_steps - 1  # all-reduce once, on the last
            # batches are a function of (step, micro-step): resume and any process count see the same data
            x, y = get_batch("train", seeded_generator(cfg.seed, "train", iter_num, rank * micro_steps + micro))
            with autocast:
                _, loss, aux = model(x, y)
            (loss / micro_steps).backward()
            step_losses += torch.stack([aux[k].float().to(device) for k in ("lm_loss", "lb_loss", "z_loss")])
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        # one host sync per step: a non-finite loss or a Ctrl-C in any process stops them all at this step
        stop = torch.cat([step_losses, torch.tensor([float(len(interrupted))], device=device)])
        if ddp:
            dist.all_reduce(stop)  # a sum: NaN or inf from any process stays non-finite
        *loss_sums, interrupts = stop.tolist()
        if not math.isfinite(sum(loss_sums)):
            fail(nonfinite(f"loss is {sum(loss_sums)}"))  # every process saw it: they all stop here
        lm_loss, lb_loss, z_loss = (x / cfg.gradient_accumulation_steps for x in loss_sums)  # step means
        iter_num += 1
        timed_steps += 1
        if interrupts:
            rng = gather_rng_states(ddp, world_size, device_type)
            problem = save(rng) if master else None
            if master and problem is None:
                print(f"interrupted: saved {ckpt_path} at step {iter_num}, the current state (it replaces "
                      f"the best one); continue it with --init_from=resume")
            stop_together(problem)
            if ddp:
                dist.destroy_process_group()
            sys.exit(130)  # the shell's code for a run stopped by Ctrl-C

        if iter_num % cfg.log_interval == 0 and master:
            if device_type == "cuda":
                torch.cuda.synchronize()
            dt = (time.time() - t0) / timed_steps
            t0, timed_steps = time.time(), 0
            tokens_per_s = tokens_per_step / dt
            record = {"kind": "train", "step": iter_num, "tokens": iter_num * tokens_per_step, "lr": lr,
                      "loss": lm_loss, "lb_loss": lb_loss, "z_loss": z_loss, "ms_per_step": dt * 1000,
                      "tokens_per_s": tokens_per_s}
            line = (f"iter {iter_num}: loss {lm_loss:.4f}, lb {lb_loss:.3f}, "
                    f"lr {lr:.2e}, {dt * 1000:.0f} ms/step, {tokens_per_s:,.0f} tok/s")
            if device_type == "cuda":
                record["mfu"] = raw_model.flops_per_token() * tokens_per_s / (world_size * cfg.peak_tflops * 1e12)
                line += f", mfu {100 * record['mfu']:.1f}%"
            print(line)
            problem = write(record)
            if problem:
                fail(problem)

    if master:
        wall = time.time() - started
        problem = write({"kind": "end", "step": iter_num, "tokens": iter_num * tokens_per_step,
                         "best_val_loss": best_val_loss, "best_step": best_step, "wall_s": wall})
        kept = f"{ckpt_path} holds step {saved_step}" if saved_step is not None else "nothing was saved"
        print(f"done: step {iter_num}, {iter_num * tokens_per_step:,} tokens, {wall / 60:.1f} min; best val loss "
              f"{best_val_loss:.4f} at step {best_step}; {kept}" + (f"\nerror: {problem}" if problem else ""))
    if ddp:
        dist.destroy_process_group()


def resumed_settings(settings, explicit, ckpt, ckpt_path):
    """The checkpoint's settings, except those given explicitly now. A model setting given
    explicitly must equal the checkpoint's (the weights are made for it), but for the few
    that shape no weight (RESUME_MAY_CHANGE)."""
    missing = {"optimizer", "iter_num", "best_val_loss", "rng", "train_config"} - ckpt.keys()
    if missing:
        raise ValueError(f"{ckpt_path} has no training state ({', '.join(sorted(missing))}), so it cannot be "
                         f"resumed; sample from it, or train a new model")
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


def gather_rng_states(ddp, world_size, device_type):
    """Every process's RNG states (dropout draws from the device's), so resume continues each exactly."""
    state = {"cpu": torch.get_rng_state()}
    if device_type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state()
    elif device_type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    if not ddp:
        return [state]
    states = [None] * world_size
    dist.all_gather_object(states, state)
    return states


def set_rng_state(state, device_type):
    torch.set_rng_state(state["cpu"].cpu())
    if device_type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu())
    elif device_type == "mps" and "mps" in state:
        torch.mps.set_rng_state(state["mps"].cpu())


def load_dataset(name, master, ddp):
    """Finds data/<name> (or the folder name), preparing it on first use if it has a
    prepare.py. Returns the folder and the character vocabulary (None: GPT-2 BPE)."""
    data_dir = name if os.path.isdir(name) else os.path.join(REPO, "data", name)
    train_bin = os.path.join(data_dir, "train.bin")
    prepare = os.path.join(data_dir, "prepare.py")
    if not os.path.exists(train_bin) and os.path.exists(prepare) and master:
        print(f"dataset {name} is not prepared yet: running {os.path.relpath(prepare)}")
        subprocess.run([sys.executable, prepare])  # prints its own error if it fails
    if ddp:
        dist.barrier()  # the other processes wait for the master's prepare, then all check
    if not all(os.path.exists(os.path.join(data_dir, f)) for f in ("train.bin", "val.bin")):
        hint = (f"{prepare} did not finish (see above)" if os.path.exists(prepare) else
                "prepare it with a data/*/prepare.py script or pass --dataset=<folder>")
        fail(f"dataset {name!r} not found: no train.bin and val.bin in {data_dir}; {hint}")
    vocab = None
    meta_path = os.path.join(data_dir, "meta.pkl")
    if os.path.exists(meta_path):
        try:
            with open(meta_path, "rb") as f:
                meta = PlainUnpickler(f).load()
            vocab = [meta["itos"][i] for i in range(meta["vocab_size"])]
        except Exception as e:
            fail(f"cannot read {meta_path} ({type(e).__name__}: {e}); it is not the vocabulary a prepare.py "
                 f"writes: run its prepare.py again")
    for split in ("train", "val"):
        path = os.path.join(data_dir, f"{split}.bin")
        size = os.path.getsize(path)
        if size == 0 or size % 2:
            fail(f"{split}.bin of {data_dir} is truncated ({size} bytes, not a positive multiple of the "
                 f"2 bytes of a uint16 token id); run its prepare.py again")
        if vocab and int(np.memmap(path, dtype=np.uint16, mode="r").max()) >= len(vocab):
            fail(f"{split}.bin of {data_dir} has token ids beyond meta.pkl's {len(vocab)} characters; "
                 f"the files come from different runs: run its prepare.py again")
    return data_dir, vocab


class PlainUnpickler(pickle.Unpickler):
    """meta.pkl is nanoGPT's pickle; this reads its dicts, ints and strings but refuses any class or
    function, so a crafted file cannot run code."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"it asks for {module}.{name}, and only plain values are allowed")


def open_record(path, resume_step):
    """Open log.jsonl, the run's record, for appending: one JSON line per logged step ("train"), per
    evaluation ("eval") and at the end ("end"). A new run starts it empty. A resumed run keeps what
    led to the checkpoint: the steps up to it and the evaluations before it (the loop evaluates that
    step again), so steps trained after the last save, which the checkpoint lost, are not in it twice."""
    kept = []
    if resume_step is not None and os.path.exists(path):
        with open(path) as f:
            for line in f:
                if not line.endswith("\n"):
                    break  # a line cut short by a kill can only be the last
                r = json.loads(line)
                if (r["kind"] == "train" and r["step"] <= resume_step) or (r["kind"] == "eval" and r["step"] < resume_step):
                    kept.append(line)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(kept)
    os.replace(tmp, path)
    return open(path, "a")


if __name__ == "__main__":
    main(sys.argv[1:])
