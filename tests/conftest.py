"""Shared helpers: the repository on sys.path, a tiny char dataset, and running the scripts as a user would."""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# a model small enough that a training step takes milliseconds
TINY = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--n_experts=4", "--top_k=2", "--mlp_hidden=32",
        "--router_dim=16", "--block_size=32", "--batch_size=4", "--eval_iters=2", "--log_interval=1",
        "--warmup_iters=0"]


def sample_text(n_lines=400):
    """Deterministic play-like text with a few dozen distinct characters."""
    rng = np.random.default_rng(0)
    words = "the king queen lord my thou art what shall we do now love death night day come go".split()
    lines = []
    for i in range(n_lines):
        speaker = ["HAMLET", "OPHELIA", "KING"][i % 3]
        lines.append(f"{speaker}:\n" + " ".join(rng.choice(words, size=8)).capitalize() + ".\n")
    return "\n".join(lines)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A char-level dataset folder in nanoGPT's format (train.bin, val.bin, meta.pkl)."""
    folder = tmp_path_factory.mktemp("tiny_data")
    text = sample_text()
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in text], dtype=np.uint16)
    n = int(0.9 * len(ids))
    ids[:n].tofile(folder / "train.bin")
    ids[n:].tofile(folder / "val.bin")
    with open(folder / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)),
                     "stoi": {c: i for i, c in enumerate(chars)}}, f)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_data, tmp_path_factory):
    """A folder with the ckpt.pt of 2 steps of a TINY model on tiny_data; copy it before changing it."""
    out = tmp_path_factory.mktemp("tiny_checkpoint")
    train(tiny_data, out, "--max_iters=2", "--eval_interval=2")
    return str(out)


def run(script, *args, env=None, **popen):
    """Run a top-level script (or `-m module`) from the repository root; returns the CompletedProcess."""
    cmd = [sys.executable] + (list(script) if isinstance(script, (list, tuple)) else [script]) + list(args)
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, **popen)


class FakeResponse:
    """What a prepare script reads from requests.get(): the body, and a status that is fine."""

    def __init__(self, content):
        self.content = content

    def raise_for_status(self):
        pass


def train(data, out_dir, *args):
    """train.py on a TINY model, which must succeed; returns the CompletedProcess."""
    result = run("train.py", f"--dataset={data}", f"--out_dir={out_dir}", *TINY, *args)
    assert result.returncode == 0, result.stderr
    return result


def assert_one_line_error(result, *fragments):
    """Bad input as a user should see it: exit code 1 and a single "error: ..." line on stderr
    (so no traceback) holding every fragment."""
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def train_here(data, out_dir, *args):
    """train.py's main() in this process on a TINY model (no new python and torch per run): it returns
    at the end, and bad input raises SystemExit("error: ..."). The SIGINT handler it installs is undone."""
    import signal

    import train as train_module
    handler = signal.getsignal(signal.SIGINT)
    try:
        train_module.main([f"--dataset={data}", f"--out_dir={out_dir}", *TINY, *args])
    finally:
        signal.signal(signal.SIGINT, handler)


def assert_one_line_exit(exc_info, *fragments):
    """assert_one_line_error for a script's main() called in this process: fail() raised
    SystemExit with one "error: ..." line (python prints it on stderr and exits with 1)."""
    message = exc_info.value.code
    assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
