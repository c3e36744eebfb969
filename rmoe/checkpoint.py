"""
What a run keeps in its out_dir: the checkpoint, the record (log.jsonl), and a lock; and Run,
the object through which train.py touches them and through which its processes stop together.

Checkpoints: written atomically, read with weights_only=True and checked once, turned back into
the exact model. atomic_write() here also writes analyze.py's and compare.py's outputs.

A checkpoint is a dict of tensors and plain python values: the model and
optimizer state, the full model config (so resume and sample rebuild the very
same model), the training config, the vocabulary (a list of characters,
"bytes" for a byte-level dataset, None for GPT-2 BPE), data_files (the sha256 of each file of its data),
the step, the best validation loss, the RNG state and how many records of
log.jsonl led to it (so a record that lost some is refused).
"""

import io
import json
import math
import os
import pickle
import signal
import sys
import zipfile
from dataclasses import asdict

import torch
import torch.distributed as dist

from configurator import fail, say
from model import GPT, GPTConfig
from rmoe import replace_file

try:
    import fcntl  # out_dir locks; Windows has none, and runs there go unlocked
except ImportError:
    fcntl = None


def atomic_write(path, data, what="file"):
    """replace_file (rmoe/__init__.py) for the scripts' outputs: a failed write is a one-line ValueError
    that says what happened and what was kept."""
    try:
        replace_file(path, data)
    except OSError as e:
        kept = f"the previous {path} is intact" if os.path.isfile(path) else f"no {what} was written"
        raise ValueError(f"cannot write {what} {path} ({e.strerror or e}); {kept}; free disk space "
                         f"or fix the folder's permissions") from None


def save_checkpoint(ckpt, path):
    """atomic_write the checkpoint; a failed write is a one-line ValueError that says how to go on."""
    # serialised in memory first, so a full disk is the OS's clear OSError, not torch's zip-writer error
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    try:
        atomic_write(path, buffer.getbuffer(), "checkpoint")
    except ValueError as e:
        then = "resume with --init_from=resume" if os.path.exists(path) else "run again"
        raise ValueError(f"{e}, then {then}") from None


def load_checkpoint(path, device="cpu", for_resume=False, setting="out_dir"):
    """Read a checkpoint without unpickling arbitrary objects and check its structure, with what
    resuming needs besides for_resume; any problem is a one-line ValueError. setting is the
    script's setting that names the checkpoint's folder, for the messages."""
    if not os.path.exists(path):
        raise ValueError(f"no checkpoint at {path}; train one first or point --{setting} at its folder")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a truncated one has lost its index
        raise ValueError(f"{path} is not a checkpoint (not a whole torch.save archive: truncated or another "
                         f"kind of file); retrain or restore it")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        if isinstance(e, pickle.UnpicklingError) and "Unsupported global" in str(e):  # not a corrupt file
            raise ValueError(f"{path} holds pickled python objects, which weights_only loading refuses because "
                             f"they could run code; use a checkpoint written by train.py") from None
        raise ValueError(f"cannot read checkpoint {path} ({type(e).__name__}); it is corrupt: "
                         f"retrain or restore it") from None
    if not (isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict)
            and isinstance(ckpt.get("model_config"), dict)):
        raise ValueError(f"{path} is not an rmoe checkpoint (no model/model_config inside); "
                         f"point --{setting} at a folder train.py wrote")
    if for_resume:
        missing = {"optimizer", "iter_num", "best_val_loss", "rng", "train_config"} - ckpt.keys()
        if missing:
            raise ValueError(f"{path} has no training state ({', '.join(sorted(missing))}), so it cannot be "
                             f"resumed; sample from it, or train a new model")
    problem = structure_problem(ckpt, for_resume)
    if problem:
        raise ValueError(f"{path} is damaged: {problem}; retrain or restore it")
    return ckpt


