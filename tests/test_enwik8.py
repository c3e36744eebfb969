"""Tests of data/enwik8/prepare.py on small zips of the real one's layout (this machine cannot download it).

In-process tests give unzip_enwik8() and split() their own sizes and sha1 (90/5/5 bytes per 100, as the real 90M/5M/5M of 10^8);
subprocess tests run the script as a user would, with its real constants, on zips it must refuse.
"""

import hashlib
import importlib.util
import os
import pickle
import re
import struct
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line_error
from rmoe.prepare import dataset_problem

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "data" / "enwik8" / "prepare.py"

_spec = importlib.util.spec_from_file_location("enwik8_prepare", SCRIPT)
prepare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(prepare)

SMALL = {"train": 180, "val": 10, "test": 10}  # the real split, scaled to 200 bytes


def make_zip(path, member, data):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member, data)
    return path


def patch_member(path, flag_bits=None, compress_type=None, file_size=None):
    """Rewrite header fields of a one-member zip in place, in its local header and its central
    directory, to what zipfile cannot write itself: encrypted, another method, another size."""
    raw = bytearray(path.read_bytes())
    for signature, offsets in ((b"PK\x03\x04", (6, 8, 22)), (b"PK\x01\x02", (8, 10, 24))):
        at = raw.index(signature)
        for value, offset, fmt in zip((flag_bits, compress_type, file_size), offsets, ("<H", "<H", "<I")):
            if value is not None:
                struct.pack_into(fmt, raw, at + offset, value)
    path.write_bytes(raw)
    return path


def wiki_bytes(n):
    """n bytes of UTF-8 text, multi-byte characters included, in a different order each time."""
    text = "".join(np.random.default_rng(n).permutation(list("<page> Anarchism é ü 漢 – [[Link]] ")))
    return (text.encode() * n)[:n]


