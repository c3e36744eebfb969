"""compare.py: a tiny 2-variant x 2-seed experiment end to end, run again (finished runs kept,
an interrupted one resumed), its statistics against values worked by hand, and bad experiment
files refused before anything is written. compare.main runs in this process; its runs are
train.py processes as a user's are."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import compare
from rmoe.checkpoint import claim, load_checkpoint, read_record
from conftest import REPO, TINY, assert_one_line_exit, train_here


def experiment(tmp_path, tiny_data, variants='{"smoe": ["--router=linear"], "rmoe": []}', extra=""):
    path = tmp_path / "exp.py"
    base = TINY + [f"--dataset={tiny_data}", "--max_iters=4", "--eval_interval=2"]
    path.write_text(f"base = {base!r}\nvariants = {variants}\nbaseline = 'smoe'\nseeds = [1, 2]\n{extra}")
    return str(path)


def compare_here(*argv):
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        compare.main(list(map(str, argv)))
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def test_two_variants_two_seeds_end_to_end_then_again(tiny_data, tmp_path, capsys):
    exp, exp_dir = experiment(tmp_path, tiny_data), tmp_path / "exp"
    # rmoe seed 2 was interrupted earlier: a checkpoint at step 2, and no end in its record
    interrupted = exp_dir / "rmoe" / "seed2"
    train_here(tiny_data, interrupted, "--max_iters=2", "--eval_interval=2", "--seed=2")
    earlier = [r for r in read_record(str(interrupted)) if r["kind"] != "end"]
    (interrupted / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in earlier))
    capsys.readouterr()

    compare_here(exp, f"--exp_dir={exp_dir}", "--jobs=2")
    out = capsys.readouterr().out
    assert "0 of 4 runs already finished; 4 to train" in out
    assert "training rmoe seed 2 resumed from its checkpoint (record at step 2)" in out
    assert "from step 2 to 4" in (interrupted / "train.log").read_text()
    resumed = read_record(str(interrupted))
    assert resumed[:len(earlier)] == earlier  # kept as it was, timings included: not trained again
    assert [(r["kind"], r["step"]) for r in resumed] == [
        ("eval", 0), ("train", 1), ("train", 2), ("eval", 2), ("train", 3), ("train", 4), ("eval", 4), ("end", 4)]

    assert "4 of 4 runs finished" in out and "| rmoe | 2 |" in out and "| smoe | 2 |" in out
    summary = json.loads((exp_dir / "summary.json").read_text())
    final = {(v, s): read_record(str(exp_dir / v / f"seed{s}"))[-2]["val_loss"] for v in ("smoe", "rmoe")
             for s in (1, 2)}
    rmoe, smoe = summary["variants"]["rmoe"], summary["variants"]["smoe"]
    assert rmoe["final_val_loss"][0] == pytest.approx((final["rmoe", 1] + final["rmoe", 2]) / 2)
    difference = rmoe["final_val_loss_vs_baseline"]
    assert difference[0] == pytest.approx((final["rmoe", 1] - final["smoe", 1] + final["rmoe", 2]
                                           - final["smoe", 2]) / 2)
    assert difference[1] < difference[0] < difference[2]
    assert summary["baseline"] == "smoe" and "final_val_loss_vs_baseline" not in smoe

    runs = sorted(exp_dir.glob("*/seed*/ckpt.pt"))
    assert len(runs) == 4
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in runs}
    compare_here(exp, f"--exp_dir={exp_dir}")
    again = capsys.readouterr().out
    assert "4 of 4 runs already finished; 0 to train" in again and "training " not in again
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in runs} == before
    assert json.loads((exp_dir / "summary.json").read_text()) == summary


def test_statistics_against_values_worked_by_hand():
    mean, sd = compare.mean_std([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3) and sd == pytest.approx(math.sqrt(7 / 3))  # sample std, n - 1
    assert math.isnan(compare.mean_std([5.0])[1])
    # differences 2, 3, 6: mean 11/3, sd sqrt(13/3), half-width t_{0.975,2} sd / sqrt(3)
    mean, low, high = compare.paired_difference([3.0, 5.0, 10.0], [1.0, 2.0, 4.0])
    half = 4.302653 * math.sqrt(13 / 3) / math.sqrt(3)
    assert mean == pytest.approx(11 / 3)
    assert (low, high) == (pytest.approx(11 / 3 - half, abs=1e-5), pytest.approx(11 / 3 + half, abs=1e-5))
    # paired, not pooled: a constant offset over very different seeds has no spread at all
    assert compare.paired_difference([10.0, 20.0, 30.0], [9.0, 19.0, 29.0]) == pytest.approx((1.0, 1.0, 1.0))
    for df, t in [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423)]:
        assert compare.t_quantile(0.975, df) == pytest.approx(t, abs=1e-4)


BAD = [
    ("unknown key", '{"smoe": ["--router=linear"], "rmoe": ["--routr=gru"]}', "", "unknown key 'routr'"),
    ("wrong type", '{"smoe": ["--router=linear"], "rmoe": ["--n_layer=2.5"]}', "", "n_layer must be int"),
    ("one name twice", '{"smoe": ["--router=linear"], "smoe": []}', "", "variant 'smoe' is named twice"),
    ("a variant sets the seed", '{"smoe": ["--router=linear"], "rmoe": ["--seed=3"]}', "",
     "--seed=3 is set by compare.py"),
    ("a variant sets out_dir", '{"smoe": ["--router=linear"], "rmoe": ["--out_dir=x"]}', "",
     "--out_dir=x is set by compare.py"),
    ("baseline not a variant", '{"linear": ["--router=linear"], "rmoe": []}', "",
     "baseline='smoe' is not one of the variants"),
    ("bad model setting", '{"smoe": ["--router=linear"], "rmoe": ["--top_k=9"]}', "", "top_k=9"),
    ("missing dataset", '{"smoe": ["--router=linear"], "rmoe": ["--dataset=no_such_dataset"]}', "",
     "dataset 'no_such_dataset' not found"),
    ("a variant name that is no string", '{"smoe": ["--router=linear"], 1: []}', "",
     "variant name 1 must be a string"),
    ("a very long variant name", '{"smoe": ["--router=linear"], "' + "r" * 300 + '": []}', "", "at most 100"),
    ("an unhashable baseline", '{"smoe": ["--router=linear"], "rmoe": []}', "baseline = ['smoe']",
     "baseline=['smoe'] is not one of the variants"),
]


@pytest.mark.parametrize("variants, extra, message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_bad_experiment_is_one_line_before_anything_is_written(tiny_data, tmp_path, variants, extra, message):
    exp = experiment(tmp_path, tiny_data, variants, extra)
    with pytest.raises(SystemExit) as exit_info:
        compare_here(exp, f"--exp_dir={tmp_path / 'exp'}")
    assert_one_line_exit(exit_info, message)
    assert not os.path.exists(tmp_path / "exp")


@pytest.mark.parametrize("cores, jobs, asked, threads", [
    (2, 1, None, 2), (2, 2, None, 1), (8, 3, None, 2),  # the cores shared out
    (2, 1, "1", 1), (8, 2, "2", 2),  # the user asked for fewer: a shared machine
    (2, 1, "4", 2), (2, 1, "", 2), (2, 1, "x", 2),  # never more than the share; nonsense is ignored
])
def test_threads_per_run_share_the_cores_and_respect_fewer_asked(monkeypatch, cores, jobs, asked, threads):
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    if asked is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", asked)
    assert compare.threads_per_run(jobs) == threads


# -----------------------------------------------------------------------------
# every run compare reports, skips or resumes is the run its command plans

def trained(tmp_path, tiny_data, *overrides, seeds="1", only=None):
    """An experiment whose planned runs (or the `only` first ones) were trained in this process, as
    compare.py would have trained them; returns (experiment file, exp_dir, the runs)."""
    import train
    exp, exp_dir = experiment(tmp_path, tiny_data), tmp_path / "exp"
    runs = compare.plan_runs(compare.read_experiment(exp, seeds), list(overrides), str(exp_dir))
    for run in runs[:only]:
        train.main(run["argv"])
    signal.signal(signal.SIGINT, signal.default_int_handler)  # train.main installed its own
    return exp, exp_dir, runs


def snapshot(folder):
    """Every file's bytes but the lock's (an empty file that only says who holds the folder)."""
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def refused(capsys, *argv):
    """compare.main(argv) must exit with one "error: ..." line before anything trains; returns it."""
    with pytest.raises(SystemExit) as exit_info:
        compare_here(*argv)
    assert "training " not in capsys.readouterr().out
    assert_one_line_exit(exit_info)
    return exit_info.value.code


@pytest.mark.parametrize("changed, named", [
    (["--learning_rate=0.02"], "learning_rate=0.002 (this command: 0.02)"),
    (["--n_layer=3", "--n_experts=0"], "n_layer=2 (this command: 3)"),  # a dense model
    (["--dropout=0.1"], "dropout=0.0 (this command: 0.1)"),  # shapes no weight, but another run all the same
], ids=["learning rate", "dense model", "dropout"])
def test_finished_runs_trained_otherwise_are_refused_not_reported(tiny_data, tmp_path, capsys, changed, named):
    exp, exp_dir, runs = trained(tmp_path, tiny_data)
    before = snapshot(exp_dir)
    for report_only in ([], ["--report_only=True"]):
        message = refused(capsys, exp, f"--exp_dir={exp_dir}", *changed, *report_only)
        assert runs[0]["dir"] in message and named in message and "new --exp_dir" in message, message
    assert snapshot(exp_dir) == before


def test_an_interrupted_run_is_not_resumed_with_other_settings(tiny_data, tmp_path, capsys):
    exp, exp_dir, runs = trained(tmp_path, tiny_data, "--max_iters=2", only=1)  # stopped at step 2 of 4
    before = snapshot(exp_dir)
    message = refused(capsys, exp, f"--exp_dir={exp_dir}", "--learning_rate=0.02")
    assert runs[0]["dir"] in message and "learning_rate=" in message
    assert snapshot(exp_dir) == before and not os.path.exists(runs[1]["dir"])  # nothing else started


def test_runs_on_data_prepared_again_are_refused(tiny_data, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    exp, exp_dir, runs = trained(tmp_path, str(data))
    ids = np.fromfile(data / "train.bin", dtype=np.uint16)
    np.random.default_rng(1).permutation(ids).tofile(data / "train.bin")  # same characters, other text
    for report_only in ([], ["--report_only=True"]):
        message = refused(capsys, exp, f"--exp_dir={exp_dir}", *report_only)
        assert runs[0]["dir"] in message and "trained on other data" in message and "restore" in message


def test_max_iters_may_be_raised_and_nothing_else(tiny_data, tmp_path, capsys):
    exp, exp_dir, runs = trained(tmp_path, tiny_data, "--max_iters=4")
    plan = compare.read_experiment(exp, "1")
    states = lambda *overrides: [r["state"] for r in checked(plan, overrides, exp_dir)]
    assert states() == ["finished", "finished"]
    assert states("--max_iters=6") == ["resume", "resume"]  # a finished run trains on
    with pytest.raises(compare.ConfigError, match="trained to step 4, past max_iters=3; give --max_iters=4"):
        states("--max_iters=3")  # its step-4 losses are not this command's


def checked(plan, overrides, exp_dir):
    runs = compare.plan_runs(plan, list(overrides), str(exp_dir))
    compare.check_runs(runs)
    return runs


# -----------------------------------------------------------------------------
# a record that disagrees with its checkpoint, or is damaged, is refused; a picture draws every run

def cut_record(folder, keep):
    path = folder / "log.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:keep]))


@pytest.mark.parametrize("damage, message", [
    (lambda f: cut_record(f, 3), "holds 3 records up to step 4, but its checkpoint (step 4) was saved after 7"),
    (lambda f: (f / "log.jsonl").unlink(), "is missing, but its checkpoint"),
    (lambda f: (f / "log.jsonl").write_text("not json\n"), "line 1 of the run record"),
    (lambda f: (f / "log.jsonl").write_text("[1, 2]\n"), "line 1 of the run record"),
    (lambda f: (f / "log.jsonl").write_text('{"step": 1}\n'), "is not a record"),
    (lambda f: (f / "log.jsonl").write_bytes(b'{"kind": "caf\xe9"}\n'), "not UTF-8 text"),
    (lambda f: ((f / "log.jsonl").unlink(), (f / "log.jsonl").mkdir()), "cannot read the run record"),
], ids=["cut short", "deleted", "garbage", "not an object", "no kind", "non-UTF-8", "a folder"])
def test_a_damaged_record_is_one_line_that_names_it(tiny_data, tmp_path, capsys, damage, message):
    exp, exp_dir, runs = trained(tmp_path, tiny_data, "--max_iters=4", "--eval_interval=2")
    damage(exp_dir / "smoe" / "seed1")
    for report_only in ([], ["--report_only=True"]):
        error = refused(capsys, exp, f"--exp_dir={exp_dir}", *report_only)
        assert message in error and runs[0]["dir"] in error and ("restore" in error or "delete" in error), error


def test_the_picture_draws_every_seed_it_reports(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    import matplotlib.axes
    drawn = []
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", lambda ax, x, y, **kw: drawn.append((kw["label"], list(x))))
    monkeypatch.setattr(matplotlib.axes.Axes, "legend", lambda ax, *args, **kw: None)
    curves = [[(0, 4.0), (2, 3.0), (4, 2.0)], [(0, 4.1), (2, 3.1)], [(0, 4.2), (2, 3.2), (4, 2.2), (6, 2.1)]]
    compare.plot_curves({"rmoe": {"curves": curves}}, str(tmp_path / "val_loss.png"))
    assert drawn[0] == ("rmoe (3 seeds)", [0, 2])  # all three, at the steps all three have
    assert "steps 4, 6 are left out" in capsys.readouterr().out


# -----------------------------------------------------------------------------
# the report of runs without train records; strict JSON

@pytest.mark.parametrize("settings", [["--log_interval=100"], ["--max_iters=0", "--warmup_iters=0"]],
                         ids=["log_interval above max_iters", "max_iters 0"])
def test_finished_runs_without_train_records_are_reported(tiny_data, tmp_path, capsys, settings):
    exp, exp_dir, runs = trained(tmp_path, tiny_data, *settings)
    capsys.readouterr()
    for report_only in ([], ["--report_only=True"]):
        compare_here(exp, f"--exp_dir={exp_dir}", "--seeds=1", *settings, *report_only)
        out = capsys.readouterr().out
        assert "2 of 2 runs finished" in out and "| rmoe | 1 |" in out and out.rstrip().count("| — |") >= 2, out

    def strict(constant):
        raise ValueError(f"bare {constant} in summary.json")
    summary = json.loads((exp_dir / "summary.json").read_text(), parse_constant=strict)
    assert summary["variants"]["rmoe"]["ms_per_step"] is None
    assert summary["variants"]["rmoe"]["final_val_loss"][1] is None  # one seed: no deviation


# -----------------------------------------------------------------------------
# a compare owns its folder, its runs end with it, and a failed run's reason is its own

@pytest.mark.parametrize("where, message", [("file", "(it is a file); pick another --exp_dir"),
                                            ("file/exp", "(Not a directory); pick another --exp_dir")])
def test_an_experiment_folder_that_cannot_be_made_is_one_line(tiny_data, tmp_path, capsys, where, message):
    (tmp_path / "file").write_text("not a folder")
    error = refused(capsys, experiment(tmp_path, tiny_data), f"--exp_dir={tmp_path / where}")
    assert f"cannot use exp_dir {tmp_path / where}" in error and message in error
    assert (tmp_path / "file").read_text() == "not a folder"


def test_one_compare_at_a_time_owns_the_experiment_folder(tiny_data, tmp_path, capsys):
    exp_dir = tmp_path / "exp"
    exp_dir.mkdir()
    lock = claim(str(exp_dir), "exp_dir", "compare.py")  # as another compare.py holds it
    try:
        error = refused(capsys, experiment(tmp_path, tiny_data), f"--exp_dir={exp_dir}")
    finally:
        lock.close()
    assert f"exp_dir {exp_dir} is in use by another compare.py" in error and "wait for it to finish" in error
    assert [p.name for p in exp_dir.iterdir()] == [".lock"]


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGHUP], ids=["SIGKILL", "SIGHUP"])
def test_a_compare_stopped_the_hard_way_takes_its_runs_with_it(tiny_data, tmp_path, how):
    exp, exp_dir = experiment(tmp_path, tiny_data), tmp_path / "exp"
    run_dir = exp_dir / "smoe" / "seed1"
    proc = subprocess.Popen([sys.executable, "compare.py", exp, f"--exp_dir={exp_dir}", "--seeds=1",
                             "--max_iters=100000", "--eval_interval=100000"], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        wait_until(lambda: any(r["kind"] == "train" for r in read_record(str(run_dir))), "the run's first step")
    finally:
        proc.send_signal(how)
    out, err = proc.communicate(timeout=120)
    if how == signal.SIGHUP:  # a closed terminal: as Ctrl-C
        assert proc.returncode == 130 and "interrupted: every run in flight saved its current step" in out, err
    wait_until(lambda: free(run_dir), "the run to end with its compare")
    assert load_checkpoint(str(run_dir / "ckpt.pt"))["iter_num"] >= 1  # it saved the step it was in


def wait_until(condition, what, seconds=120):
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, f"waited {seconds} s for {what}"
        time.sleep(0.2)


def free(run_dir):
    try:
        claim(str(run_dir)).close()
        return True
    except ValueError:
        return False


def test_a_failed_runs_reason_is_its_own_error_of_this_attempt(tiny_data, tmp_path, capsys):
    exp, exp_dir = experiment(tmp_path, tiny_data), tmp_path / "exp"
    run_dir = exp_dir / "smoe" / "seed1"
    run_dir.mkdir(parents=True)
    (run_dir / "train.log").write_text("error: an earlier attempt's failure\niter 7: loss 2.0\n")
    lock = claim(str(run_dir))  # an orphan of an earlier compare still trains into it
    try:
        with pytest.raises(SystemExit) as exit_info:
            compare_here(exp, f"--exp_dir={exp_dir}", "--seeds=1")
    finally:
        lock.close()
    assert_one_line_exit(exit_info)
    error = exit_info.value.code
    assert "1 run(s) failed (smoe seed 1: error: out_dir" in error and "is in use by another run" in error
    assert "earlier attempt" not in error and "iter 7" not in error


class Ended:
    """A train.py process that has exited with this code (or, stuck, one that a second Ctrl-C meets)."""

    def __init__(self, returncode, stuck=False):
        self.returncode, self.stuck, self.killed = returncode, stuck, False

    def send_signal(self, signum):
        pass

    def wait(self):
        if self.stuck and not self.killed:
            raise KeyboardInterrupt  # the user pressed Ctrl-C again while we waited
        return self.returncode

    def kill(self):
        self.killed = True


def test_an_interrupt_says_which_runs_did_not_save_their_step(tmp_path, capsys):
    runs = [{"variant": v, "seed": 1, "dir": str(tmp_path / v)} for v in ("smoe", "rmoe")]
    for run, last in zip(runs, ["interrupted: saved ckpt.pt at step 3", "KeyboardInterrupt"]):
        os.makedirs(run["dir"])
        with open(os.path.join(run["dir"], "train.log"), "w") as f:
            f.write(f"Traceback (most recent call last):\n{last}\n")
    with pytest.raises(SystemExit) as exit_info:
        compare.stop_all([(runs[0], Ended(130)), (runs[1], Ended(1))])  # rmoe died while importing torch
    out = capsys.readouterr().out
    assert exit_info.value.code == 130 and "every run in flight saved" not in out
    assert "did not save their current step: rmoe seed 1 (KeyboardInterrupt)" in out and "smoe" not in out


def test_a_second_interrupt_stops_the_runs_at_once_without_a_traceback(tmp_path, capsys):
    run, process = {"variant": "rmoe", "seed": 1, "dir": str(tmp_path)}, Ended(None, stuck=True)
    with pytest.raises(SystemExit) as exit_info:
        compare.stop_all([(run, process)])
    assert exit_info.value.code == 130 and process.killed
    assert "interrupted again" in capsys.readouterr().out
