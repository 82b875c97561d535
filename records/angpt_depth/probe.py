"""anGPT's per-block output norms and MLP output norms over its first training steps: where the loss spikes of a
12-layer anGPT come from. Runs train_gpt.py's model, optimizer and schedule on consecutive batches of the first
train shard (no evaluation), printing per step the loss and the norms of blocks / MLP outputs 0, 1, 2, n/2, n-2, n-1.

    python records/angpt_depth/probe.py STEPS [train_gpt.py flags]     # n_layer >= 4
    VARIANT=in|out python records/angpt_depth/probe.py ... --angpt_norm=none   # exact l2 norm patched in: sub-layer
                                                                        # inputs (in) or before the head (out) alone;
                                                                        # both is --angpt_norm=input
For GPT the block-out norms are of its unnormalised stream; for anGPT under --angpt_norm=output the MLP-out norms
are before the norm.
"""
import os, sys, time
import numpy as np
import torch
import torch.nn.functional as F
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import train_gpt as T  # noqa: E402

variant = os.environ.get("VARIANT", "").split(",")
if "in" in variant:
    def forward(self, h):
        alpha_attn, alpha_mlp = self.alphas()
        h = self.ops.angpt_update(h, self.attn(F.normalize(h, dim=-1)), alpha_attn)
        return self.ops.angpt_update(h, self.mlp(F.normalize(h, dim=-1)), alpha_mlp)
    T.ANGPTBlock.forward = forward
if "out" in variant:
    T.ANGPTArch.logits = lambda self, x, lm_head: T.scaled_logits(self, F.normalize(x, dim=-1), lm_head)

steps, config = int(sys.argv[1]), T.parse_args(sys.argv[2:], cuda_available=False)
torch.manual_seed(config.seed)
model = T.build_model(config, T.Ops(config.kernels, torch.device("cpu")))
optimizers = T.build_optimizers(model, config)
tokens = np.asarray(T.read_shard(T.find_shards(config.train_files, "train_files")[0]))
B, L = config.batch_size, config.seq_len
block_norm, mlp_norm = {}, {}
for i, block in enumerate(model.blocks):
    block.register_forward_hook(lambda m, inp, out, i=i: block_norm.__setitem__(i, out.float().norm(dim=-1).mean().item()))
    block.mlp.register_forward_hook(lambda m, inp, out, i=i: mlp_norm.__setitem__(i, out.float().norm(dim=-1).mean().item()))
n = len(model.blocks)
shown = sorted({0, 1, 2, n // 2, n - 2, n - 1})
for step in range(steps):
    buf = torch.as_tensor(tokens[step * B * L: (step + 1) * B * L + 1].astype(np.int64))
    x, y = buf[:-1].view(B, L), buf[1:].view(B, L)
    t0 = time.time()
    loss = T.train_step(model, model, optimizers, [(x, y)], config, step, torch.device("cpu"))  # the train loop's step
    print(f"step {step + 1} loss {loss.item():8.3f} ({time.time() - t0:.1f}s) block-out norms "
          + " ".join(f"L{i}:{block_norm[i]:.2f}" for i in shown) + " | mlp-out " + " ".join(f"L{i}:{mlp_norm[i]:.2f}" for i in shown), flush=True)
