# The paper's router ablations (Tables 4 and 5) at the default CPU shape: 4 layers x 128,
# 8 experts top-2, on Shakespeare characters, 2000 steps. dense has the active parameters of
# a token's two experts; rmoe-np routes every layer from h_0 = 0 (no passing) and rmoe-detach
# passes h_{i-1} forward without its gradient.
base = ["config/rmoe_small.py"]
variants = {
    "dense": ["config/dense_small.py"],
    "smoe": ["config/smoe_small.py"],
    "rmoe": [],
    "rmoe-np": ["--router_passing=none"],
    "rmoe-detach": ["--router_passing=detach"],
}
baseline = "smoe"
seeds = [1337, 1338, 1339]
