"""docs/walkthrough.md cannot rot: every command in its ```bash blocks runs (read from the file,
with tiny settings added, in a scratch folder), every picture it shows is one its commands
make, and each lesson's claim that holds at tiny scale is checked here."""

import importlib.util
import os
import re
import shlex
import subprocess
import sys

import pytest
import torch

from conftest import REPO, TINY
from rmoe.checkpoint import read_record

WALKTHROUGH = os.path.join(REPO, "docs", "walkthrough.md")
DOC = open(WALKTHROUGH).read()


def lesson(name):
    """A lessons/ script as a module (they are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "lessons", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as when run: script_settings reads its settings from sys.modules[__name__]
    spec.loader.exec_module(module)
    return module


def commands():
    """Every command of the walkthrough in the order it stands: the lines of its ```bash blocks (comments and
    blank lines left out) and the `python ...` spans of its text (the exercises)."""
    found = []
    for block, span in re.findall(r"```bash\n(.*?)```|`(python [^`]+)`", DOC, re.S):
        lines = block.splitlines() if block else [span]
        found += [" ".join(line.split(" #")[0].split()) for line in lines
                  if line.strip() and not line.strip().startswith("#")]
    return found


def tiny(argv, data):
    """Settings appended to a walkthrough command so it runs in seconds on tiny_data (the last value of a key
    wins); a command that names its own --dataset keeps it."""
    train = TINY + ([] if any(a.startswith("--dataset=") for a in argv) else [f"--dataset={data}"])
    return {
        "train.py": train + ["--max_iters=8", "--lr_decay_iters=8", "--eval_interval=4"],
        "lessons/load_balance.py": train + ["--steps=30"],
        "compare.py": train + ["--max_iters=2", "--warmup_iters=0", "--eval_interval=2", "--seeds=1"],
        "lessons/probe_state.py": ["--tokens=2048"],
        "analyze.py": ["--tokens=256"],
        "sample.py": ["--start=the king"],  # characters tiny_data has
    }.get(argv[1], [])


@pytest.fixture(scope="module")
def ran(tiny_data, tmp_path_factory):
    """Run every walkthrough command, in order, in a scratch folder that links to the repository's files
    (so out-* folders land there): {command: CompletedProcess}, and the folder."""
    here = tmp_path_factory.mktemp("walkthrough")
    for name in os.listdir(REPO):
        if not name.startswith(("out", ".")):
            os.symlink(os.path.join(REPO, name), here / name)
    results = {}
    for line in commands():
        argv = shlex.split(line)
        assert argv[0] == "python", f"a walkthrough command that is not a python script: {line}"
        results[line] = subprocess.run([sys.executable] + argv[1:] + tiny(argv, tiny_data), cwd=here,
                                       capture_output=True, text=True, timeout=600,
                                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    return results, here


def test_the_walkthrough_has_the_lessons_and_commands():
    lessons = re.findall(r"^## Lesson (\d)", DOC, re.M)
    assert lessons == [str(i) for i in range(1, 9)]
    assert len(commands()) >= 9
    for part in re.split(r"^## ", DOC, flags=re.M)[1:]:  # every lesson has a command, a picture or table, an exercise
        if part.startswith("Lesson"):
            assert "```bash" in part and "**Exercise" in part and "**Look for" in part, part[:60]


def test_every_command_runs(ran):
    results, _ = ran
    for line, result in results.items():
        assert result.returncode == 0, f"{line}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                    reason="the lessons draw with matplotlib, which requirements.txt (and CI) leave out")
def test_every_picture_shown_is_in_assets_and_made_by_a_command(ran):
    _, here = ran
    shown = re.findall(r"!\[[^]]*\]\(\.\./assets/([\w.-]+\.png)\)", DOC)
    assert len(shown) >= 4
    made = {f for _, _, files in os.walk(here, followlinks=False) for f in files if f.endswith(".png")}
    for name in shown:
        assert os.path.exists(os.path.join(REPO, "assets", name)), name
        assert name in made, f"{name} is shown but no walkthrough command writes it"


def test_lesson1_moe_and_dense_use_the_same_expert_parameters_per_token():
    columns = lesson("dense_vs_moe").main([])
    dense, smoe, rmoe = columns.values()
    used = "expert params a token uses"
    assert dense[used] == smoe[used] == rmoe[used]
    assert smoe["active params per token"] - dense["active params per token"] == smoe["router params, all layers"]
    assert smoe["total params"] > 3 * dense["total params"]  # 8 experts held, 2 used


@pytest.mark.parametrize("argv", [[], ["--top_k=1"], ["--tokens=9", "--n_experts=6", "--top_k=3"],
                                  ["--norm_topk=False", "--seed=2"], ["--n_experts=5", "--top_k=5"]])
def test_lesson2_toy_gating_equals_moe_forward_exactly(argv):
    out = lesson("toy_gating").main(argv)
    assert out["same_choice"] and torch.equal(out["y"], out["y_moe"])


def test_lesson3_load_is_more_uneven_without_the_load_balance_loss(ran):
    _, here = ran
    last = {}
    for run in ("lb-on", "lb-off"):
        record = read_record(here / "out-lessons" / "load_balance" / run)
        assert record[-1]["kind"] == "end"
        last[run] = [r for r in record if r["kind"] == "eval"][-1]["routing"]
    # same seed, same data order: only the loss differs; every layer's busiest expert is busier without it
    for on, off in zip(last["lb-on"], last["lb-off"]):
        assert off["max_share"] > on["max_share"]
        assert off["load_cv"] > on["load_cv"]


def test_lesson5_probe_reads_the_character_from_h_better_than_chance_and_noise(ran):
    _, here = ran
    results = lesson("probe_state").main([f"--ckpt={here / 'out-walk' / 'rmoe'}", f"--out={here / 'probe'}",
                                          "--tokens=2048"])
    for layer in results:
        acc = layer["current char"]
        assert acc["h_i"] > acc["chance"] + 0.2 and acc["h_i"] > acc["noise"] + 0.2


def test_lesson6_curves_are_the_records_numbers(ran):
    _, here = ran
    run = here / "out-walk" / "rmoe"
    record = read_record(run)
    curves = lesson("routing_curves").curves(record)
    evals = [r for r in record if r["kind"] == "eval"]
    for i in range(len(evals[0]["routing"])):
        for key in ("max_share", "entropy", "outer_balance"):
            assert curves[key][i] == [(r["step"], r["routing"][i][key]) for r in evals]
    assert curves["lb_loss"] == [(r["step"], r["lb_loss"]) for r in record if r["kind"] == "train"]
