# The SMoE baseline for rmoe_small.py: the same model and training run with a
# per-layer linear router (logits = G_i x_i) in place of the recurrent one.
out_dir = "out-smoe-small"
router = "linear"
