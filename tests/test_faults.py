"""Faults lose nothing: a kill inside the checkpoint writer, Ctrl-C, a non-finite loss, a failed
write of a checkpoint or of analyze.py's outputs, and resuming after any of them continues bit-exactly."""

import errno
import importlib.util
import json
import os
import resource
import shutil
import signal
import subprocess
import sys

import pytest
import torch

import analyze
from rmoe.checkpoint import atomic_write, load_checkpoint, read_record, save_checkpoint
from conftest import REPO, TINY, assert_one_line_error, run, train, train_here

RESUME = ["--init_from=resume", "--max_iters=6", "--eval_interval=1", "--always_save_checkpoint=True"]


def start(script, *args):
    """Start a top-level script with unbuffered output, so its lines can be read as they come."""
    return subprocess.Popen([sys.executable, script, *map(str, args)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})


def wait_for_line(proc, prefix):
    for line in proc.stdout:
        if line.startswith(prefix):
            return
    raise AssertionError(f"no line starting {prefix!r}; stderr: {proc.stderr.read()}")


TIMING = ("ms_per_step", "tokens_per_s", "wall_s", "mfu")


def assert_same_record(a, b):
    """Two runs' log.jsonl hold the same records in the same order, timings aside."""
    a, b = read_record(str(a)), read_record(str(b))
    assert [(r["kind"], r["step"]) for r in a] == [(r["kind"], r["step"]) for r in b]
    for x, y in zip(a, b):
        assert {k: v for k, v in x.items() if k not in TIMING} == {k: v for k, v in y.items() if k not in TIMING}


def assert_same_training_state(a, b):
    """Model, optimizer and RNG state of two checkpoints are bit-identical."""
    assert a["iter_num"] == b["iter_num"]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for key, state in a["optimizer"]["state"].items():
        for name, tensor in state.items():  # step, exp_avg, exp_avg_sq
            assert torch.equal(tensor, b["optimizer"]["state"][key][name]), (key, name)
    assert torch.equal(a["rng"][0]["cpu"], b["rng"][0]["cpu"])


@pytest.fixture
def checkpoint_copy(tiny_checkpoint, tmp_path):
    """A copy of the 2-step tiny checkpoint's folder, and the checkpoint's bytes."""
    shutil.copytree(tiny_checkpoint, tmp_path, dirs_exist_ok=True)
    return tmp_path, (tmp_path / "ckpt.pt").read_bytes()


def test_resume_continues_bit_exactly(tiny_data, tmp_path):
    common = ["--dropout=0.1", "--eval_interval=4", "--always_save_checkpoint=True", "--lr_decay_iters=8",
              "--warmup_iters=2"]
    train(tiny_data, tmp_path / "straight", "--max_iters=8", *common)
    train(tiny_data, tmp_path / "halves", "--max_iters=4", *common)
    result = train(tiny_data, tmp_path / "halves", "--max_iters=8", "--init_from=resume", *common)
    assert "from step 4 to 8" in result.stdout
    a = load_checkpoint(str(tmp_path / "straight" / "ckpt.pt"))
    b = load_checkpoint(str(tmp_path / "halves" / "ckpt.pt"))
    assert a["iter_num"] == 8
    assert_same_training_state(a, b)