def run_prepare(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def test_real_constants_split_10_to_the_8_bytes_90_5_5():
    assert list(prepare.SPLITS) == ["train", "val", "test"]
    assert list(prepare.SPLITS.values()) == [90_000_000, 5_000_000, 5_000_000]
    assert prepare.META == {"vocab_size": 256, "encoding": "bytes"}


def unzip(path, data):
    """unzip_enwik8 of a test zip that should hold the bytes `data`."""
    return prepare.unzip_enwik8(path, len(data), hashlib.sha1(data).hexdigest(), "e.zip")


def test_split_keeps_file_order_and_every_byte_as_its_token(tmp_path):
    data = wiki_bytes(200)
    parts = prepare.split(unzip(make_zip(tmp_path / "e.zip", "enwik8", data), data), SMALL)

    assert {name: len(ids) for name, ids in parts.items()} == SMALL
    assert all(ids.dtype == np.uint16 for ids in parts.values())
    assert bytes(np.concatenate([parts["train"], parts["val"], parts["test"]]).astype(np.uint8)) == data
    assert bytes(parts["val"].astype(np.uint8)) == data[180:190] and bytes(parts["test"].astype(np.uint8)) == data[190:]
    assert max(ids.max() for ids in parts.values()) > 127  # bytes of multi-byte characters are tokens too
    # the byte encoding meta.pkl names: UTF-8 bytes, decoded back to the text
    assert bytes(np.concatenate(list(parts.values())).astype(np.uint8)).decode("utf-8") == data.decode("utf-8")


def test_a_whole_run_writes_the_four_files_and_their_list(tmp_path, monkeypatch):
    data = wiki_bytes(200)
    monkeypatch.setattr(prepare, "SPLITS", SMALL)
    monkeypatch.setattr(prepare, "ENWIK8_SHA1", hashlib.sha1(data).hexdigest())
    prepare.run([f"--zip={make_zip(tmp_path / 'e.zip', 'enwik8', data)}", f"--out_dir={tmp_path / 'out'}"])

    assert sorted(os.listdir(tmp_path / "out")) == ["dataset.json", "meta.pkl", "test.bin", "train.bin", "val.bin"]
    read = {name: np.fromfile(tmp_path / "out" / f"{name}.bin", dtype=np.uint16) for name in SMALL}
    assert bytes(np.concatenate([read["train"], read["val"], read["test"]]).astype(np.uint8)) == data
    with open(tmp_path / "out" / "meta.pkl", "rb") as f:
        assert pickle.load(f) == {"vocab_size": 256, "encoding": "bytes"}
    assert dataset_problem(tmp_path / "out") is None


def test_the_size_a_member_declares_is_checked_before_it_is_unpacked(tmp_path):
    """A zip bomb: 64 MB of zeros in a zip of 64 kB. Refused by the size it declares, in no more
    memory than a buffer (not after unpacking it)."""
    bomb = tmp_path / "e.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive, archive.open("enwik8", "w") as member:
        for _ in range(64):
            member.write(bytes(1 << 20))
    assert bomb.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(prepare.PrepareError, match="unpacks to 67,108,864 bytes, more than the 200 it should"):
            unzip(bomb, wiki_bytes(200))
        assert tracemalloc.get_traced_memory()[1] < 4 << 20
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("holds, problem", [(150, "enwik8 in e.zip has 150 bytes, not 200"),
                                           (250, "e.zip is not a readable zip (Bad CRC-32")])
def test_a_member_other_than_it_declares_is_refused(tmp_path, holds, problem):
    """Its header says 200 bytes, as the split needs; the member holds 150 or 250."""
    liar = patch_member(make_zip(tmp_path / "e.zip", "enwik8", wiki_bytes(holds)), file_size=200)
    with pytest.raises(prepare.PrepareError, match=re.escape(problem)):
        unzip(liar, wiki_bytes(200))


def test_split_refuses_a_checksum_mismatch(tmp_path):
    data, other = wiki_bytes(200), bytearray(wiki_bytes(200))
    other[100] ^= 1  # one bit flipped
    with pytest.raises(prepare.PrepareError, match=f"expected {hashlib.sha1(data).hexdigest()}, "
                                                   f"got {hashlib.sha1(other).hexdigest()}"):
        unzip(make_zip(tmp_path / "e.zip", "enwik8", bytes(other)), data)


def earlier_dataset(out):
    """An out_dir holding a dataset; returns its files' bytes, to compare after a failed run."""
    out.mkdir()
    (out / "train.bin").write_bytes(b"an earlier dataset")
    return {name: (out / name).read_bytes() for name in os.listdir(out)}


def test_a_wrong_10_to_the_8_bytes_is_refused_and_nothing_is_written(tmp_path):
    out = tmp_path / "out"
    before = earlier_dataset(out)
    fake = make_zip(tmp_path / "enwik8.zip", "enwik8", bytes(10 ** 8))  # the right size, the wrong bytes

    result = run_prepare(f"--zip={fake}", f"--out_dir={out}", "--replace")

    assert_one_line_error(result, "sha1 mismatch", f"expected {prepare.ENWIK8_SHA1}",
                          f"got {hashlib.sha1(bytes(10 ** 8)).hexdigest()}", prepare.ZIP_URL)
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before


@pytest.mark.parametrize("change, problem", [({"flag_bits": 1}, "enwik8 in {zip} is encrypted"),
                                             ({"compress_type": 9}, "compressed with method 9, which Python's "
                                                                    "zipfile cannot unpack"),
                                             ({"file_size": 3_200_000_000}, "unpacks to 3,200,000,000 bytes, "
                                                                            "more than the 100,000,000 it should")])
def test_a_member_zipfile_cannot_or_should_not_unpack_is_refused_and_nothing_is_written(tmp_path, change, problem):
    out = tmp_path / "out"
    before = earlier_dataset(out)
    zip_path = patch_member(make_zip(tmp_path / "enwik8.zip", "enwik8", wiki_bytes(200)), **change)

    result = run_prepare(f"--zip={zip_path}", f"--out_dir={out}", "--replace")

    assert_one_line_error(result, problem.format(zip=zip_path), prepare.ZIP_URL)
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before


@pytest.mark.parametrize("kind", ["named pipe", "folder"])
def test_a_zip_path_that_is_not_a_regular_file_is_refused_at_once(tmp_path, kind):
    path = tmp_path / "enwik8.zip"
    os.mkfifo(path) if kind == "named pipe" else path.mkdir()

    result = subprocess.run([sys.executable, str(SCRIPT), f"--zip={path}", f"--out_dir={tmp_path / 'out'}"],
                            capture_output=True, text=True, timeout=60)  # a read of the pipe would block forever

    assert_one_line_error(result, f"--zip file {path} is not a regular file", "pass the path of a file")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("member", ["enwik9", "data/enwik8"])
def test_a_zip_without_the_enwik8_member_is_refused(tmp_path, member):
    wrong = make_zip(tmp_path / "enwik8.zip", member, wiki_bytes(200))

    result = run_prepare(f"--zip={wrong}", f"--out_dir={tmp_path / 'out'}")

    assert_one_line_error(result, f"holds {member}, not the file 'enwik8'", "pass the Hutter Prize's enwik8.zip")
    assert not (tmp_path / "out").exists()


def test_a_file_that_is_not_a_zip_is_refused(tmp_path):
    (tmp_path / "enwik8.zip").write_bytes(wiki_bytes(200))

    result = run_prepare(f"--zip={tmp_path / 'enwik8.zip'}", f"--out_dir={tmp_path / 'out'}")

    assert_one_line_error(result, "is not a readable zip", prepare.ZIP_URL)
