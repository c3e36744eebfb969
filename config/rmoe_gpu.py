# RMoE at the paper's enwik8 "medium" shape (8 layers x 352, 16 experts top-2,
# expert hidden 352, p = 128, dropout 0.1, LB coefficient 0.01, lr 7e-4) on
# Shakespeare characters, for one GPU. Not yet run by us: see the README.
# For the SMoE baseline add --router=linear --out_dir=out-smoe-gpu.
out_dir = "out-rmoe-gpu"
device = "cuda"  # a GPU config: on a machine without one this is an error, not hours on the CPU (--device=cpu to insist)
n_layer = 8
n_head = 8
n_embd = 352
n_experts = 16
top_k = 2
mlp_hidden = 352
router = "gru"
router_dim = 128
dropout = 0.1
block_size = 512
batch_size = 48
gradient_accumulation_steps = 1
learning_rate = 7e-4
min_lr = 7e-5
warmup_iters = 400
max_iters = 10000
lr_decay_iters = 10000
eval_interval = 500
eval_iters = 50
log_interval = 50
