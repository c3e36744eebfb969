"""The routing metrics on hand-made routing with a known answer, analyze.py end to end, and
sample.py's routing trace."""

import importlib.util
import json
import math
import os
import re
from dataclasses import asdict

import numpy as np
import pytest
import torch

import analyze
import sample
from rmoe.checkpoint import save_checkpoint
from model import GPT, GPTConfig
from rmoe.routing_stats import (choice_mutual_info, contingency, distinct_paths, gate_mutual_info, median, mutual_info,
                                routing_by_layer, routing_summary)
from router import Routing
from rmoe.dataset import load_dataset


def test_routing_of_several_passes_is_joined_per_layer_in_pass_order():
    def layer(tag, n):  # a Routing whose every value says which pass and layer it came from
        return Routing(torch.full((n, 4), tag), torch.full((n, 4), tag), torch.full((n, 2), int(tag)))
    joined = routing_by_layer([[layer(1.0, 2), layer(2.0, 2)], [layer(3.0, 1), layer(4.0, 1)]])
    assert [r.probs[:, 0].tolist() for r in joined] == [[1, 1, 3], [2, 2, 4]]
    assert [r.topk_idx[:, 0].tolist() for r in joined] == [[1, 1, 3], [2, 2, 4]]
    assert [r.logits.shape for r in joined] == [(3, 4), (3, 4)]


def test_uniform_gates_have_entropy_ln_e_and_balanced_load():
    E, N = 8, 64
    probs = torch.full((N, E), 1 / E)
    topk_idx = torch.arange(2 * N).view(N, 2) % E  # every expert gets N*2/E slots
    s = routing_summary(probs, topk_idx)
    assert s["entropy"] == pytest.approx(math.log(E))
    assert s["load"] == [1 / E] * E and s["max_share"] == 1 / E
    assert s["load_cv"] == 0 and s["dead_experts"] == 0
    assert s["inner_balance"] == 1 and s["outer_balance"] == pytest.approx(2 / E)


def test_one_hot_router_has_outer_balance_1_and_zero_entropy():
    E, N = 4, 10
    choice = torch.arange(N) % 2  # only experts 0 and 1 are ever chosen
    probs = torch.nn.functional.one_hot(choice, E).float()
    topk_idx = probs.topk(2, dim=-1).indices
    s = routing_summary(probs, topk_idx)
    assert s["outer_balance"] == 1 and s["entropy"] == 0
    assert s["inner_balance"] == math.inf  # the second choice has no weight at all


def test_load_and_balance_by_hand():
    # 3 tokens, top-2 of 4 experts: slots 0,1 | 0,2 | 0,1 -> expert 0 has 3 of 6 slots, 1 two, 2 one, 3 none
    topk_idx = torch.tensor([[0, 1], [0, 2], [0, 1]])
    probs = torch.tensor([[0.6, 0.3, 0.1, 0.0], [0.5, 0.1, 0.4, 0.0], [0.8, 0.1, 0.05, 0.05]])
    s = routing_summary(probs, topk_idx)
    assert s["load"] == pytest.approx([3 / 6, 2 / 6, 1 / 6, 0])
    assert s["max_share"] == pytest.approx(0.5) and s["dead_experts"] == 1
    shares = np.array([3, 2, 1, 0]) / 6
    assert s["load_cv"] == pytest.approx(shares.std() / shares.mean(), rel=1e-6)
    # top-1 / top-2 ratios 2, 1.25, 8 -> median 2; top-2 masses 0.9, 0.9, 0.9
    assert s["inner_balance"] == pytest.approx(2.0) and s["outer_balance"] == pytest.approx(0.9)
    assert median(torch.tensor([10.0, 1.0, 3.0, 2.0])) == 2.5  # numpy's median: the two middle values' mean


def test_one_expert_has_no_inner_balance():
    s = routing_summary(torch.ones(5, 1), torch.zeros(5, 1, dtype=torch.long))
    assert math.isnan(s["inner_balance"]) and s["outer_balance"] == 1 and s["load"] == [1.0]


