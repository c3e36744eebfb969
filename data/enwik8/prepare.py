"""Build enwik8, the byte-level benchmark of the RMoE paper (Tables 1, 4, 5 and Fig. 2), in nanoGPT's format.

enwik8 is the first 10^8 bytes of the English Wikipedia dump of 2006-03-03, distributed by the
Hutter Prize as enwik8.zip (one member, `enwik8`). Every byte is one token, and the split is the
one used throughout the literature (Transformer-XL and the paper's CompeteSMoE code base):
  train.bin  bytes [0, 90M)      val.bin  bytes [90M, 95M)      test.bin  bytes [95M, 100M)
as numpy uint16 token ids (id = byte value), plus
  meta.pkl   pickled dict {"vocab_size": 256, "encoding": "bytes"}: text is encoded as its UTF-8 bytes.

Sources (pick one):
  (default)   download http://mattmahoney.net/dc/enwik8.zip (36 MB, needs the internet)
  --zip=PATH  an enwik8.zip you already have

The download is checked against the zip's size and sha256, and the unzipped file against its size
and its sha1 as published by Matt Mahoney, whichever the source. On any problem the script prints
one "error: ..." line, exits with code 1 and leaves existing output files untouched.
"""

import argparse
import hashlib
import importlib.util
import io
import pickle
import zipfile
import zlib
from pathlib import Path

import numpy as np
import requests

HERE = Path(__file__).resolve().parent
DATA_DIR = HERE.parent  # train.py finds --dataset=<name> as data/<name>/

# One implementation of the one-line errors and the atomic writes: shakespeare_char's.
_spec = importlib.util.spec_from_file_location("shakespeare_char_prepare", DATA_DIR / "shakespeare_char" / "prepare.py")
char_prepare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(char_prepare)
PrepareError, ArgumentParser, write_atomically = (char_prepare.PrepareError, char_prepare.ArgumentParser,
                                                  char_prepare.write_atomically)

ZIP_URL = "http://mattmahoney.net/dc/enwik8.zip"
# Size as listed on http://mattmahoney.net/dc/textdata.html; sha256 as listed for this URL in
# huggingface/datasets, datasets/enwik8/dataset_infos.json ("download_checksums").
ZIP_SIZE = 36_445_475
ZIP_SHA256 = "547994d9980ebed1288380d652999f38a14fe291a6247c157c3d33d4932534bc"
MEMBER = "enwik8"
# Size and SHA-1 of the unzipped file as published on http://mattmahoney.net/dc/textdata.html.
ENWIK8_SHA1 = "57b8363b814821dc9d47aa4d41f58733519076b2"
SPLITS = {"train": 90_000_000, "val": 5_000_000, "test": 5_000_000}  # in file order; they sum to 10^8
META = {"vocab_size": 256, "encoding": "bytes"}


def download():
    """The bytes of enwik8.zip from the Hutter Prize site, checked by size and sha256."""
    print(f"downloading {ZIP_URL} (36 MB) ...")
    try:
        response = requests.get(ZIP_URL, timeout=300)
        response.raise_for_status()
    except requests.RequestException as e:
        raise PrepareError(f"could not download {ZIP_URL} ({type(e).__name__}); check your internet "
                           "connection, or download it yourself and pass --zip=PATH") from None
    data = response.content
    if len(data) != ZIP_SIZE:
        raise PrepareError(f"{ZIP_URL}: expected {ZIP_SIZE:,} bytes, got {len(data):,}; re-run to download it again")
    char_prepare.check_sha256(data, ZIP_SHA256, ZIP_URL, "re-run to download it again")
    return data


def unzip_enwik8(zip_bytes, source):
    """The one member `enwik8` of the zip."""
    try:
        with zipfile.ZipFile(io.BytesIO(zip_bytes)) as archive:
            names = archive.namelist()
            if MEMBER not in names:
                raise PrepareError(f"{source} holds {', '.join(names) or 'nothing'}, not the file {MEMBER!r}; "
                                   f"pass the Hutter Prize's enwik8.zip from {ZIP_URL}")
            return archive.read(MEMBER)
    except (zipfile.BadZipFile, zlib.error) as e:
        raise PrepareError(f"{source} is not a readable zip ({e}); pass the enwik8.zip from {ZIP_URL}") from None


def split(data, sizes, sha1, source):
    """{split name: uint16 ids} of the bytes, cut in file order into the given sizes, after checking
    the bytes' length and sha1 (the real run: SPLITS and ENWIK8_SHA1; tests pass their own)."""
    if len(data) != sum(sizes.values()):
        raise PrepareError(f"{MEMBER} in {source} has {len(data):,} bytes, not {sum(sizes.values()):,}; "
                           f"pass the Hutter Prize's enwik8.zip from {ZIP_URL}")
    got = hashlib.sha1(data).hexdigest()
    if got != sha1:
        raise PrepareError(f"{MEMBER} in {source}: sha1 mismatch, expected {sha1}, got {got}; "
                           f"pass the Hutter Prize's enwik8.zip from {ZIP_URL}")
    ids = np.frombuffer(data, dtype=np.uint8).astype(np.uint16)  # a byte is its own token id
    parts, start = {}, 0
    for name, size in sizes.items():
        parts[name] = ids[start:start + size]
        start += size
    return parts


def write_dataset(parts, out_dir):
    # train.bin goes last: train.py takes its presence to mean the dataset is complete.
    order = [name for name in parts if name != "train"] + ["train"]
    write_atomically({out_dir / "meta.pkl": pickle.dumps(META),
                      **{out_dir / f"{name}.bin": parts[name].tobytes() for name in order}})


def parse_args(argv):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zip", help="an enwik8.zip you already have, instead of the download")
    parser.add_argument("--out_dir", help="output folder (default: this script's folder)")
    return parser.parse_args(argv)


def run(argv):
    args = parse_args(argv)
    out_dir = Path(args.out_dir).resolve() if args.out_dir else HERE
    # Checked before any download so a typo costs nothing.
    if out_dir.exists() and not out_dir.is_dir():
        raise PrepareError(f"output folder {out_dir} is a file; pass another --out_dir")
    if args.zip:
        source, zip_bytes = args.zip, char_prepare.read_bytes(args.zip, "--zip file")
    else:
        source, zip_bytes = ZIP_URL, download()
    parts = split(unzip_enwik8(zip_bytes, source), SPLITS, ENWIK8_SHA1, source)
    write_dataset(parts, out_dir)

    print(", ".join(f"{name}: {len(ids):,} bytes" for name, ids in parts.items()))
    print(f"wrote train.bin, val.bin, test.bin, meta.pkl to {out_dir}")
    print(f"train on it with --dataset={out_dir.name if out_dir.parent == DATA_DIR else out_dir}")



if __name__ == "__main__":
    char_prepare.main(run)  # its one-line errors
