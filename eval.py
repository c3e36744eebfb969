"""
Score a checkpoint on whole splits of its dataset: every token once, as loss in nats and,
for character and byte data, bits per character (BPC = nats / ln 2), the number the paper
reports on enwik8 (Qiu et al., ICLR 2025, Tabs. 1, 4, 5 and Fig. 2).

    python eval.py --out_dir=out-enwik8-rmoe                 # val and test: the paper's numbers
    python eval.py --out_dir=out-rmoe-small --splits=val
    python eval.py --out_dir=out-enwik8-rmoe --stride=128    # more context per token, 4x the compute

train.py keeps in ckpt.pt the weights of its best evaluation on val (or of a later step,
after Ctrl-C or with always_save_checkpoint, which this script then says), so this one
command gives the paper's "test score of the best validation checkpoint".

Windowing. A split of N tokens has N - 1 targets (its first token has no context). Windows of
block_size tokens step through the split by --stride and score only targets no earlier window
scored, so each target is scored exactly once. With the default stride = block_size the
windows do not overlap: a target is predicted from 1 to block_size tokens, half a block on
average. A smaller stride predicts every target from at least block_size - stride + 1 tokens
(but those at the split's start) for block_size / stride times the compute. The paper's
Transformer-XL model attends over a 2048-token memory, so at equal weights its BPC has more
context behind it than either windowing gives this model.
"""

import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

from rmoe.checkpoint import load_checkpoint, model_from_checkpoint
from configurator import fail, precision, run_script, script_settings
from rmoe.dataset import check_split, load_dataset, read_split

DEFAULTS = {
    "out_dir": "out",  # folder holding ckpt.pt
    "dataset": "",  # "" = the checkpoint's own; else its data where it is now (moved), checked to be the same
    "splits": "all",  # comma-separated, of train, val, test; all = val, and test where the data has one
    "stride": 0,  # tokens between window starts; 0 = block_size (non-overlapping windows)
    "batch_size": 8,  # windows per forward pass (memory and speed: the scores are the same)
    "device": "auto",  # auto | cpu | cuda | cuda:N | mps
    "threads": 0,  # CPU threads for torch; 0 = its default (one per core): a whole split is a long job
}


def main(argv):
    cfg, device = script_settings(sys.modules[__name__], argv)
    if cfg["batch_size"] < 1:
        fail(f"batch_size={cfg['batch_size']} must be at least 1")
    ckpt_path = os.path.join(cfg["out_dir"], "ckpt.pt")
    try:
        ckpt = load_checkpoint(ckpt_path, device)
        model = model_from_checkpoint(ckpt, ckpt_path)
    except ValueError as e:
        fail(e)
    block_size = model.config.block_size
    stride = cfg["stride"] or block_size
    if not 1 <= stride <= block_size:
        fail(f"stride={cfg['stride']} must be between 1 and the model's block_size={block_size} (0 = block_size)")

    data_dir, vocab, splits = scored_splits(ckpt, ckpt_path, cfg)
    step, best_step = ckpt.get("iter_num"), ckpt.get("best_step")
    which = ("" if best_step is None else " (its best val step)" if step == best_step else
             f" (not the best val step, which was {best_step})")
    unit = "BPC" if vocab else "bits/token"  # a token is a character or a byte, else a BPE piece
    print(f"{ckpt_path}: step {step}{which}, data {os.path.relpath(data_dir)}")
    print(f"windows of {block_size} tokens, " + (f"non-overlapping: every target once, predicted from 1 to "
          f"{block_size} tokens" if stride == block_size else f"every {stride}: every target once, predicted from at "
          f"least {block_size - stride + 1} tokens (fewer only at the split's start)"))
    print(f"{'split':<6} {'tokens':>12} {'loss (nats)':>12} {unit:>10}")
    model.eval().to(device)
    try:
        for split in splits:
            nats, count = split_loss(model, read_split(data_dir, split), stride, cfg["batch_size"], device)
            print(f"{split:<6} {count:>12,} {nats / count:>12.4f} {nats / count / math.log(2):>10.4f}")
    except KeyboardInterrupt:
        print(f"interrupted while scoring {split}; nothing was written", file=sys.stderr)
        sys.exit(130)


def scored_splits(ckpt, ckpt_path, cfg):
    """(data folder, vocabulary, splits to score): the checkpoint's data (or --dataset, the same data moved),
    each asked split present and the very one the checkpoint was trained or prepared with."""
    dataset = cfg["dataset"] or ckpt.get("train_config", {}).get("dataset", "")
    if not dataset:
        fail(f"{ckpt_path} does not say what data it was trained on; name it with --dataset=<folder>")
    data_dir, vocab = load_dataset(dataset)
    present = [s for s in ("val", "test") if os.path.exists(os.path.join(data_dir, f"{s}.bin"))]
    splits = present if cfg["splits"] == "all" else cfg["splits"].split(",")
    for split in splits:
        if split not in ("train", "val", "test"):
            fail(f"splits={cfg['splits']!r}: {split!r} is not train, val or test")
        if split not in ("train", *present):
            fail(f"{data_dir} has no {split}.bin; its splits are train and {', '.join(present)}")
    if vocab != ckpt.get("vocab"):
        fail(f"the data in {data_dir} is not the data {ckpt_path} was trained on (another vocabulary); give "
             f"--dataset=<folder> of that data, or score a model trained on this")
    if "data_files" not in ckpt:
        fail(f"{ckpt_path} does not name the files of its data (an older rmoe wrote it), so the splits it would "
             f"be scored on cannot be checked; score a model trained with this code")
    for split in splits:
        check_split(data_dir, split, ckpt["data_files"], ckpt_path)
    return data_dir, vocab, splits


def windows(n_tokens, block_size, stride):
    """The windows that score each of a split's n_tokens - 1 targets once: (start, first) pairs,
    where ids[start:start + block_size] predict ids[start + 1:start + block_size + 1] and the
    targets from window position `first` on are the ones no earlier window scored."""
    size = min(block_size, n_tokens - 1)  # a split shorter than a block is one window
    scored, end = 0, size  # targets at positions 1..scored are done; the window predicts up to `end`
    out = []
    while scored < n_tokens - 1:
        start = end - size
        out.append((start, scored - start))
        scored, end = end, min(end + stride, n_tokens - 1)
    return out


@torch.no_grad()
def split_loss(model, data, stride, batch_size, device):
    """(summed nats, number of targets) of the model on a whole split, every target once."""
    n_tokens = len(data)
    if n_tokens < 2:
        fail(f"a split of {n_tokens} token has nothing to predict")
    size = min(model.config.block_size, n_tokens - 1)
    todo = windows(n_tokens, model.config.block_size, stride)
    _, autocast = precision(device)
    total, count = 0.0, 0
    for i in range(0, len(todo), batch_size):
        batch = todo[i:i + batch_size]
        ids = torch.from_numpy(np.stack([data[s:s + size + 1] for s, _ in batch]).astype(np.int64)).to(device)
        x, y = ids[:, :-1], ids[:, 1:].contiguous()  # (B, T) each
        with autocast:
            logits, _, _ = model(x, y)  # (B, T, V)
        nll = F.cross_entropy(logits.float().transpose(1, 2), y, reduction="none")  # (B, T)
        new = torch.arange(size, device=device) >= torch.tensor([f for _, f in batch], device=device)[:, None]
        total += nll[new].double().sum().item()  # in float64: millions of terms
        count += int(new.sum())
    return total, count


if __name__ == "__main__":
    run_script(main, sys.argv[1:])
