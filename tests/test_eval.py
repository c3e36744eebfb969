"""eval.py: whole splits scored every token once, equal to a hand computation, BPC = nats / ln 2."""

import math
import shutil

import numpy as np
import pytest
import torch

import eval as eval_script
from rmoe.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from conftest import assert_one_line_exit
from rmoe.dataset import read_split, split_fingerprints


@pytest.mark.parametrize("n_tokens, block_size, stride", [
    (100, 32, 32), (97, 32, 32), (33, 32, 32), (10, 32, 32), (2, 32, 32),  # ragged tail, exact, shorter than a block
    (100, 32, 8), (100, 32, 1), (101, 16, 5), (500, 64, 63),
])
def test_windows_score_every_target_exactly_once_with_the_promised_context(n_tokens, block_size, stride):
    size = min(block_size, n_tokens - 1)
    scored = []
    for start, first in eval_script.windows(n_tokens, block_size, stride):
        assert 0 <= start and start + size <= n_tokens - 1  # inputs and targets inside the split
        for j in range(first, size):
            target = start + 1 + j
            scored.append(target)
            assert j + 1 >= min(target, size - stride + 1)  # predicted from all before it, or size - stride + 1
    assert sorted(scored) == list(range(1, n_tokens))  # targets 1 .. n-1, each once


@pytest.fixture
def tiny(tiny_checkpoint):
    path = f"{tiny_checkpoint}/ckpt.pt"
    ckpt = load_checkpoint(path)
    return ckpt, model_from_checkpoint(ckpt, path).eval()


def test_split_loss_equals_the_models_own_loss_window_by_window(tiny):
    ckpt, model = tiny
    data = read_split(ckpt["train_config"]["dataset"], "val")
    n, T = len(data), model.config.block_size
    assert (n - 1) % T, "the split should end in a partial window, the case worth checking"
    ids = torch.from_numpy(data.astype(np.int64))
    expected = 0.0
    with torch.no_grad():
        for start in range(0, n - 1 - T + 1, T):  # whole non-overlapping windows, the model's mean times T
            _, _, aux = model(ids[None, start:start + T], ids[None, start + 1:start + T + 1])
            expected += aux["lm_loss"].item() * T
        tail = (n - 1) % T  # the last targets, seen from the window that ends at the split's end
        y = ids[None, n - T:].clone()
        y[:, :T - tail] = -1  # targets the whole windows scored already: ignored by the model's loss
        _, _, aux = model(ids[None, n - 1 - T:n - 1], y)
        expected += aux["lm_loss"].item() * tail
    for batch_size in (1, 3):  # how windows are batched changes nothing: no capacity limit, eval mode
        total, count = eval_script.split_loss(model, data, T, batch_size, "cpu")
        assert count == n - 1
        assert total == pytest.approx(expected, rel=1e-5)


def test_more_context_per_token_lowers_a_trained_models_loss(tiny):
    ckpt, model = tiny
    data = read_split(ckpt["train_config"]["dataset"], "val")
    T = model.config.block_size
    blocks, blocks_count = eval_script.split_loss(model, data, T, 8, "cpu")
    sliding, sliding_count = eval_script.split_loss(model, data, T // 4, 8, "cpu")
    assert blocks_count == sliding_count == len(data) - 1
    assert sliding != pytest.approx(blocks, rel=1e-4)  # the stride changes which context each target gets


def test_a_uniform_model_scores_ln_vocab_nats_and_log2_vocab_bpc(tiny_checkpoint, tmp_path, capsys):
    shutil.copytree(tiny_checkpoint, tmp_path, dirs_exist_ok=True)
    ckpt = load_checkpoint(str(tmp_path / "ckpt.pt"))
    for name in ("wte.weight", "lm_head.weight"):  # tied: zero logits for every token, whatever the input
        ckpt["model"][name] = torch.zeros_like(ckpt["model"][name])
    save_checkpoint(ckpt, str(tmp_path / "ckpt.pt"))
    vocab = len(ckpt["vocab"])
    for stride in (0, 5):
        eval_script.main([f"--out_dir={tmp_path}", "--splits=train,val", f"--stride={stride}", "--threads=1"])
        out = capsys.readouterr().out
        assert "(its best val step)" in out and "BPC" in out
        rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.split()[0] in ("train", "val")}
        for split in ("train", "val"):
            tokens, nats, bpc = rows[split]
            assert int(tokens.replace(",", "")) == len(read_split(ckpt["train_config"]["dataset"], split)) - 1
            assert float(nats) == pytest.approx(math.log(vocab), abs=6e-5)
            assert float(bpc) == pytest.approx(math.log2(vocab), abs=6e-5)


@pytest.mark.parametrize("args, fragments", [
    (["--splits=test"], ["has no test.bin", "its splits are train and val"]),
    (["--splits=val,dev"], ["'dev' is not train, val or test"]),
    (["--stride=33"], ["stride=33 must be between 1 and the model's block_size=32"]),
    (["--batch_size=0"], ["batch_size=0 must be at least 1"]),
])
def test_bad_settings_are_one_line_errors(tiny_checkpoint, args, fragments):
    with pytest.raises(SystemExit) as raised:
        eval_script.main([f"--out_dir={tiny_checkpoint}", "--threads=1", *args])
    assert_one_line_exit(raised, *fragments)


