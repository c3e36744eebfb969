"""
How tokens get into the model: finding a prepared dataset, its vocabulary, and batches.

A dataset is a folder (data/<name>/, made by its prepare.py) in nanoGPT's format:
train.bin and val.bin (test.bin where the benchmark has one) hold uint16 token ids, and
meta.pkl says how ids map to text. Three kinds of vocabulary follow from it:
    a list of characters      meta.pkl with itos (character-level, data/shakespeare_char)
    "bytes"                   meta.pkl with encoding "bytes" (byte-level, 256 ids)
    None                      no meta.pkl: GPT-2 BPE
The vocabulary travels inside every checkpoint, so sampling needs no data folder.
A folder with a dataset.json (every prepare.py writes one) is checked against it first, so a
dataset left half written or changed since is refused (rmoe/prepare.py).
"""

import os
import pickle
import subprocess
import sys

import numpy as np
import torch

from configurator import fail
from rmoe import REPO
from rmoe.prepare import dataset_problem, file_sha256



def load_dataset(name, master=True, ddp=False):
    """Finds data/<name> (or the folder name), preparing it on first use if it has a
    prepare.py. Returns the folder and the vocabulary (see above)."""
    data_dir = dataset_dir(name)
    train_bin = os.path.join(data_dir, "train.bin")
    prepare = os.path.join(data_dir, "prepare.py")
    failed = None  # the prepare script's own error line, if it failed
    if not os.path.exists(train_bin) and os.path.exists(prepare) and master:
        print(f"dataset {name} is not prepared yet: running {os.path.relpath(prepare)}", flush=True)
        result = subprocess.run([sys.executable, prepare], stderr=subprocess.PIPE, text=True)  # progress: stdout
        if result.returncode:
            failed = (result.stderr.strip().splitlines() or ["no output"])[-1].removeprefix("error: ")
    if ddp:
        import torch.distributed as dist
        dist.barrier()  # the other processes wait for the master's prepare, then all check
    problem = dataset_problem(data_dir)
    if problem:
        fail(f"{problem}; run the prepare script that made it again, with --replace")
    if not all(os.path.exists(os.path.join(data_dir, f)) for f in ("train.bin", "val.bin")):
        hint = (f"{prepare} failed: {failed}" if failed else f"{prepare} did not finish" if os.path.exists(prepare) else
                "prepare it with a data/*/prepare.py script or pass --dataset=<folder>")
        fail(f"dataset {name!r} not found: no train.bin and val.bin in {data_dir}; {hint}")
    vocab = None
    meta_path = os.path.join(data_dir, "meta.pkl")
    if os.path.exists(meta_path):
        try:
            with open(meta_path, "rb") as f:
                meta = PlainUnpickler(f).load()
            vocab = "bytes" if meta.get("encoding") == "bytes" else [meta["itos"][i] for i in range(meta["vocab_size"])]
        except Exception as e:
            fail(f"cannot read {meta_path} ({type(e).__name__}: {e}); it is not the vocabulary a prepare.py "
                 f"writes: run its prepare.py again")
    for split in ("train", "val", "test"):
        path = os.path.join(data_dir, f"{split}.bin")
        if split == "test" and not os.path.exists(path):
            continue
        size = os.path.getsize(path)
        if size == 0 or size % 2:
            fail(f"{split}.bin of {data_dir} is truncated ({size} bytes, not a positive multiple of the "
                 f"2 bytes of a uint16 token id); run its prepare.py again")
        if int(read_split(data_dir, split).max()) >= token_count(vocab):
            fail(f"{split}.bin of {data_dir} has token ids beyond {'meta.pkl' if vocab else 'GPT-2 BPE'}'s "
                 f"{token_count(vocab)} tokens; the files come from different runs: run its prepare.py again")
    return data_dir, vocab


def dataset_dir(name):
    """The folder of a dataset: a path to a folder, or the name of one under data/."""
    return name if os.path.isdir(name) else os.path.join(REPO, "data", name)


