"""
Checkpoints: written atomically, read with weights_only=True, turned back into the exact model.

A checkpoint is a dict of tensors and plain python values: the model and
optimizer state, the full model config (so resume and sample rebuild the very
same model), the training config, the character vocabulary (None for GPT-2
BPE), the step, the best validation loss and the RNG state.
"""

import os

import torch

from model import GPT, GPTConfig


def save_checkpoint(ckpt, path):
    """Write to a temporary file beside path, then rename over it: a crash mid-write
    leaves the previous checkpoint whole."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        torch.save(ckpt, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path, device="cpu"):
    """Read a checkpoint without unpickling arbitrary objects; any problem is a one-line ValueError."""
    if not os.path.exists(path):
        raise ValueError(f"no checkpoint at {path}; train one first or point --out_dir at its folder")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0]}" if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot read checkpoint {path} ({reason}); it is truncated, corrupt or not "
                         f"a checkpoint: retrain or restore it") from None
    if not (isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict)
            and isinstance(ckpt.get("model_config"), dict)):
        raise ValueError(f"{path} is not an rmoe checkpoint (no model/model_config inside)")
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
