"""Configuration checks, and train.py / sample.py run as a user runs them: resume, DDP
against one process, and the whole path from a text file to a sample. The scripts' errors
are in test_errors.py, interruptions and exact resume in test_faults.py."""

import math
import os
import re
import shutil
import signal

import pytest
import torch

from rmoe.checkpoint import load_checkpoint, read_record
from configurator import ConfigError, parse_args, pick_device
from conftest import REPO, TINY, run, sample_text, train, train_here
import train as train_module  # noqa: the script's main(), run in this process
from model import GPT, GPTConfig
from rmoe.training import MODEL_KEYS, TrainConfig, default_settings

DEFAULTS = {"learning_rate": 1e-3, "max_iters": 100, "router": "gru", "compile": False}


def test_overrides_and_config_files(tmp_path):
    conf = tmp_path / "c.py"
    conf.write_text("import math\nmax_iters = 7\n_helper = 3\nlearning_rate = math.sqrt(1e-6)\n")
    cfg, explicit = parse_args(DEFAULTS, [str(conf), "--router=linear", "--learning_rate=2", "--compile=True"], "")
    assert cfg == {"learning_rate": 2.0, "max_iters": 7, "router": "linear", "compile": True}
    assert type(cfg["learning_rate"]) is float  # an int may stand for a float
    assert explicit == {"learning_rate", "max_iters", "router", "compile"}