def tokenizer(vocab, data_dir=None):
    """(encode, decode) between text and ids for a vocabulary (see above). GPT-2 BPE reads the
    encoder.json and vocab.bpe that data/shakespeare/prepare.py leaves in data_dir (no network),
    else lets tiktoken fetch them. A character outside a character vocabulary is a one-line error."""
    if vocab == "bytes":
        return (lambda text: list(text.encode("utf-8"))), (lambda ids: bytes(ids).decode("utf-8", errors="replace"))
    if vocab is None:
        try:
            if data_dir and os.path.exists(os.path.join(data_dir, "encoder.json")):
                from rmoe.gpt2_bpe import gpt2_encoding
                enc = gpt2_encoding(data_dir)
            else:
                import tiktoken
                enc = tiktoken.get_encoding("gpt2")
        except Exception as e:
            fail(f"GPT-2 BPE needs encoder.json and vocab.bpe in the dataset folder (run data/shakespeare/"
                 f"prepare.py) or tiktoken's download of them ({type(e).__name__}: {e})")
        return (lambda text: enc.encode(text, allowed_special={"<|endoftext|>"})), enc.decode
    stoi = {ch: i for i, ch in enumerate(vocab)}

    def encode(text):
        unknown = sorted(set(text) - stoi.keys())
        if unknown:
            fail(f"the prompt has characters outside the model's vocabulary: {''.join(unknown)!r}; "
                 f"remove or replace them")
        return [stoi[ch] for ch in text]

    return encode, lambda ids: "".join(vocab[i] for i in ids)


def vocab_size(vocab):
    """Ids the model needs: the characters, 256 bytes, or GPT-2's 50257 padded to a multiple of 64."""
    return 256 if vocab == "bytes" else len(vocab) if vocab else 50304


def token_count(vocab):
    """Ids that are tokens of the vocabulary: vocab_size but for GPT-2 BPE's padding, 50257."""
    return 50257 if vocab is None else vocab_size(vocab)


def read_split(data_dir, split):
    """A split's token ids, memory-mapped (nothing is read until used)."""
    return np.memmap(os.path.join(data_dir, f"{split}.bin"), dtype=np.uint16, mode="r")


# the files of the data a model learns from (GPT-2 BPE files are checked against their own sha256 when read)
DATA_FILES = ("train.bin", "val.bin", "test.bin", "meta.pkl")


def split_fingerprints(data_dir):
    """{name: sha256} of each file of DATA_FILES that is present, the data's fingerprint: a checkpoint
    keeps it, so resume and compare.py can refuse data prepared again from other text, and it names
    every split the model can be scored on (check_split)."""
    return {name: file_sha256(os.path.join(data_dir, name)) for name in DATA_FILES
            if os.path.exists(os.path.join(data_dir, name))}


def check_split(data_dir, split, recorded, ckpt_path):
    """One-line error unless {split}.bin and meta.pkl of data_dir are the files whose sha256
    split_fingerprints recorded (in the checkpoint at ckpt_path)."""
    name = f"{split}.bin"
    if name not in recorded:
        fail(f"{ckpt_path} was trained beside no {name} (its data had {', '.join(sorted(recorded))}), so it "
             f"cannot be scored on one; score it on another split")
    for file in (name, "meta.pkl"):
        path = os.path.join(data_dir, file)
        if recorded.get(file) != (file_sha256(path) if os.path.exists(path) else None):
            fail(f"{path} is not the file {ckpt_path} was trained beside (it was prepared again since); "
                 f"give --dataset=<folder> of the data it was trained on, or score a model trained on this")


def get_batch(data, block_size, batch_size, generator, device):
    """batch_size windows at offsets drawn by generator: inputs x and targets y = x shifted by one, (B, T) each."""
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    x = torch.stack([torch.from_numpy(data[i:i + block_size].astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + block_size].astype(np.int64)) for i in ix])
    if device.startswith("cuda"):
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


class PlainUnpickler(pickle.Unpickler):
    """meta.pkl is nanoGPT's pickle; this reads its dicts, ints and strings but refuses any class or
    function, so a crafted file cannot run code."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"it asks for {module}.{name}, and only plain values are allowed")