def test_ctrl_c_saves_the_current_step_and_resume_is_exact(tiny_data, tmp_path):
    common = ["--dropout=0.1", "--eval_interval=4", "--always_save_checkpoint=True", "--lr_decay_iters=20",
              "--warmup_iters=2"]
    proc = start("train.py", f"--dataset={tiny_data}", f"--out_dir={tmp_path / 'cut'}", *TINY, *common,
                 "--max_iters=1000")
    wait_for_line(proc, "iter 3:")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err == ""  # no traceback, no error
    step = load_checkpoint(str(tmp_path / "cut" / "ckpt.pt"))["iter_num"]
    assert 3 <= step < 1000  # the step it was in when the signal came, not the last evaluation
    assert f"interrupted: saved {tmp_path / 'cut' / 'ckpt.pt'} at step {step}" in out
    # resumed to 3 steps later, it is exactly the run that was never interrupted
    run_to = f"--max_iters={step + 3}"
    resumed = run("train.py", f"--out_dir={tmp_path / 'cut'}", "--init_from=resume", run_to)
    assert resumed.returncode == 0, resumed.stderr
    train(tiny_data, tmp_path / "straight", *common, run_to)
    assert_same_training_state(load_checkpoint(str(tmp_path / "straight" / "ckpt.pt")),
                               load_checkpoint(str(tmp_path / "cut" / "ckpt.pt")))
    # and its record is that of the uninterrupted run: no step missing, none twice
    assert_same_record(tmp_path / "straight", tmp_path / "cut")
    assert [r["step"] for r in read_record(str(tmp_path / "cut")) if r["kind"] == "train"] == list(
        range(1, step + 4))


@pytest.mark.parametrize("killed_after_the_save", [False, True])
def test_resume_continues_the_record_exactly(tiny_data, tmp_path, killed_after_the_save):
    common = ["--eval_interval=2", "--lr_decay_iters=8", "--warmup_iters=1", "--always_save_checkpoint=True"]
    train_here(tiny_data, tmp_path / "straight", "--max_iters=8", *common)
    train_here(tiny_data, tmp_path / "halves", "--max_iters=4", *common)
    if killed_after_the_save:  # steps trained after the checkpoint's step 4, then a kill mid-line
        with open(tmp_path / "halves" / "log.jsonl", "a") as f:
            for step in (5, 6):
                f.write(json.dumps({"kind": "train", "step": step, "loss": 9.0}) + "\n")
            f.write(json.dumps({"kind": "eval", "step": 6, "val_loss": 9.0})[:20])
    train_here(tiny_data, tmp_path / "halves", "--max_iters=8", "--init_from=resume", *common)
    assert_same_record(tmp_path / "straight", tmp_path / "halves")
    assert [r["kind"] for r in read_record(str(tmp_path / "halves"))].count("end") == 1


def test_kill_inside_the_writer_keeps_the_previous_checkpoint(checkpoint_copy):
    folder, before = checkpoint_copy
    proc = start("tests/pause_in_writer.py", f"--out_dir={folder}", *RESUME)
    wait_for_line(proc, "inside the checkpoint writer")
    assert (folder / "ckpt.pt.tmp").exists()  # the new checkpoint is on disk, not yet renamed
    proc.kill()
    proc.communicate()
    assert (folder / "ckpt.pt").read_bytes() == before
    assert load_checkpoint(str(folder / "ckpt.pt"))["iter_num"] == 2
    # the next run writes over the stale temporary file and finishes
    resumed = run("train.py", f"--out_dir={folder}", *RESUME)
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(str(folder / "ckpt.pt"))["iter_num"] == 6
    assert sorted(os.listdir(folder)) == [".lock", "ckpt.pt", "log.jsonl"]


@pytest.mark.parametrize("eval_interval, message", [
    (100, "loss is nan at step 3"),  # a training step's loss
    (3, "the evaluation loss is nan at step 3"),  # step 3's loss was finite, its update was not
])
def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(checkpoint_copy, eval_interval, message):
    folder, before = checkpoint_copy
    # a huge learning rate blows the weights up within two steps; every evaluation would save
    result = run("train.py", f"--out_dir={folder}", "--init_from=resume", "--max_iters=50",
                 "--learning_rate=1e30", "--warmup_iters=0", f"--eval_interval={eval_interval}",
                 "--always_save_checkpoint=True")
    assert_one_line_error(result, message, "keeps the last good state", "lower --learning_rate")
    assert (folder / "ckpt.pt").read_bytes() == before
    assert sorted(os.listdir(folder)) == [".lock", "ckpt.pt", "log.jsonl"]


