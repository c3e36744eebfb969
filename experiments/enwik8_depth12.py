# enwik8 depth sweep (Fig. 2), 12 layers at the small width (6 layers: experiments/enwik8_small.py).
# Paper, test BPC (read from the official repository's plot data): SMoE 1.132, RMoE 1.125, RMoE-NP 1.141.
base = ["config/enwik8_small.py", "--n_layer=12"]
baseline = "smoe"
seeds = [1337, 1338, 1339]
variants = {
    "smoe": ["--router=linear"],
    "rmoe": [],
    "rmoe-np": ["--router_passing=none"],
}
