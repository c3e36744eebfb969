# enwik8 small (6 x 264): Tab. 4, more router parameters against recurrence, and the 6-layer
# point of Fig. 2. Paper, test BPC: SMoE 1.184, SMoE-MLP 1.183, RMoE-NP 1.196, RMoE 1.183.
base = ["config/enwik8_small.py"]
baseline = "smoe"
seeds = [1337, 1338, 1339]
variants = {
    "smoe": ["--router=linear"],
    "smoe-mlp": ["--router=mlp"],
    "rmoe": [],
    "rmoe-np": ["--router_passing=none"],
}
