# The dense baseline for rmoe_small.py: one SwiGLU MLP per block with the same
# active parameters as a token's top-2 experts (hidden = top_k x 256 = 512).
out_dir = "out-dense-small"
n_experts = 0
mlp_hidden = 512