def test_mutual_info_equals_a_hand_computation():
    # labels a = 0 0 0 1, b = 0 0 1 1: p(0,0) = 1/2, p(0,1) = 1/4, p(1,1) = 1/4; p_a = (3/4, 1/4), p_b = (1/2, 1/2)
    counts = contingency(torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 1, 1]), 2)
    assert counts.tolist() == [[2, 1], [0, 1]]
    by_hand = 0.5 * math.log(0.5 / (0.75 * 0.5)) + 0.25 * math.log(0.25 / (0.75 * 0.5)) \
        + 0.25 * math.log(0.25 / (0.25 * 0.5))
    assert mutual_info(counts).item() == pytest.approx(by_hand)


def test_identical_choices_give_mi_equal_to_the_choice_entropy():
    first = torch.tensor([0, 0, 0, 1] * 50)  # p = 3/4, 1/4: entropy 0.811 bits
    topk_idx = [torch.stack([first, (first + 1) % 4], 1)] * 3  # the same choice in every layer
    entropy_bits = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert choice_mutual_info(topk_idx, 4).flatten().tolist() == pytest.approx([entropy_bits] * 9, rel=1e-5)
    assert distinct_paths(topk_idx) == 2


def test_independent_uniform_choices_give_about_zero_mi():
    torch.manual_seed(0)
    N, E = 20000, 8
    topk_idx = [torch.randint(E, (N, 2)) for _ in range(3)]
    mi = choice_mutual_info(topk_idx, E)
    assert mi.diag() == pytest.approx(torch.full((3,), 3.0), abs=0.01)  # each layer's choice: log2 8 bits
    off_diagonal = mi[~torch.eye(3, dtype=torch.bool)]
    assert (off_diagonal >= 0).all() and (off_diagonal < 0.01).all()  # sampling bias (E-1)^2 / (2 N ln 2) = 0.002
    assert distinct_paths(topk_idx) == pytest.approx(E ** 3, abs=5)  # 20000 draws hit nearly all 512 paths
    # exactly independent by construction: every pair of (layer 0, layer 1) choices equally often
    a, b = torch.arange(E * E) % E, torch.arange(E * E) // E
    assert choice_mutual_info([a[:, None], b[:, None]], E)[0, 1].item() == pytest.approx(0, abs=1e-7)


def test_gate_bins_are_numpys_digitize():
    g = torch.cat([torch.rand(1000), torch.linspace(0, 1, 100), torch.tensor([0.0, 1.0])])
    edges = np.linspace(0, 1, 100)
    ours = torch.bucketize(g, torch.tensor(edges, dtype=torch.float32), right=True)
    assert ours.tolist() == np.digitize(g.numpy(), edges.astype(np.float32)).tolist()


def test_gate_mutual_info_follows_the_papers_recipe():
    # per token, expert n's binned scores in two layers are one sample: 4 samples per token
    a = torch.tensor([[0.5, 0.5, 0.0, 0.0]])  # bins 50, 50, 1, 1
    same = a.clone()
    crossed = torch.tensor([[0.5, 0.0, 0.5, 0.0]])  # bins 50, 1, 50, 1: independent of a's
    uniform = torch.full((1, 4), 0.25)  # one bin for all experts: no information
    mi = gate_mutual_info([a, same, crossed, uniform])
    assert mi[0, 1] == pytest.approx(math.log(2)) and mi[0, 0] == pytest.approx(math.log(2))
    assert mi[0, 2] == pytest.approx(0, abs=1e-7) and mi[0, 3] == pytest.approx(0, abs=1e-7)
    assert torch.equal(mi, mi.T)
    # averaged over tokens: a second token with identical layers but 4 distinct bins gives ln 4
    spread = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    two_tokens = gate_mutual_info([torch.cat([a, spread]), torch.cat([crossed, spread])])
    assert two_tokens[0, 1] == pytest.approx((0 + math.log(4)) / 2)


def test_expert_similarity_is_3_for_identical_experts_and_3_over_e_for_orthogonal_ones():
    E, C, H = 4, 6, 5
    torch.manual_seed(0)
    one = [torch.randn(C, H), torch.randn(C, H), torch.randn(H, C)]
    assert analyze.expert_similarity(*(w.expand(E, *w.shape) for w in one)) == pytest.approx(3.0)
    # expert e's matrices average, over the FFN dim H, to the unit vector e: orthogonal experts.
    # Averaging over C instead would make all experts alike, so this also checks which dim is H.
    w1, w3, w2 = torch.zeros(E, C, H), torch.zeros(E, C, H), torch.zeros(E, H, C)
    for e in range(E):
        w1[e, e, :] = w3[e, e, :] = w2[e, :, e] = 1.0
    assert analyze.expert_similarity(w1, w3, w2) == pytest.approx(3 / E)


