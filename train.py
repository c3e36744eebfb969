"""
Train a GPT with Mixture-of-Experts layers and a linear or layerwise recurrent router.

One process (CPU, one CUDA GPU or Apple MPS, picked automatically):
    python train.py config/rmoe_small.py
    python train.py config/rmoe_small.py --router=linear --out_dir=out-smoe
DDP, one process per GPU (nccl) or per CPU process (gloo):
    torchrun --standalone --nproc_per_node=2 train.py config/rmoe_small.py
Continue a run from out_dir/ckpt.pt, with the settings saved in it (model settings
that shape a weight cannot change; others given explicitly, such as max_iters, win):
    python train.py --out_dir=out-rmoe-small --init_from=resume --max_iters=4000

Settings: TrainConfig (rmoe/training.py) and the model's GPTConfig (model.py), set by
config files (python, run as code) and --key=value overrides; --help lists them.

Ctrl-C finishes the current step, saves out_dir/ckpt.pt at it (in place of the best one) and exits with
code 130; --init_from=resume continues exactly. A non-finite loss stops the run
without saving, so ckpt.pt keeps the last good state.
"""

import math
import os
import sys
import time

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from configurator import ConfigError, fail, parse_args, pick_device, precision, say, setting_comments
from model import GPT, GPTConfig, compile_moe
from rmoe.checkpoint import Run, load_checkpoint, model_from_checkpoint, set_rng_state
from rmoe.dataset import load_dataset, read_split, split_fingerprints, vocab_size
from rmoe.training import (RESUME_MAY_CHANGE, TrainConfig, check_settings, default_settings, evaluate, learning_rate,
                           resumed_settings, start_processes, train_batches, train_step)


def main(argv):
    # ---- settings: defaults < config files < --key=value (< the checkpoint's, on resume)
    try:
        settings, explicit = parse_args(default_settings(), argv, __doc__,
                                        help={**setting_comments(TrainConfig), **setting_comments(GPTConfig)})
        ckpt_path = os.path.join(settings["out_dir"], "ckpt.pt")
        ckpt = load_checkpoint(ckpt_path, for_resume=True) if settings["init_from"] == "resume" else None
        if ckpt is not None:
            settings = resumed_settings(settings, explicit, ckpt)
        cfg, model_settings = check_settings(settings)
        if ckpt is not None and cfg.max_iters < ckpt["iter_num"]:
            raise ValueError(f"max_iters={cfg.max_iters} is before the checkpoint's step {ckpt['iter_num']}; "
                             f"raise --max_iters to train on")
        ddp, rank, world_size, device = start_processes(pick_device(cfg.device), cfg.gradient_accumulation_steps)
    except (ConfigError, ValueError) as e:
        fail(e)
    master = rank == 0
    device_type = device.split(":")[0]
    dtype, autocast = precision(device, cfg.dtype)
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(cfg.seed + rank)  # dropout differs per process; data order is seeded separately

    # ---- data (prepared on first use), the same data on resume
    block_size = model_settings["block_size"]
    data, vocab, fingerprints = read_data(cfg.dataset, block_size, master, ddp, ckpt)

    # ---- model, optimizer, and where training starts
    model, raw_model, optimizer, progress = build(cfg, model_settings, vocab, ckpt, ckpt_path, device, rank, ddp)

    # ---- the run owns out_dir from here on: lock, record, checkpoint, and stopping together
    run = Run(cfg, vocab, fingerprints, ckpt, ddp, world_size, device_type)
    ckpt = None  # free the memory
    micro_steps = cfg.gradient_accumulation_steps // world_size  # this process's share
    tokens_per_step = cfg.gradient_accumulation_steps * cfg.batch_size * block_size  # over all processes
    if master:
        say(describe(raw_model))
        say(f"device {device} ({dtype}), {world_size} process(es), {tokens_per_step:,} tokens per step, "
            f"from step {progress['iter_num']} to {cfg.max_iters}")

    # ---- the loop
    started = t0 = time.time()
    timed_steps = 0
    while True:
        iter_num = progress["iter_num"]
        lr = learning_rate(iter_num, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr

        if iter_num % cfg.eval_interval == 0 or iter_num == cfg.max_iters:
            rng = run.rng_states()  # a collective: every process takes part
            if master:
                losses, per_layer = evaluate(raw_model, data, cfg, block_size, autocast, device)
                log_eval(run, raw_model, losses, per_layer, iter_num, iter_num * tokens_per_step)
                improved = losses["val"] < progress["best_val_loss"]
                if improved:
                    progress.update(best_val_loss=losses["val"], best_step=iter_num)
                if iter_num > 0 and (improved or cfg.always_save_checkpoint):
                    run.save(raw_model, optimizer, progress, rng)
            run.stop_on_problem()
            t0, timed_steps = time.time(), 0  # evaluation time is not step time
        if iter_num >= cfg.max_iters:
            break

        batches = train_batches(data["train"], cfg, block_size, iter_num, rank, micro_steps, device)
        step_losses = train_step(model, optimizer, batches, cfg.grad_clip, autocast, ddp)
        loss_sums = run.check_step(step_losses, iter_num)
        lm_loss, lb_loss, z_loss = (x / cfg.gradient_accumulation_steps for x in loss_sums)  # the step's means
        progress["iter_num"] = iter_num = iter_num + 1
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
            run.log(entry)  # a failed write stops every process at the next step
        if run.interrupted:
            run.save_and_exit(raw_model, optimizer, progress)

    run.finish(progress, progress["iter_num"] * tokens_per_step, time.time() - started)


def build(cfg, model_settings, vocab, ckpt, ckpt_path, device, rank, ddp):
    """(the model to train: compiled and DDP-wrapped as asked, the model itself, its optimizer, the progress),
    new, or exactly as the checkpoint left them."""
    device_type = device.split(":")[0]
    if ckpt is None:
        model = GPT(GPTConfig(**model_settings, vocab_size=vocab_size(vocab)))
        progress = {"iter_num": 0, "best_val_loss": float("inf"), "best_step": None}
    else:
        ckpt["model_config"].update({k: model_settings[k] for k in RESUME_MAY_CHANGE})
        try:
            model = model_from_checkpoint(ckpt, ckpt_path)
        except ValueError as e:
            fail(e)
        progress = {"iter_num": ckpt["iter_num"], "best_val_loss": ckpt["best_val_loss"],
                    "best_step": ckpt.get("best_step")}
    model.to(device)
    optimizer = model.configure_optimizer(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), device_type)
    if ckpt is not None:
        chosen = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        optimizer.load_state_dict(ckpt["optimizer"])  # moves the state to the parameters' device
        for group, settings in zip(optimizer.param_groups, chosen):
            group.update(settings)  # this run's weight_decay and betas, not those saved with the optimizer state
        set_rng_state(ckpt["rng"][rank % len(ckpt["rng"])], device_type)
    trained = compile_moe(model) if cfg.compile else model
    if ddp:
        trained = DDP(trained, device_ids=[torch.cuda.current_device()] if device_type == "cuda" else None)
    return trained, model, optimizer, progress


