"""Build enwik8, the byte-level benchmark of the RMoE paper (Tables 1, 4, 5 and Fig. 2), in nanoGPT's format.

enwik8 is the first 10^8 bytes of the English Wikipedia dump of 2006-03-03, distributed by the
Hutter Prize as enwik8.zip (one member, `enwik8`). Every byte is one token, and the split is the
one used throughout the literature (Transformer-XL and the paper's CompeteSMoE code base):
  train.bin  bytes [0, 90M)      val.bin  bytes [90M, 95M)      test.bin  bytes [95M, 100M)
as numpy uint16 token ids (id = byte value), plus
  meta.pkl   pickled dict {"vocab_size": 256, "encoding": "bytes"}: text is encoded as its UTF-8 bytes
  dataset.json  each file's size and sha256, written last: the dataset is complete

Sources (pick one):
  (default)   download http://mattmahoney.net/dc/enwik8.zip (36 MB, needs the internet)
  --zip=PATH  an enwik8.zip you already have

The download is checked against the zip's size and sha256, and the unzipped file against its size
and its sha1 as published by Matt Mahoney, whichever the source; the zip's member is unpacked a
megabyte at a time, after its declared size is checked. A folder that already holds a dataset
is replaced only with --replace. On any problem the script prints one "error: ..." line, exits
with code 1 and leaves existing output files untouched.
"""

import argparse
import hashlib
import io
import pickle
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA_DIR = HERE.parent  # train.py finds --dataset=<name> as data/<name>/
sys.path.insert(0, str(DATA_DIR.parent))  # the repository root, for rmoe
from rmoe.prepare import (ArgumentParser, PrepareError, check_out_dir, fetch, main, regular_file,  # noqa: E402
                          write_dataset, zip_member)

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
FIX = f"pass the Hutter Prize's enwik8.zip from {ZIP_URL}"


def download():
    """enwik8.zip from the Hutter Prize site (36 MB), checked by size and sha256."""
    return fetch(ZIP_URL, ZIP_SIZE, ZIP_SHA256, "download it yourself and pass --zip=PATH")


def unzip_enwik8(zip_file, size, sha1, source):
    """The member `enwik8` of a zip (a path or a file object), checked: its declared size before
    anything is unpacked, then, unpacked a megabyte at a time, its length and sha1 (the real run:
    10^8 bytes and ENWIK8_SHA1; tests pass their own)."""
    data, digest, n = bytearray(size), hashlib.sha1(), 0
    try:
        with zipfile.ZipFile(zip_file) as archive:
            info = zip_member(archive, MEMBER, source, FIX, max_size=size)
            with archive.open(info) as member:
                view = memoryview(data)
                while n < size and (got := member.readinto(view[n:n + (1 << 20)])):
                    digest.update(view[n:n + got])
                    n += got
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise PrepareError(f"{source} is not a readable zip ({e}); {FIX}") from None
    except OSError as e:
        raise PrepareError(f"cannot read {source}: {e.strerror}; check the path") from None
    if n != size:
        raise PrepareError(f"{MEMBER} in {source} has {n:,} bytes, not {size:,}; {FIX}")
    if digest.hexdigest() != sha1:
        raise PrepareError(f"{MEMBER} in {source}: sha1 mismatch, expected {sha1}, got {digest.hexdigest()}; {FIX}")
    return data


def split(data, sizes):
    """{split name: uint16 ids} of the bytes, cut in file order into the given sizes."""
    ids = np.frombuffer(data, dtype=np.uint8).astype(np.uint16)  # a byte is its own token id
    parts, start = {}, 0
    for name, size in sizes.items():
        parts[name] = ids[start:start + size]
        start += size
    return parts


def parse_args(argv):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zip", help="an enwik8.zip you already have, instead of the download")
    parser.add_output_arguments("this script's folder")
    return parser.parse_args(argv)


def run(argv):
    args = parse_args(argv)
    out_dir = Path(args.out_dir).resolve() if args.out_dir else HERE
    check_out_dir(out_dir, args.replace)  # before any download, so a typo costs nothing
    if args.zip:
        source, zip_file = args.zip, regular_file(args.zip, "--zip file")
    else:
        source, zip_file = ZIP_URL, io.BytesIO(download())
    parts = split(unzip_enwik8(zip_file, sum(SPLITS.values()), ENWIK8_SHA1, source), SPLITS)
    write_dataset(out_dir, {"meta.pkl": pickle.dumps(META), **{f"{name}.bin": ids for name, ids in parts.items()}})

    print(", ".join(f"{name}: {len(ids):,} bytes" for name, ids in parts.items()))
    print(f"wrote train.bin, val.bin, test.bin, meta.pkl, dataset.json to {out_dir}")
    print(f"train on it with --dataset={out_dir.name if out_dir.parent == DATA_DIR else out_dir}")


if __name__ == "__main__":
    main(run)