def random_checkpoint(folder, data, **overrides):
    """An untrained 3-layer model of the tiny dataset's vocabulary, saved where train.py would. Its
    weights are drawn at std 1: at the real init every token goes to the same experts."""
    _, vocab = load_dataset(data, master=True, ddp=False)
    settings = dict(vocab_size=len(vocab), block_size=32, n_layer=3, n_head=2, n_embd=32, n_experts=4, top_k=2,
                    mlp_hidden=32, router_dim=16)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**settings, **overrides})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    os.makedirs(folder, exist_ok=True)
    save_checkpoint({"model": model.state_dict(), "model_config": asdict(model.config), "vocab": vocab,
                     "train_config": {"dataset": data}}, os.path.join(folder, "ckpt.pt"))
    return model, vocab


def experts_of(model, vocab, text):
    """(T, L, k) expert ids of the model's own forward pass over text."""
    idx = torch.tensor([[vocab.index(c) for c in text]])
    with torch.no_grad():
        _, _, aux = model(idx)
    return torch.stack([r.topk_idx for r in aux["routing"]], dim=1).tolist()


def grid_rows(stdout, n_layers):
    """(position, [cell per layer]) of each row of the printed trace grid."""
    rows = []
    for line in stdout.split("  pos  token")[1].splitlines()[1:]:
        if line.startswith("---"):
            break
        fields = line.split()
        rows.append((int(fields[0]), fields[-n_layers:]))
    return rows


def sample_main(capsys, *args):
    """sample.py's output, run in this process (a subprocess would spend its time importing torch)."""
    sample.main(["--num_samples=1", "--device=cpu", "--trace=True", *args])
    return capsys.readouterr().out


def test_trace_lists_each_tokens_experts_in_each_layer(tiny_data, tmp_path, capsys):
    model, vocab = random_checkpoint(tmp_path, tiny_data)
    prompt = "KING:\nthe king"
    out = sample_main(capsys, f"--out_dir={tmp_path}", f"--start={prompt}", "--max_new_tokens=0")
    assert "\x1b" not in out  # not a terminal: plain text
    expected = experts_of(model, vocab, prompt)
    rows = grid_rows(out, 3)
    assert [pos for pos, _ in rows] == list(range(len(prompt)))
    assert [[int(c) for c in cells] for _, cells in rows] == [[e[0] for e in layers] for layers in expected]

    out = sample_main(capsys, f"--out_dir={tmp_path}", f"--start={prompt}", "--max_new_tokens=0", "--trace_topk=True")
    rows = grid_rows(out, 3)
    assert [[[int(i) for i in c.split("/")] for c in cells] for _, cells in rows] == expected  # k = 2 ids each


def test_trace_of_a_text_longer_than_block_size_covers_the_last_window(tiny_data, tmp_path, capsys):
    model, vocab = random_checkpoint(tmp_path, tiny_data)
    prompt = "KING:\nthe king my lord love"  # 27 tokens, then 20 more: 47, of which the last 32 are traced
    out = sample_main(capsys, f"--out_dir={tmp_path}", f"--start={prompt}", "--max_new_tokens=20")
    text = out.split("\nrouting of")[0]
    assert text.startswith(prompt) and len(text) == 47
    assert "routing of the last 32 of 47 tokens (block_size 32)" in out
    rows = grid_rows(out, 3)
    assert [pos for pos, _ in rows] == list(range(15, 47))
    assert [[int(c) for c in cells] for _, cells in rows] == [[e[0] for e in layers]
                                                              for layers in experts_of(model, vocab, text[-32:])]