def structure_problem(ckpt, for_resume):
    """What is wrong with the parts of a loaded checkpoint that train.py, sample.py, analyze.py and
    eval.py read (with the training state if for_resume), or None."""
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in ckpt["model"].items()):
        return "the model state is not a dict of named tensors"
    config, defaults = ckpt["model_config"], asdict(GPTConfig())
    if config.keys() != defaults.keys():
        wrong = sorted(config.keys() ^ defaults.keys(), key=str)
        return f"model_config has other keys than this model.py's GPTConfig ({', '.join(map(str, wrong))})"
    for key, default in defaults.items():
        if not (type(config[key]) is type(default) or type(default) is float and type(config[key]) is int):
            return f"model_config has {key}={config[key]!r}, not {type(default).__name__} like GPTConfig's"
    vocab, vocab_size = ckpt.get("vocab"), config["vocab_size"]
    if vocab == "bytes" or vocab is None:
        least = 256 if vocab == "bytes" else 50257  # a byte-level dataset, or GPT-2 BPE
        if vocab_size < least:
            return (f"vocab_size={vocab_size} is smaller than the {least} tokens of its "
                    f"{vocab or 'GPT-2 BPE'} vocabulary")
    elif not (isinstance(vocab, list) and all(isinstance(ch, str) for ch in vocab)):
        return "the vocabulary is neither a list of characters, 'bytes' nor None"
    elif len(vocab) != vocab_size:
        return f"its vocabulary has {len(vocab)} characters but the model's vocab_size is {vocab_size}"
    if "train_config" in ckpt and not (isinstance(ckpt["train_config"], dict) and all(  # names the dataset
            isinstance(k, str) and type(v) in (int, float, str, bool) for k, v in ckpt["train_config"].items())):
        return "train_config is not a dict of plain settings"
    files = ckpt.get("data_files", {})
    if not (isinstance(files, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())):
        return "data_files is not a dict of file names and sha256"
    if not for_resume:
        return None
    iter_num, best = ckpt["iter_num"], ckpt["best_val_loss"]
    if type(iter_num) is not int or iter_num < 0:
        return f"iter_num={iter_num!r} is not a step number"
    if type(best) is not float:
        return f"best_val_loss={best!r} is not a float"
    rng = ckpt["rng"]
    if not (isinstance(rng, list) and rng and all(isinstance(r, dict) and isinstance(r.get("cpu"), torch.Tensor)
                                                  and r["cpu"].dtype == torch.uint8 for r in rng)):
        return "the RNG state is not a non-empty list of per-process states"
    optimizer = ckpt["optimizer"]
    groups = optimizer.get("param_groups") if isinstance(optimizer, dict) else None
    if not (isinstance(groups, list) and groups and all(
            isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups)
            and isinstance(optimizer.get("state"), dict)):
        return "the optimizer state lacks its param_groups or state"
    if not optimizer["state"].keys() <= {i for g in groups for i in g["params"]}:
        return "the optimizer state names parameters its param_groups do not have"
    return None


def model_from_checkpoint(ckpt, path):
    """Rebuild the GPT exactly as it was trained and load its weights."""
    try:
        model = GPT(GPTConfig(**ckpt["model_config"]))
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0]
        raise ValueError(f"checkpoint {path} does not fit this version of model.py ({first}); "
                         f"retrain it with this code") from None
    return model


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


def claim(folder, setting="out_dir", owner="run"):
    """Lock a folder for this process (released when it exits, however it exits): a second run into the
    same out_dir would overwrite this one's checkpoint, a second compare.py would train its runs twice."""
    lock = open(os.path.join(folder, ".lock"), "w")
    if fcntl is None:
        return lock
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ValueError(f"{setting} {folder} is in use by another {owner}; wait for it to finish, or pick another "
                         f"--{setting} (nothing was changed)") from None
    return lock


class Record:
    """log.jsonl, the run's record: one JSON line per logged step ("train"), per evaluation ("eval")
    and at the end ("end"). A new run starts it empty. A resumed run keeps what led to the checkpoint:
    the steps up to it and the evaluations before it (the loop evaluates that step again), so steps
    trained after the last save, which the checkpoint does not hold, are not in it twice. A checkpoint
    keeps how many records led to it ("records"), so a record cut short, lost or replaced is refused."""

    def __init__(self, out_dir, ckpt=None):
        self.path = os.path.join(out_dir, "log.jsonl")
        records = read_record(out_dir)
        resume_step = None if ckpt is None else ckpt["iter_num"]
        if ckpt is not None:
            problem = record_problem(records, ckpt)
            if problem:
                raise ValueError(f"{self.path} {problem}; restore it, or start a new --out_dir")
        kept = [r for r in records if resume_step is not None and (
            r["step"] < resume_step or (r["step"] == resume_step and r["kind"] == "train"))]
        atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())
        self.count = sum(r["kind"] != "end" for r in kept)  # the records a checkpoint saved now follows
        self.file = open(self.path, "a")

    def write(self, entry):
        """Append one line; returns the error of a failed write."""
        try:
            self.file.write(json.dumps(entry) + "\n")
            self.file.flush()
        except OSError as e:
            return (f"cannot write {self.path} ({e.strerror}); free disk space, then resume with "
                    f"--init_from=resume (the record is cut back to the checkpoint's step)")
        self.count += entry["kind"] != "end"


