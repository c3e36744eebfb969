# enwik8 medium (8 x 352): the routers of Tab. 1 that this repository has (SMoE, SMoE-MLP, RMoE)
# and the recurrent-gradient ablations of Tab. 5 (RMoE + NP, RMoE + detach h_{i-1}), three seeds
# each (the paper reports one run per row). Paper, test BPC: SMoE 1.128, SMoE-MLP 1.137,
# RMoE 1.116, NP 1.123, detach 1.133.
base = ["config/enwik8_medium.py"]
baseline = "smoe"
seeds = [1337, 1338, 1339]
variants = {
    "smoe": ["--router=linear"],
    "smoe-mlp": ["--router=mlp"],
    "rmoe": [],
    "rmoe-np": ["--router_passing=none"],
    "rmoe-detach": ["--router_passing=detach"],
}
