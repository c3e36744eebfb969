"""--help says what every setting means, thread defaults, and output into a pipe that closes."""

import os
import re
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch

import sample
from configurator import parse_args, script_settings, setting_comments
from conftest import REPO, run


def meanings(help_text):
    """{setting: the indented line under it} from a script's --help."""
    lines = help_text.splitlines()
    found = {}
    for line, following in zip(lines, lines[1:] + [""]):
        match = re.match(r"  --(\w+) += ", line)
        if match:
            found[match[1]] = following.strip() if following.startswith("      ") else ""
    return found


@pytest.mark.parametrize("script", ["train.py", "sample.py", "analyze.py", "bench.py", "eval.py"])
def test_help_says_what_every_setting_means(script):
    result = run(script, "--help")
    assert result.returncode == 0, result.stderr
    found = meanings(result.stdout)
    assert len(found) > 5
    assert [key for key, meaning in found.items() if not meaning] == []


@dataclass
class Settings:
    steps: int = 3  # how many steps
    rate: float = 0.5
    name: str = "x"  # a name, with a # inside


DEFAULTS = {
    "alpha": 1,  # the first
    "beta": [1,
             2],  # a value over two lines
    "gamma": 3,
}


def test_setting_comments_are_the_trailing_comments_of_a_dataclass_or_a_dict():
    assert setting_comments(Settings) == {"steps": "how many steps", "name": "a name, with a # inside"}
    assert setting_comments(sys.modules[__name__], "DEFAULTS") == {"alpha": "the first",
                                                                   "beta": "a value over two lines"}


def test_a_setting_without_a_meaning_still_prints(capsys):
    with pytest.raises(SystemExit):
        parse_args({"alpha": 1, "gamma": 3}, ["--help"], "usage", help={"alpha": "the first"})
    out = capsys.readouterr().out
    assert re.search(r"--alpha += 1\n +the first\n", out) and re.search(r"--gamma += 3\n", out)


def test_sampling_uses_one_thread_unless_told_otherwise():
    before = torch.get_num_threads()
    try:
        script_settings(sample, ["--device=cpu"])
        assert torch.get_num_threads() == 1
        script_settings(sample, ["--device=cpu", "--threads=2"])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_output_into_a_closed_pipe_ends_sampling_quietly(tiny_checkpoint):
    proc = subprocess.Popen([sys.executable, "sample.py", f"--out_dir={tiny_checkpoint}", "--device=cpu",
                             "--num_samples=2", "--max_new_tokens=20"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    proc.stdout.close()  # the reader is gone before the first line, as `| head -0` would be
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert err == "" and proc.returncode == 141