def record_problem(records, ckpt):
    """How a run's record disagrees with its checkpoint, or None: the checkpoint counted the train and
    eval records that led to its step when it was saved, and they must all still be there."""
    step, saved = ckpt["iter_num"], ckpt.get("records")
    found = sum(r["kind"] != "end" and r["step"] <= step for r in records)
    if saved is None or found == saved:  # a checkpoint from before the count was kept: nothing to compare
        return None
    what = "is missing" if not records else f"holds {found} records up to step {step}"
    return f"{what}, but its checkpoint (step {step}) was saved after {saved}: the record was cut short or replaced"


RECORD_KINDS = {"train": (), "eval": ("val_loss",), "end": ()}  # each kind and the numbers it must have


def read_record(out_dir):
    """The records of a run's log.jsonl ([] if it has none yet); a line cut short by a kill is left out.
    A record that cannot be read, or a line that is not a record, is a one-line ValueError."""
    path = os.path.join(out_dir, "log.jsonl")
    if not os.path.lexists(path):
        return []
    fix = f"restore it, or delete the run's folder {out_dir} to train it again"
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line for line in f if line.endswith("\n")]
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or f"not UTF-8 text: bad byte at offset {e.start}"
        raise ValueError(f"cannot read the run record {path} ({why}); {fix}") from None
    records = []
    for number, line in enumerate(lines, 1):
        try:
            r = json.loads(line)
        except ValueError:
            r = None
        if not (isinstance(r, dict) and r.get("kind") in RECORD_KINDS and type(r.get("step")) is int
                and all(isinstance(r.get(k), (int, float)) for k in RECORD_KINDS[r["kind"]])):
            raise ValueError(f"line {number} of the run record {path} is not a record (a JSON object with a "
                             f"kind of {', '.join(RECORD_KINDS)} and a step); {fix}")
        records.append(r)
    return records