def test_trace_colours_the_text_by_one_layers_top1_expert(tiny_data, tmp_path):
    model, vocab = random_checkpoint(tmp_path, tiny_data)
    text = "KING:\nthe king"
    out = sample.routing_trace(model, [vocab.index(c) for c in text], lambda ids: "".join(vocab[i] for i in ids),
                               topk=False, colour_layer=2)
    coloured = out.split("layer 2, top-1 expert: ")[1].split("\n", 1)[1]
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured).replace("\u21b5", "") == text
    colours = [int(c) for c in re.findall(r"\x1b\[30;48;5;(\d+)m", coloured)]
    layer2 = [layers[2][0] for layers in experts_of(model, vocab, text)]
    assert colours == [sample.EXPERT_COLOURS[e] for e in layer2]
    first_line, second_line = coloured.split("\n")  # the newline's mark is painted, the line break is not
    assert first_line.endswith("\u21b5\x1b[0m") and second_line.startswith("\x1b[30;48;5;")


def test_trace_refuses_a_dense_model_and_a_missing_layer(tiny_data, tmp_path, capsys):
    random_checkpoint(tmp_path / "moe", tiny_data)
    with pytest.raises(SystemExit, match="^error: trace_layer=3 must be between 0 and 2, a layer of the model$"):
        sample_main(capsys, f"--out_dir={tmp_path / 'moe'}", "--trace_layer=3")
    random_checkpoint(tmp_path / "dense", tiny_data, n_experts=0)
    with pytest.raises(SystemExit, match=r"dense model \(n_experts=0\): there is no routing to trace$"):
        sample_main(capsys, f"--out_dir={tmp_path / 'dense'}")


def test_analyze_shows_models_side_by_side(tiny_data, tmp_path, capsys):
    for name, overrides in [("gru", {}), ("linear", {"router": "linear"}), ("np", {"router_passing": "none"})]:
        random_checkpoint(tmp_path / name, tiny_data, **overrides)
    out = tmp_path / "routing.json"
    analyze.main([f"--ckpts={tmp_path / 'gru'},{tmp_path / 'linear'},{tmp_path / 'np'}", "--tokens=250",
                  f"--json={out}", f"--plots={tmp_path / 'plots'}", "--device=cpu"])
    stdout = capsys.readouterr().out
    assert re.search(r"^ +gru +linear +np$", stdout, re.M)
    models = json.loads(out.read_text())["models"]
    for m in models.values():
        assert m["tokens"] == 256  # rounded up to 8 whole windows of 32
        assert len(m["layers"]) == 3 and all(sum(s["load"]) == pytest.approx(1) for s in m["layers"])
        assert np.array(m["gate_mi"]).shape == np.array(m["top1_mi_bits"]).shape == (3, 3)
        assert all(sum(h) == pytest.approx(1) for h in m["entropy_hist"])
    # the recurrent state: |h| < sqrt(p) for a GRU; no update gate where h_{i-1} = 0
    assert "state_norm" not in models["linear"]
    assert all(0 < n < 4 for n in models["gru"]["state_norm"])
    assert models["gru"]["update_gate"][0] is None and all(0 < z < 1 for z in models["gru"]["update_gate"][1:])
    assert models["np"]["update_gate"] == [None, None, None]  # no passing: every layer starts from h_0
    if importlib.util.find_spec("matplotlib"):  # optional: CI has none
        assert sorted(os.listdir(tmp_path / "plots")) == ["expert_load.png", "gate_entropy.png",
                                                          "top1_mi.png"]
    else:
        assert "pip install matplotlib to write pictures" in stdout


@pytest.mark.parametrize("args, message", [
    (["--split=test"], "split='test' must be train or val"),
    (["--tokens=0"], "tokens=0 must be at least 1"),
    (["--ckpts=a/x,b/x"], "must name one or more checkpoint folders with different names"),
    (["--ckpts=nowhere"], "no checkpoint at nowhere/ckpt.pt; train one first or point --ckpts at its folder"),
    (["--plots=assets"], "assets/expert_load.png is a file of the repository (tracked by git); write into another "
                         "folder, such as --plots=out-analysis"),
    (["--json=README.md"], "README.md is a file of the repository"),
])
def test_analyze_bad_input_is_one_line_error(args, message):
    with pytest.raises(SystemExit, match=f"^error: .*{re.escape(message)}[^\n]*$"):
        analyze.main(args)


def test_analyze_refuses_a_dense_model(tiny_data, tmp_path):
    random_checkpoint(tmp_path, tiny_data, n_experts=0)
    with pytest.raises(SystemExit, match=r"is a dense model \(n_experts=0\): it routes nothing"):
        analyze.main([f"--ckpts={tmp_path}"])