@pytest.mark.parametrize("argv, message", [
    (["--max_iter=5"], "unknown key 'max_iter'; did you mean max_iters"),
    (["--zzz=5"], "unknown key 'zzz'; run with --help"),
    (["--max_iters=5.5"], "max_iters must be int like the default 100, got float 5.5"),
    (["--compile=1"], "compile must be bool"),
    (["--max_iters"], "has no value"),
    (["nope/missing.py"], "cannot read config file 'nope/missing.py'"),
    (["--learning_rate=fast"], "learning_rate must be float"),
    (["max_iters=5"], "cannot read config file 'max_iters=5'"),
])
def test_bad_settings_name_the_problem(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_args(DEFAULTS, argv, "")


@pytest.mark.parametrize("setting, message", [
    (dict(beta2=1.5), "beta2=1.5 must be in [0, 1)"),
    (dict(seed=-1), "seed=-1 must be in [0, 2**63)"),
    (dict(out_dir=""), "out_dir='' must name a folder"),
    (dict(out_dir=os.path.join(REPO, "README.md")), "README.md' must name a folder"),
    (dict(init_from="continue"), "init_from='continue' must be 'scratch' or 'resume'"),
])
def test_bad_train_settings_name_the_problem(setting, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig(**setting)


@pytest.mark.parametrize("name, message", [
    ("CPU", "device='CPU' is not one of auto, cpu, cuda, cuda:N, mps"),
    pytest.param("cuda", "device='cuda' is not available on this machine", marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="this machine has CUDA")),
])
def test_bad_device_names_the_problem(name, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        pick_device(name)


def test_string_settings_take_the_text_as_it_is():
    cfg, _ = parse_args({"out_dir": "out", "start": "\n"}, ["--out_dir=2024", "--start=\"quoted\""], "")
    assert cfg == {"out_dir": "2024", "start": '"quoted"'}


def test_config_file_that_raises_is_one_line(tmp_path):
    conf = tmp_path / "bad.py"
    conf.write_text("max_iters = 1 / 0\n")
    with pytest.raises(ConfigError, match=r"config file .*bad.py failed: ZeroDivisionError"):
        parse_args(DEFAULTS, [str(conf)], "")


def test_help_lists_every_key_with_its_value_after_the_config_files():
    defaults = run("train.py", "--help")
    assert defaults.returncode == 0
    assert re.search(r"--router_dim += 128\n", defaults.stdout)
    assert re.search(r"--lb_loss_coef += 0.01\n", defaults.stdout)
    small = run("train.py", "--help", "config/rmoe_small.py")
    assert re.search(r"--router_dim += 64\n", small.stdout)


def test_config_files_apply_before_overrides_wherever_they_stand(tmp_path):
    conf = tmp_path / "c.py"
    conf.write_text("max_iters = 7\ndef helper():\n    return 1\n")
    cfg, _ = parse_args(DEFAULTS, ["--max_iters=5", str(conf)], "")
    assert cfg["max_iters"] == 5  # the override wins although it came first; helper() is not a setting


def test_resume_takes_the_checkpoint_settings(tiny_data, tmp_path):
    train(tiny_data, tmp_path, "--max_iters=2", "--eval_interval=2", "--gradient_accumulation_steps=1")
    # no config and no model settings: shape, batch and data all come from the checkpoint
    result = run("train.py", f"--out_dir={tmp_path}", "--init_from=resume", "--max_iters=4")
    assert result.returncode == 0, result.stderr
    assert "128 tokens per step, from step 2 to 4" in result.stdout  # 1 x 4 x 32, not the default 2 x 8 x 128
    assert load_checkpoint(str(tmp_path / "ckpt.pt"))["iter_num"] == 4


def test_resume_may_change_a_setting_that_shapes_no_weight(tiny_checkpoint, tmp_path, capsys):
    """Resumed with --dropout=0.1, the run trains with dropout (its weights differ from those of the
    same resume without it), and keeps the new setting; both continue from the same step 2."""
    weights = {}
    for name, extra in (("same", []), ("changed", ["--dropout=0.1"])):
        shutil.copytree(tiny_checkpoint, tmp_path / name)
        capsys.readouterr()
        train_module.main([f"--out_dir={tmp_path / name}", "--init_from=resume", "--max_iters=4", *extra])
        signal.signal(signal.SIGINT, signal.default_int_handler)
        assert "from step 2 to 4" in capsys.readouterr().out
        ckpt = load_checkpoint(str(tmp_path / name / "ckpt.pt"))
        assert ckpt["iter_num"] == 4 and ckpt["model_config"]["dropout"] == (0.1 if extra else 0.0)
        weights[name] = ckpt["model"]
    assert any(not torch.equal(w, weights["changed"][k]) for k, w in weights["same"].items())


def test_ddp_two_processes_equal_one_process(tiny_data, tmp_path):
    # 4 micro-steps: 2 per process, so the gradient sync is skipped on the first and done on the second
    args = ["--max_iters=3", "--eval_interval=3", "--gradient_accumulation_steps=4", "--device=cpu"]
    train(tiny_data, tmp_path / "one", *args)
    for attempt in range(2):
        result = run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py"],
                     f"--dataset={tiny_data}", f"--out_dir={tmp_path / 'two'}", *TINY, *args)
        if "step 0:" in result.stdout:
            break  # launched; a second try is only for a rendezvous that failed before training began
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stdout
    one = load_checkpoint(str(tmp_path / "one" / "ckpt.pt"))["model"]
    two = load_checkpoint(str(tmp_path / "two" / "ckpt.pt"))["model"]
    for name, tensor in one.items():  # same batches, gradients averaged by all-reduce instead of summed locally
        torch.testing.assert_close(tensor, two[name], rtol=1e-5, atol=1e-6, msg=name)


def test_text_file_to_trained_model_to_sample(tmp_path):
    text = tmp_path / "play.txt"
    text.write_text(sample_text())
    data = tmp_path / "play_char"
    prepared = run("data/shakespeare_char/prepare.py", f"--input={text}", f"--out_dir={data}")
    assert prepared.returncode == 0, prepared.stderr
    result = train(data, tmp_path / "out", "--max_iters=30", "--eval_interval=15", "--learning_rate=1e-2")
    first_val = float(result.stdout.split("step 0: train loss ")[1].split("val loss ")[1].split()[0])
    last_val = float(result.stdout.split("step 30: train loss ")[1].split("val loss ")[1].split()[0])
    assert last_val < first_val - 0.3  # it learned something
    sampled = run("sample.py", f"--out_dir={tmp_path / 'out'}", "--start=KING:", "--num_samples=2",
                  "--max_new_tokens=40", "--device=cpu")
    assert sampled.returncode == 0, sampled.stderr
    samples = sampled.stdout.split("\n---------------\n")  # print() ends each sample with one newline
    assert samples[2:] == [""]
    for body in samples[:2]:  # one character per token: the prompt and exactly 40 more, newlines included
        assert body.startswith("KING:") and len(body) == len("KING:") + 40, repr(body)
        assert set(body) <= set(text.read_text())


def test_small_configs_are_a_fair_comparison():
    """rmoe_small, smoe_small and dense_small share the shape and the active expert/MLP parameters."""
    settings = {name: parse_args(default_settings(), [os.path.join(REPO, "config", f"{name}.py")], "")[0]
                for name in ("rmoe_small", "smoe_small", "dense_small")}
    r, s, d = (GPT(GPTConfig(**{k: v[k] for k in MODEL_KEYS}, vocab_size=84)) for v in settings.values())
    assert r.config.router == "gru" and s.config.router == "linear" and not d.config.is_moe
    for key in ("n_layer", "n_embd", "n_head", "block_size", "dropout"):
        assert getattr(r.config, key) == getattr(s.config, key) == getattr(d.config, key)
    for key in ("max_iters", "batch_size", "gradient_accumulation_steps", "learning_rate"):
        assert settings["rmoe_small"][key] == settings["smoe_small"][key] == settings["dense_small"][key]
    c = s.config
    assert d.config.mlp_hidden == c.top_k * c.mlp_hidden
    # active parameters differ only by the router
    assert s.num_active_params() - d.num_active_params() == c.n_layer * c.n_embd * c.n_experts


def test_bpe_tokenizer_round_trips(monkeypatch):
    """Checkpoints without a character vocabulary use GPT-2 BPE through tiktoken; a tiny
    hand-made byte-level encoding stands in for the real one, which needs a download."""
    import tiktoken

    from rmoe import dataset

    byte_level = tiktoken.Encoding(name="bytes", pat_str=r"\S+|\s+", special_tokens={"<|endoftext|>": 256},
                                   mergeable_ranks={bytes([i]): i for i in range(256)})
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: byte_level)
    encode, decode = dataset.tokenizer(None)
    ids = encode("Höw<|endoftext|>")
    assert ids == list("Höw".encode()) + [256]
    assert decode(ids) == "Höw<|endoftext|>"


