"""
What a run keeps in its out_dir: the checkpoint, the record, and a lock.

Checkpoints: written atomically, read with weights_only=True, turned back into the exact model.

A checkpoint is a dict of tensors and plain python values: the model and
optimizer state, the full model config (so resume and sample rebuild the very
same model), the training config, the character vocabulary (None for GPT-2
BPE), the step, the best validation loss and the RNG state.
"""

import io
import json
import os
import pickle
import zipfile

import torch
import torch.distributed as dist

from model import GPT, GPTConfig

try:
    import fcntl  # out_dir locks; Windows has none, and runs there go unlocked
except ImportError:
    fcntl = None


def save_checkpoint(ckpt, path):
    """Write atomically (see atomic_write). A failed write is a one-line ValueError."""
    buffer = io.BytesIO()  # serialised in memory first, so a full disk is the OS's clear OSError
    torch.save(ckpt, buffer)
    try:
        atomic_write(path, buffer.getbuffer())
    except OSError as e:
        kept = (f"the previous {path} is intact; free disk space or fix the folder's permissions, then resume "
                f"with --init_from=resume" if os.path.exists(path) else
                "no checkpoint was written; free disk space or fix the folder's permissions, then start again")
        raise ValueError(f"cannot write checkpoint {path} ({e.strerror or e}); {kept}") from None


def atomic_write(path, data):
    """Write to a temporary file beside path, then rename over it: a crash or a failed write (disk
    full) leaves the previous file whole and no temporary file behind. Raises the OSError."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_checkpoint(path, device="cpu"):
    """Read a checkpoint without unpickling arbitrary objects; any problem is a one-line ValueError."""
    if not os.path.exists(path):
        raise ValueError(f"no checkpoint at {path}; train one first or point --out_dir at its folder")
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
                         f"point --out_dir at a folder train.py wrote")
    return ckpt


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


def claim(out_dir):
    """Lock out_dir for this process (released when it exits, however it exits): a second run into the
    same folder would overwrite this one's checkpoint."""
    lock = open(os.path.join(out_dir, ".lock"), "w")
    if fcntl is None:
        return lock
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ValueError(f"out_dir {out_dir} is in use by another run; wait for it to finish, or pick another "
                         f"--out_dir (nothing was changed)") from None
    return lock


class Record:
    """log.jsonl, the run's record: one JSON line per logged step ("train"), per evaluation ("eval")
    and at the end ("end"). A new run starts it empty. A resumed run keeps what led to the checkpoint:
    the steps up to it and the evaluations before it (the loop evaluates that step again), so steps
    trained after the last save, which the checkpoint does not hold, are not in it twice."""

    def __init__(self, out_dir, resume_step):
        self.path = os.path.join(out_dir, "log.jsonl")
        kept = [r for r in read_record(out_dir) if resume_step is not None and (
            r["step"] < resume_step or (r["step"] == resume_step and r["kind"] == "train"))]
        atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())
        self.file = open(self.path, "a")

    def write(self, entry):
        """Append one line; returns the error of a failed write."""
        try:
            self.file.write(json.dumps(entry) + "\n")
            self.file.flush()
        except OSError as e:
            return (f"cannot write {self.path} ({e.strerror}); free disk space, then resume with "
                    f"--init_from=resume (the record is cut back to the checkpoint's step)")


def read_record(out_dir):
    """The records of a run's log.jsonl ([] if it has none yet); a line cut short by a kill is left out."""
    path = os.path.join(out_dir, "log.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.endswith("\n")]
