"""
Checkpoints: written atomically, read with weights_only=True, turned back into the exact model.

A checkpoint is a dict of tensors and plain python values: the model and
optimizer state, the full model config (so resume and sample rebuild the very
same model), the training config, the character vocabulary (None for GPT-2
BPE), the step, the best validation loss and the RNG state.
"""

import io
import os
import pickle
import zipfile

import torch

from model import GPT, GPTConfig


def save_checkpoint(ckpt, path):
    """Write to a temporary file beside path, then rename over it: a crash or a failed write
    (disk full) leaves the previous checkpoint whole. A failed write is a one-line ValueError."""
    tmp = path + ".tmp"
    # serialised in memory first, so a full disk is the OS's clear OSError, not torch's zip-writer error
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    try:
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        kept = f"the previous {path} is intact" if os.path.exists(path) else "no checkpoint was written"
        raise ValueError(f"cannot write checkpoint {path} ({e.strerror or e}); {kept}; free disk space "
                         f"or fix the folder's permissions, then resume with --init_from=resume") from None


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