def test_the_record_holds_every_logged_step_every_evaluation_and_an_end(tiny_data, tmp_path):
    train_here(tiny_data, tmp_path, "--max_iters=5", "--eval_interval=2", "--log_interval=2",
               "--gradient_accumulation_steps=3")
    records = read_record(str(tmp_path))
    assert [(r["kind"], r["step"]) for r in records] == [
        ("eval", 0), ("train", 2), ("eval", 2), ("train", 4), ("eval", 4), ("eval", 5), ("end", 5)]
    tokens_per_step = 3 * 4 * 32  # micro-steps x batch x block
    assert all(r["tokens"] == r["step"] * tokens_per_step for r in records)
    evals = [r for r in records if r["kind"] == "eval"]
    for r in evals:
        assert r["val_bpc"] == pytest.approx(r["val_loss"] / math.log(2))  # characters: nats -> bits
        assert len(r["routing"]) == 2 and 0 < r["routing"][0]["max_share"] <= 1
    for r in records:
        if r["kind"] == "train":
            assert r["loss"] > 0 and r["lb_loss"] > 0 and r["ms_per_step"] > 0 and r["tokens_per_s"] > 0
    best = min(evals, key=lambda r: r["val_loss"])
    assert records[-1]["best_val_loss"] == best["val_loss"] and records[-1]["best_step"] == best["step"]
    ckpt = load_checkpoint(str(tmp_path / "ckpt.pt"))
    assert ckpt["best_val_loss"] == best["val_loss"]  # the record agrees with the checkpoint beside it
    # the logged loss is the step's mean lm loss over its micro-steps: near the evaluation loss
    assert abs(records[3]["loss"] - evals[2]["train_loss"]) < 0.3


def test_resume_refuses_a_checkpoint_that_names_no_data_files(tiny_checkpoint, tmp_path):
    """A checkpoint of an older rmoe (no data_files) cannot have its data checked: refused, not resumed unchecked."""
    shutil.copytree(tiny_checkpoint, tmp_path / "old")
    ckpt = load_checkpoint(str(tmp_path / "old" / "ckpt.pt"))
    del ckpt["data_files"]
    torch.save(ckpt, tmp_path / "old" / "ckpt.pt")
    with pytest.raises(SystemExit, match="does not name the files of its data .* start a new --out_dir"):
        train_module.main([f"--out_dir={tmp_path / 'old'}", "--init_from=resume", "--max_iters=4"])
    signal.signal(signal.SIGINT, signal.default_int_handler)