def limit_file_size():
    """In the child: writes past 64 KiB fail with EFBIG, as a full disk fails them with ENOSPC."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


def test_failed_write_keeps_the_old_checkpoint_and_says_so(checkpoint_copy):
    folder, before = checkpoint_copy
    result = run("train.py", f"--out_dir={folder}", *RESUME, preexec_fn=limit_file_size)
    assert_one_line_error(result, f"cannot write checkpoint {folder / 'ckpt.pt'} (File too large)",
                          f"the previous {folder / 'ckpt.pt'} is intact", "free disk space")
    assert (folder / "ckpt.pt").read_bytes() == before
    assert sorted(os.listdir(folder)) == [".lock", "ckpt.pt", "log.jsonl"]  # the temporary file is gone


def fill_the_disk(monkeypatch):
    """From now on, putting a written file in place fails as on a full disk."""
    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "replace", full)


def test_atomic_write_that_fails_keeps_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "routing.json"
    path.write_bytes(b"the old report")
    fill_the_disk(monkeypatch)
    with pytest.raises(ValueError, match=f"cannot write JSON {path} \\(No space left on device\\); the previous "
                                         f"{path} is intact; free disk space"):
        atomic_write(str(path), b"a new report", "JSON")
    assert path.read_bytes() == b"the old report"
    assert os.listdir(tmp_path) == ["routing.json"]  # the temporary file is gone


def test_atomic_write_into_a_folder_under_a_file_says_nothing_was_written(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match="cannot write picture .*a_file/x.png \\(Not a directory\\); no picture "
                                         "was written"):
        atomic_write(str(tmp_path / "a_file" / "x.png"), b"png", "picture")


def test_atomic_write_over_a_folder_does_not_call_the_folder_intact(tmp_path):
    (tmp_path / "val_loss.png").mkdir()
    with pytest.raises(ValueError) as raised:
        atomic_write(str(tmp_path / "val_loss.png"), b"png", "picture")
    assert "no picture was written" in str(raised.value) and "intact" not in str(raised.value)
    assert os.listdir(tmp_path) == ["val_loss.png"]


def test_failed_first_save_does_not_say_resume(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError) as raised:
        save_checkpoint({"iter_num": 1}, str(tmp_path / "a_file" / "ckpt.pt"))
    assert "no checkpoint was written" in str(raised.value) and "then run again" in str(raised.value)
    assert "resume" not in str(raised.value)



def test_ddp_out_dir_failure_on_rank_0_stops_every_process_with_one_line(tiny_data, tmp_path):
    # only rank 0 makes out_dir: rank 1 must leave with rank 0's error, not a traceback from its next collective
    (tmp_path / "a_file").write_text("")
    for attempt in range(2):
        result = run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py"],
                     f"--dataset={tiny_data}", f"--out_dir={tmp_path / 'a_file' / 'out'}", *TINY,
                     "--max_iters=2", "--device=cpu")
        if "error: " in result.stderr:
            break  # launched; a second try is only for a rendezvous that failed before training began
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and len(set(errors)) == 1, result.stderr  # one line from each process, the same
    assert "cannot write in out_dir" in errors[0] and "pick another --out_dir" in errors[0]
    assert 'train.py", line' not in result.stderr  # no process ended in a traceback of its own
    assert (tmp_path / "a_file").read_text() == ""

@pytest.mark.parametrize("output", ["--json", pytest.param("--plots", marks=pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None, reason="pictures need matplotlib, which is optional"))])
def test_analyze_outputs_that_fail_to_write_keep_the_old_files(tiny_checkpoint, tmp_path, monkeypatch, capsys, output):
    old = {name: f"old {name}".encode() for name in ("routing.json", *analyze.PLOTS)}
    for name, data in old.items():
        (tmp_path / name).write_bytes(data)
    target = tmp_path / "routing.json" if output == "--json" else tmp_path
    fill_the_disk(monkeypatch)
    with pytest.raises(SystemExit) as raised:
        analyze.main([f"--ckpts={tiny_checkpoint}", "--tokens=64", "--device=cpu", f"{output}={target}"])
    message = str(raised.value)
    assert message.startswith("error: cannot write ") and "(No space left on device)" in message
    assert "is intact" in message and f"or pick another {output}" in message and "\n" not in message
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == old
