# RMoE on Shakespeare characters, sized for a laptop CPU: 4 layers x 128 wide,
# 8 SwiGLU experts (hidden 256) per layer, top-2, GRU router.
# The defaults of train.py and model.py are this run, except for p: the paper's
# p = 128 goes with a 352-wide model; at 128 wide p = 64 keeps the router's
# share of the compute near the paper's. smoe_small.py and dense_small.py differ
# only in the feed-forward layer, so the three runs compare fairly.
out_dir = "out-rmoe-small"
router = "gru"
router_dim = 64
