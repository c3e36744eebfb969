# RMoE on Shakespeare characters, sized for a laptop CPU: 4 layers x 128 wide,
# 8 SwiGLU experts (hidden 256) per layer, top-2, GRU router with p = 128.
# The defaults of train.py and model.py are this run; this file names the
# router and the output folder. smoe_small.py and dense_small.py differ only
# in the feed-forward layer, so the three runs compare fairly.
out_dir = "out-rmoe-small"
router = "gru"
