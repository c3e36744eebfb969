# enwik8 depth sweep (Fig. 2), 24 layers at the small width (6 layers: experiments/enwik8_small.py).
# Paper, test BPC (read from the official repository's plot data): SMoE 1.108, RMoE 1.089, RMoE-NP 1.123.
base = ["config/enwik8_small.py", "--n_layer=24"]
baseline = "smoe"
seeds = [1337, 1338, 1339]
variants = {
    "smoe": ["--router=linear"],
    "rmoe": [],
    "rmoe-np": ["--router_passing=none"],
}