def read_data(dataset, block_size, master, ddp, ckpt):
    """The train and val tokens, the vocabulary and the data's fingerprints; on resume, the data must be
    the data the checkpoint was trained on."""
    data_dir, vocab = load_dataset(dataset, master, ddp)
    data = {split: read_split(data_dir, split) for split in ("train", "val")}
    for split, tokens in data.items():
        if len(tokens) <= block_size:
            fail(f"{split}.bin of {data_dir} has {len(tokens)} tokens, not more than block_size={block_size}; "
                 f"lower block_size or use more text")
    fingerprints = split_fingerprints(data_dir)
    if ckpt is not None and "data_files" not in ckpt:
        fail("the checkpoint does not name the files of its data (an older rmoe wrote it), so resume cannot "
             "check them; start a new --out_dir")
    if ckpt is not None and ckpt["data_files"] != fingerprints:
        fail(f"the data in {data_dir} is not the data the checkpoint was trained on (train.bin, val.bin, test.bin "
             f"or meta.pkl changed); resume with the data it was trained on, or start a new --out_dir")
    return data, vocab, fingerprints


def describe(model):
    c = model.config
    return (f"model: {c.n_layer} layers x {c.n_embd} wide, "
            + (f"{c.n_experts} experts top-{c.top_k}, router {c.router}" if c.is_moe else "dense MLP")
            + f" | params {model.num_params() / 1e6:.2f}M total, "
            f"{model.num_active_params() / 1e6:.2f}M active per token")


def log_eval(run, model, losses, per_layer, step, tokens):
    """The evaluation's lines and its record; a non-finite loss stops the run unsaved."""
    say(f"step {step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
    run.check_finite(losses["train"] + losses["val"], step)
    if run.problem:
        return
    E = model.config.n_experts
    for i, s in enumerate(per_layer):
        say(f"  layer {i}: max expert share {s['max_share']:.3f} (even: {1 / E:.3f}), gate entropy "
            f"{s['entropy']:.3f} of {math.log(E):.3f} nats, inner / outer balance "
            f"{s['inner_balance']:.2f} / {s['outer_balance']:.2f}")
    bpc = {"val_bpc": losses["val"] / math.log(2)} if run.vocab else {}  # a token is a character or byte
    run.log({"kind": "eval", "step": step, "tokens": tokens, "train_loss": losses["train"],
             "val_loss": losses["val"], **bpc, "routing": per_layer})


if __name__ == "__main__":
    main(sys.argv[1:])