class Run:
    """A training run's hold on its out_dir, and the rules by which its processes stop.

    The master process (rank 0) owns the out_dir: it locks it, keeps the record and writes the
    checkpoint. A problem there (a failed write, a non-finite evaluation) is kept until the next
    point where all processes meet, and then every process exits with it: one that exited alone
    would leave the others waiting forever. Ctrl-C finishes the current step, saves it and exits
    with code 130.

        Run(...)             claim out_dir and open the record (a new run refuses an existing checkpoint,
                             a resumed one a record that disagrees with its checkpoint)
        log(entry)           append one record to log.jsonl
        check_finite(loss)   a non-finite evaluation becomes the run's problem
        save(...)            write ckpt.pt at the current step, with every process's RNG (rng_states())
        stop_on_problem()    every process exits with the master's problem, if it has one
        check_step(losses)   the one host sync of a step: its losses, and a stop for any process's problem
        save_and_exit(...)   after Ctrl-C
        finish(...)          the end record and the closing line, then release everything
    """

    def __init__(self, cfg, vocab, data_files, ckpt, ddp, world_size, device_type):
        self.cfg, self.vocab, self.data_files = cfg, vocab, data_files
        self.ddp, self.world_size, self.device_type = ddp, world_size, device_type
        self.master = not ddp or dist.get_rank() == 0
        self.ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
        resume_step = None if ckpt is None else ckpt["iter_num"]
        self.saved_step = resume_step  # the step ckpt.pt holds, None while it holds nothing of this run
        self.problem = None  # the master's: every process stops on it at the next meeting point
        self.interrupted = False
        self.lock = self.record = None
        if self.master:
            try:
                os.makedirs(cfg.out_dir, exist_ok=True)
                self.lock = claim(cfg.out_dir)  # held until this process ends
                if resume_step is None and os.path.exists(self.ckpt_path):
                    self.problem = (f"{self.ckpt_path} already exists; continue it with --init_from=resume, or "
                                    f"pick a new --out_dir (nothing was overwritten)")
                else:
                    self.record = Record(cfg.out_dir, ckpt)
            except (OSError, ValueError) as e:
                self.problem = str(e) if isinstance(e, ValueError) else (
                    f"cannot write in out_dir {cfg.out_dir} ({e.strerror}); pick another --out_dir")
        self.stop_on_problem()
        signal.signal(signal.SIGINT, self.on_interrupt)

    def on_interrupt(self, signum, frame):
        self.interrupted = True  # the loop finishes its step, saves and exits
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once

    def log(self, entry):
        """Append one record (master); a failed write stops every process at the next meeting point."""
        if self.master and self.problem is None:
            self.problem = self.record.write(entry)

    def nonfinite(self, what, step):
        kept = f"{self.ckpt_path} keeps the last good state" if os.path.exists(self.ckpt_path) else "nothing was saved"
        return (f"{what} at step {step}; training stopped and {kept}; lower --learning_rate or raise "
                f"--warmup_iters, then resume or start again")

    def check_finite(self, loss, step):
        """A non-finite evaluation (a finite step can leave non-finite weights) stops the run unsaved."""
        if self.problem is None and not math.isfinite(loss):
            self.problem = self.nonfinite(f"the evaluation loss is {loss}", step)

    def rng_states(self):
        return gather_rng_states(self.ddp, self.world_size, self.device_type)  # a collective

    def save(self, model, optimizer, progress, rng):
        """Write ckpt.pt at progress["iter_num"] (master, and never after a problem)."""
        if not self.master or self.problem is not None:
            return
        try:
            save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "model_config": asdict(model.config), "train_config": asdict(self.cfg),
                             "vocab": self.vocab, "data_files": self.data_files, **progress, "rng": rng,
                             "records": self.record.count},
                            self.ckpt_path)
        except ValueError as e:
            self.problem = str(e)
            return
        self.saved_step = progress["iter_num"]
        say(f"  saved {self.ckpt_path}")

    def stop_on_problem(self):
        """Every process exits with the master's problem, if it has one (a collective under DDP)."""
        problem = self.problem
        if self.ddp:
            shared = [problem]
            dist.broadcast_object_list(shared, src=0)
            problem = shared[0]
        if problem:
            fail(problem)

    def check_step(self, step_losses, step):
        """The step's loss sums as floats, after its one host sync, where a non-finite loss, a Ctrl-C
        or the master's problem in any process becomes every process's. A non-finite loss exits at
        once, unsaved; an interrupt is left to save_and_exit."""
        flags = torch.tensor([float(self.interrupted), float(self.problem is not None)], device=step_losses.device)
        stop = torch.cat([step_losses, flags])
        if self.ddp:
            dist.all_reduce(stop)  # a sum: NaN or inf from any process stays non-finite
        *loss_sums, interrupts, problems = stop.tolist()
        if problems:
            self.stop_on_problem()
        if not math.isfinite(sum(loss_sums)):
            fail(self.nonfinite(f"loss is {sum(loss_sums)}", step))  # every process saw it
        self.interrupted = interrupts > 0
        return loss_sums

    def save_and_exit(self, model, optimizer, progress):
        """After Ctrl-C: save the current step (in place of the best one) and exit with code 130."""
        self.save(model, optimizer, progress, self.rng_states())  # no save after a problem: the record missed a step
        if self.master and self.problem is None:
            say(f"interrupted: saved {self.ckpt_path} at step {progress['iter_num']}, the current state (it "
                f"replaces the best one); continue it with --init_from=resume")
        self.stop_on_problem()
        self.close()
        sys.exit(130)  # the shell's code for a run stopped by Ctrl-C

    def finish(self, progress, tokens, wall_s):
        """The end record and the closing line; then the out_dir is free for the next run."""
        if self.master:
            self.log({"kind": "end", "step": progress["iter_num"], "tokens": tokens,
                      "best_val_loss": progress["best_val_loss"], "best_step": progress["best_step"], "wall_s": wall_s})
            kept = (f"{self.ckpt_path} holds step {self.saved_step}" if self.saved_step is not None
                    else "nothing was saved")
            say(f"done: step {progress['iter_num']}, {tokens:,} tokens in {wall_s / 60:.1f} min; best val loss "
                f"{progress['best_val_loss']:.4f} at step {progress['best_step']}; {kept}")
            self.lock.close()
        self.stop_on_problem()  # a failed end record: every process exits with it
        self.close()

    def close(self):
        if self.ddp:
            dist.barrier()  # no process tears gloo down while another still talks to it
            dist.destroy_process_group()