def test_data_prepared_again_is_refused(tiny_checkpoint, tmp_path):
    data = tmp_path / "data"
    ckpt = load_checkpoint(f"{tiny_checkpoint}/ckpt.pt")
    shutil.copytree(ckpt["train_config"]["dataset"], data)
    ids = np.fromfile(data / "val.bin", dtype=np.uint16)
    ids[::-1].tofile(data / "val.bin")  # the same characters, other text
    ckpt["train_config"]["dataset"] = str(data)
    save_checkpoint(ckpt, str(tmp_path / "ckpt.pt"))
    with pytest.raises(SystemExit) as raised:
        eval_script.main([f"--out_dir={tmp_path}", "--threads=1"])
    assert_one_line_exit(raised, "val.bin is not the file", "was trained beside", "give --dataset=<folder>")


def test_scores_come_from_eval_mode_without_dropout(tiny_checkpoint, tmp_path, capsys):
    shutil.copytree(tiny_checkpoint, tmp_path, dirs_exist_ok=True)
    ckpt = load_checkpoint(str(tmp_path / "ckpt.pt"))
    ckpt["model_config"]["dropout"] = 0.5  # shapes no weight; must be off when scoring
    save_checkpoint(ckpt, str(tmp_path / "ckpt.pt"))
    model = model_from_checkpoint(ckpt, "ckpt.pt").eval()
    total, count = eval_script.split_loss(model, read_split(ckpt["train_config"]["dataset"], "val"), 32, 8, "cpu")
    eval_script.main([f"--out_dir={tmp_path}", "--splits=val", "--threads=1"])
    row = next(line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("val "))
    assert float(row[2]) == pytest.approx(total / count, abs=6e-5)


def test_moved_data_is_scored_with_dataset_and_still_checked(tiny_checkpoint, tmp_path, capsys):
    ckpt = load_checkpoint(f"{tiny_checkpoint}/ckpt.pt")
    moved = tmp_path / "moved"
    shutil.copytree(ckpt["train_config"]["dataset"], moved)
    eval_script.main([f"--out_dir={tiny_checkpoint}", "--splits=val", "--threads=1"])
    where_it_was = capsys.readouterr().out.splitlines()[-1]
    eval_script.main([f"--out_dir={tiny_checkpoint}", "--splits=val", "--threads=1", f"--dataset={moved}"])
    assert capsys.readouterr().out.splitlines()[-1] == where_it_was  # the same data, the same score
    ids = np.fromfile(moved / "val.bin", dtype=np.uint16)
    ids[::-1].tofile(moved / "val.bin")  # other text of the same characters
    with pytest.raises(SystemExit) as raised:
        eval_script.main([f"--out_dir={tiny_checkpoint}", "--splits=val", "--threads=1", f"--dataset={moved}"])
    assert_one_line_exit(raised, f"{moved / 'val.bin'} is not the file", "give --dataset=<folder> of the data")


def test_a_split_is_refused_where_its_file_differs_from_the_checkpoints(tiny_checkpoint, tmp_path, capsys):
    """The checkpoint names every file of its data (train.py keeps split_fingerprints in it): a
    replaced test.bin is refused, the other splits still score."""
    ckpt = load_checkpoint(f"{tiny_checkpoint}/ckpt.pt")
    assert set(ckpt["data_files"]) == {"train.bin", "val.bin", "meta.pkl"}  # what train.py recorded
    shutil.copytree(ckpt["train_config"]["dataset"], tmp_path / "data")
    shutil.copy(tmp_path / "data" / "val.bin", tmp_path / "data" / "test.bin")
    ckpt["data_files"] = split_fingerprints(tmp_path / "data")  # as if trained beside this test.bin
    ckpt["train_config"]["dataset"] = str(tmp_path / "data")
    save_checkpoint(ckpt, str(tmp_path / "ckpt.pt"))
    eval_script.main([f"--out_dir={tmp_path}", "--threads=1"])
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[-2:]] == ["val", "test"]
    ids = np.fromfile(tmp_path / "data" / "test.bin", dtype=np.uint16)
    ids[::-1].tofile(tmp_path / "data" / "test.bin")  # the test split replaced, same size
    eval_script.main([f"--out_dir={tmp_path}", "--threads=1", "--splits=val"])  # val is still the same
    with pytest.raises(SystemExit) as raised:
        eval_script.main([f"--out_dir={tmp_path}", "--threads=1"])
    assert_one_line_exit(raised, "test.bin is not the file", "was trained beside")


def test_ctrl_c_while_scoring_is_one_line(tiny_checkpoint, monkeypatch, capsys):
    def interrupted(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(eval_script, "split_loss", interrupted)
    with pytest.raises(SystemExit) as raised:
        eval_script.main([f"--out_dir={tiny_checkpoint}", "--threads=1"])
    assert raised.value.code == 130
    assert capsys.readouterr().err == "interrupted while scoring val; nothing was written\n"


def test_a_checkpoint_that_names_no_data_files_is_refused_not_scored_unchecked(tiny_checkpoint, tmp_path):
    ckpt = load_checkpoint(f"{tiny_checkpoint}/ckpt.pt")
    del ckpt["data_files"]  # as an older rmoe wrote it
    save_checkpoint(ckpt, str(tmp_path / "ckpt.pt"))
    with pytest.raises(SystemExit) as raised:
        eval_script.main([f"--out_dir={tmp_path}", "--threads=1"])
    assert_one_line_exit(raised, "does not name the files of its data", "cannot be checked")
