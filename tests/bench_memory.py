"""Bytes each architecture keeps for the backward, per token per layer: a memory figure a CPU can measure.

    python tests/bench_memory.py [--width 768 --heads 6] [--kernels triton|torch]

One block at the speedrun width runs forward under bf16 autocast with torch.autograd.graph.saved_tensors_hooks
counting every distinct storage saved for the backward (parameters and their bf16 casts excluded: they do not grow
with tokens). Run at two token counts; the difference per token is the figure, so per-call constants cancel. The
Triton kernels run in the interpreter on a CPU: they save what they save on the GPU. tests/test_bench_variants.py pins
these numbers, so a change that keeps more cannot land unnoticed. (Under torch.compile the GPU keeps what inductor's
partitioner decides; this measures the eager graph the ops define.)
"""
import argparse, os, sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
ARCHS = {"gpt": [], "ngpt": ["--arch=ngpt"], "angpt": ["--arch=angpt"], "dyt": ["--norm=dyt"]}


def saved_bytes_per_token(flags, kernels="triton", width=768, heads=6):
    import train_gpt as T
    config = T.parse_args(["--preset=cpu", "--n_layer=1", f"--n_embd={width}", f"--n_head={heads}", "--vocab_size=1024",
                           "--seq_len=256", "--bf16=true", f"--kernels={kernels}"] + list(flags))
    torch.manual_seed(0)
    model = T.build_model(config, T.Ops(kernels, "cpu"))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    totals = []
    for batch in (1, 2):
        idx = torch.randint(0, 1024, (batch, 128))
        saved = {}
        def pack(t):
            storage = t.untyped_storage()
            if storage.data_ptr() not in params:
                saved[storage.data_ptr()] = storage.nbytes()
            return t
        with torch.no_grad():
            x = model.arch.embed(model.wte(idx))
        x.requires_grad_()
        with torch.autocast("cpu", torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.arch.run_blocks(model.blocks, x, idx)
        totals.append(sum(saved.values()))
    return (totals[1] - totals[0]) / 128  # one more sequence of 128 tokens; weight casts cancel


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--kernels", default="triton", choices=["triton", "torch"])
    a = ap.parse_args(argv)
    if a.kernels == "triton" and not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before train_gpt imports triton
    print(f"# bytes saved for the backward per token per layer, width {a.width}, {a.heads} heads, bf16 autocast, {a.kernels} kernels")
    base = None
    for name, flags in ARCHS.items():
        b = saved_bytes_per_token(flags, a.kernels, a.width, a.heads)
        base = base or b
        print(f"{name:<6} {b:9.0f} B  {b / a.width:6.1f} x d  {b / base:5.2f} x gpt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
