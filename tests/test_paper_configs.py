"""The paper-shaped enwik8 configs (config/enwik8_*.py) and the comparison specs (experiments/enwik8_*.py).

Parameter counts are held to the paper's (within 1%), so a change of shape fails here; every
variant of every spec must be a valid train.py command line.
"""

import importlib.util
import os
from pathlib import Path

import pytest

import compare
from rmoe import training as train
from configurator import parse_args
from model import GPTConfig

REPO = Path(__file__).resolve().parents[1]
SPECS = sorted((REPO / "experiments").glob("enwik8_*.py"))

_spec = importlib.util.spec_from_file_location("paper_cost", REPO / "experiments" / "paper_cost.py")
paper_cost = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(paper_cost)

MEDIUM, SMALL = str(REPO / "config/enwik8_medium.py"), str(REPO / "config/enwik8_small.py")


# Non-embedding parameters in millions, as the paper reports them (Tab. 1 and Tab. 4).
@pytest.mark.parametrize("config, router, paper", [
    (MEDIUM, ["--router=linear"], 36.08),  # SMoE, Tab. 1
    (MEDIUM, [], 36.51),  # RMoE, Tab. 1
    (MEDIUM, ["--router=mlp"], 36.79),  # SMoE-MLP, Tab. 1
    (MEDIUM, ["--router_passing=none"], 36.51),  # RMoE + NP, Tab. 4
    (SMALL, ["--router=linear"], 15.32),  # SMoE, Tab. 4
    (SMALL, [], 15.61),  # RMoE, Tab. 4
    (SMALL, ["--router=mlp"], 15.73),  # SMoE + MLP, Tab. 4
    (SMALL, ["--router_passing=none"], 15.61),  # RMoE + NP, Tab. 4
])
def test_non_embedding_parameters_within_1_percent_of_the_paper(config, router, paper):
    _, model = paper_cost.paper_model([config, *router])
    assert abs(model.num_non_embedding_params() / 1e6 / paper - 1) < 0.01


def test_non_embedding_parameters_exclude_exactly_the_embeddings():
    """Not the vocabulary nor the context length: only the blocks, the shared router cell and the final norm."""
    _, model = paper_cost.paper_model([SMALL])
    inside = sum(p.numel() for part in (model.blocks, model.router_core, model.ln_f) for p in part.parameters())
    assert model.num_non_embedding_params() == inside
    _, longer = paper_cost.paper_model([SMALL, "--block_size=2048"])
    assert longer.num_non_embedding_params() == inside < longer.num_params()


# The settings the paper states for Tab. 1's medium model and Tab. 4's small one; mlp_hidden is ours, sized by the test above.
PAPER = {"n_head": 8, "n_experts": 16, "top_k": 2, "router": "gru", "router_dim": 128, "block_size": 512,
         "batch_size": 48, "gradient_accumulation_steps": 1, "learning_rate": 7e-4, "dropout": 0.1,
         "lb_loss_coef": 0.01, "dataset": "enwik8"}


@pytest.mark.parametrize("config, shape", [
    (MEDIUM, {"n_layer": 8, "n_embd": 352, "warmup_iters": 4000, "max_iters": 80000}),
    (SMALL, {"n_layer": 6, "n_embd": 264, "warmup_iters": 3000, "max_iters": 60000}),
])
def test_configs_have_the_papers_settings(config, shape):
    settings, _ = parse_args(train.default_settings(), [config], "")
    assert {k: settings[k] for k in {**PAPER, **shape}} == {**PAPER, **shape}
    assert settings["lr_decay_iters"] == settings["max_iters"]  # the schedule spans the whole run


def read_spec(path):
    names = {}
    exec(compile(path.read_text(), str(path), "exec"), {}, names)
    return names


def test_the_specs_cover_the_papers_enwik8_comparisons():
    assert [p.name for p in SPECS] == ["enwik8_depth12.py", "enwik8_depth18.py", "enwik8_depth24.py",
                                       "enwik8_medium.py", "enwik8_small.py"]
    assert set(read_spec(REPO / "experiments/enwik8_medium.py")["variants"]) == {
        "smoe", "smoe-mlp", "rmoe", "rmoe-np", "rmoe-detach"}  # Tabs. 1 and 5


@pytest.mark.parametrize("path", SPECS + [REPO / "experiments/routers_small.py"], ids=lambda p: p.stem)
def test_every_variant_is_a_valid_and_distinct_train_command(path, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)  # a spec names config files as a user types them, from the repository root
    spec = compare.read_experiment(str(path), "")  # what compare.py accepts, checked as it checks them
    runs = compare.plan_runs(spec, [], str(tmp_path))
    assert len(runs) == len(spec["variants"]) * len(spec["seeds"]) and not os.listdir(tmp_path)
    models = {}
    for run in runs:
        settings, _ = parse_args(train.default_settings(), run["argv"], "")
        models[run["variant"]] = GPTConfig(**{k: settings[k] for k in train.MODEL_KEYS})
    assert len(set(map(repr, models.values()))) == len(models)  # no two variants train the same model
    assert models[spec["baseline"]].router == "linear"  # compared against SMoE, as in the paper
    depth = path.stem.removeprefix("enwik8_depth")
    if depth.isdigit():  # Fig. 2: the small model, deeper
        assert all(m.n_layer == int(depth) and m.n_embd == 264 for m in models.values())
