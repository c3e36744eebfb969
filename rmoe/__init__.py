"""
The modules no one runs directly: the top-level scripts import them.

    training.py       the training settings and the pieces of a training step
    checkpoint.py     a run's files (ckpt.pt, log.jsonl, the lock) and Run, how train.py uses them
    dataset.py        prepared datasets, their vocabularies and tokenizers, batches
    prepare.py        what the data/*/prepare.py scripts share: downloads, checks, writing a dataset
    gpt2_bpe.py       GPT-2's byte-pair encoding, offline
    routing_stats.py  the paper's routing statistics, for train.py's log and analyze.py
"""

import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository root
