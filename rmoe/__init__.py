"""
The modules no one runs directly: the top-level scripts import them.

    training.py       the training settings and the pieces of a training step
    checkpoint.py     a run's files (ckpt.pt, log.jsonl, the lock) and Run, how train.py uses them
    dataset.py        prepared datasets, their vocabularies and tokenizers, batches
    prepare.py        what the data/*/prepare.py scripts share: downloads, checks, writing a dataset
    gpt2_bpe.py       GPT-2's byte-pair encoding, offline
    routing_stats.py  the paper's routing statistics, for train.py's log and analyze.py

and, here, what they all share: the repository root and replace_file(), the atomic write.
"""

import contextlib
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository root


def replace_file(path, data):
    """Write bytes to path atomically, the one way the project replaces a file: into path.tmp beside
    it, flushed to disk, then renamed over path. A crash or a failed write (disk full, a read-only
    folder) leaves the previous file whole and no temporary file; the OSError is the caller's to word."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
