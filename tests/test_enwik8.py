"""Tests of data/enwik8/prepare.py on small zips of the real one's layout (this machine cannot download it).

In-process tests give split() their own sizes and sha1 (90/5/5 bytes per 100, as the real 90M/5M/5M of 10^8);
subprocess tests run the script as a user would, with its real constants, on zips it must refuse.
"""

import hashlib
import importlib.util
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import FakeResponse, assert_one_line_error

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


def test_split_keeps_file_order_and_every_byte_as_its_token(tmp_path):
    data = wiki_bytes(200)
    parts = prepare.split(prepare.unzip_enwik8(make_zip(tmp_path / "e.zip", "enwik8", data).read_bytes(), "e.zip"),
                          SMALL, hashlib.sha1(data).hexdigest(), "e.zip")
    prepare.write_dataset(parts, tmp_path / "out")

    assert sorted(os.listdir(tmp_path / "out")) == ["meta.pkl", "test.bin", "train.bin", "val.bin"]
    read = {name: np.fromfile(tmp_path / "out" / f"{name}.bin", dtype=np.uint16) for name in SMALL}
    assert {name: len(ids) for name, ids in read.items()} == SMALL
    assert bytes(np.concatenate([read["train"], read["val"], read["test"]]).astype(np.uint8)) == data
    assert bytes(read["val"].astype(np.uint8)) == data[180:190] and bytes(read["test"].astype(np.uint8)) == data[190:]
    assert max(ids.max() for ids in read.values()) > 127  # bytes of multi-byte characters are tokens too
    with open(tmp_path / "out" / "meta.pkl", "rb") as f:
        meta = pickle.load(f)
    assert meta == {"vocab_size": 256, "encoding": "bytes"}
    # the byte encoding meta.pkl names: UTF-8 bytes, decoded back to the text
    assert bytes(np.concatenate(list(read.values())).astype(np.uint8)).decode("utf-8") == data.decode("utf-8")


@pytest.mark.parametrize("data, problem", [(wiki_bytes(201), "201 bytes, not 200"),
                                           (wiki_bytes(199), "199 bytes, not 200")])
def test_split_refuses_a_file_of_the_wrong_size(data, problem):
    with pytest.raises(prepare.PrepareError, match=problem):
        prepare.split(data, SMALL, hashlib.sha1(data).hexdigest(), "e.zip")


def test_split_refuses_a_checksum_mismatch():
    data, other = wiki_bytes(200), bytearray(wiki_bytes(200))
    other[100] ^= 1  # one bit flipped
    with pytest.raises(prepare.PrepareError, match=f"expected {hashlib.sha1(data).hexdigest()}, "
                                                   f"got {hashlib.sha1(other).hexdigest()}"):
        prepare.split(bytes(other), SMALL, hashlib.sha1(data).hexdigest(), "e.zip")


def test_a_wrong_10_to_the_8_bytes_is_refused_and_nothing_is_written(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.bin").write_bytes(b"an earlier dataset")
    fake = make_zip(tmp_path / "enwik8.zip", "enwik8", bytes(10 ** 8))  # the right size, the wrong bytes

    result = run_prepare(f"--zip={fake}", f"--out_dir={out}")

    assert_one_line_error(result, "sha1 mismatch", f"expected {prepare.ENWIK8_SHA1}",
                          f"got {hashlib.sha1(bytes(10 ** 8)).hexdigest()}", prepare.ZIP_URL)
    assert os.listdir(out) == ["train.bin"] and (out / "train.bin").read_bytes() == b"an earlier dataset"


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


def test_download_checks_size_and_sha256(monkeypatch):
    monkeypatch.setattr(prepare.requests, "get", lambda url, timeout: FakeResponse(b"x" * 10))
    with pytest.raises(prepare.PrepareError, match=f"expected {prepare.ZIP_SIZE:,} bytes, got 10"):
        prepare.download()

    forged = b"x" * prepare.ZIP_SIZE
    monkeypatch.setattr(prepare.requests, "get", lambda url, timeout: FakeResponse(forged))
    with pytest.raises(prepare.PrepareError, match=f"expected {prepare.ZIP_SHA256}, "
                                                   f"got {hashlib.sha256(forged).hexdigest()}"):
        prepare.download()


def test_download_failure_names_the_url_and_the_way_out(monkeypatch):
    def no_network(url, timeout):
        raise prepare.requests.ConnectionError("no route to host")

    monkeypatch.setattr(prepare.requests, "get", no_network)
    with pytest.raises(prepare.PrepareError, match=f"could not download {prepare.ZIP_URL}.*--zip=PATH"):
        prepare.download()
