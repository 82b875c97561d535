"""Kernel benchmark: Triton vs torch eager (the reference) vs torch.compile(reference), bf16, forward and forward+backward.

    python tests/bench_kernels.py [--out FILE] [--shapes 8192x768,32768x4096] [--ops rms_norm,dyt]

GB/s counts the bytes an ideal fused kernel must move (activations read and written once; the (d,) parameters are
negligible), so the three implementations are compared on the same work; % of peak uses the HBM bandwidth of
known GPUs. Needs a CUDA GPU: without one it says so and exits 0 (it is not part of the timed test suite).
"""
import argparse, os, sys
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# activation tensors of shape (rows, d) moved by (forward, backward), per op of train_gpt.OPS
TENSORS = dict(rms_norm=(2, 3), l2_norm=(2, 3), ngpt_update=(3, 5), angpt_update=(3, 5), dyt=(2, 3))

def peak_bandwidth(name):
    """HBM peak in bytes/s for the GPUs we run on, else None (then only GB/s is printed)."""
    n = name.upper()
    if "H200" in n and "GH200" not in n:
        return 4.8e12
    if "GH200" in n:  # the 96 GB HBM3 part; the 144 GB HBM3e one reports more memory
        return 4.9e12 if "144" in n else 4.0e12
    if "H100" in n and ("SXM" in n or "HBM3" in n):  # the SXM part reports itself as 'H100 80GB HBM3'
        return 3.35e12
    if "H100" in n and "PCIE" in n:
        return 2.0e12
    return None

def make_args(op, n, d, device, dtype=torch.bfloat16):
    """Inputs as the model passes them: bf16 activations, fp32 parameters."""
    act = lambda: torch.randn(n, d, device=device, dtype=dtype)
    par = lambda scale=1.0, shift=0.0: torch.randn(d, device=device) * scale + shift
    if op == "rms_norm":
        return (act(),)  # the GPT baseline's RMSNorm has no weight
    if op == "l2_norm":
        return (act(),)
    if op == "ngpt_update":
        h = torch.nn.functional.normalize(act().float(), dim=-1).to(dtype)
        return (h, act(), par(0.05, 0.1))
    if op == "angpt_update":
        return (act(), act(), par(0.05, 0.2))
    if op == "dyt":
        return (act(), torch.tensor([0.5], device=device), par(0.1, 1.0), par(0.1))
    raise ValueError(op)

def leaves(args):
    return [a.detach().clone().requires_grad_() for a in args]

def max_error(op, args, T):
    """max |triton - reference| over the output and every gradient, relative to the largest reference value."""
    ref, tri = T.OPS[op]
    a1, a2 = leaves(args), leaves(args)
    y1, y2 = ref(*a1), tri(*a2)
    dy = torch.randn_like(y1)
    y1.backward(dy); y2.backward(dy)
    err = 0.0
    for p, q in [(y1, y2)] + [(x.grad, z.grad) for x, z in zip(a1, a2)]:
        err = max(err, ((p.float() - q.float()).abs().max() / p.float().abs().max().clamp_min(1e-6)).item())
    return err

def bench(fn, args, backward, triton):
    if not backward:
        with torch.no_grad():
            return triton.testing.do_bench(lambda: fn(*args), return_mode="median")
    xs = leaves(args)
    dy = torch.randn_like(fn(*xs))
    def step():
        fn(*xs).backward(dy)
    return triton.testing.do_bench(step, grad_to_none=xs, return_mode="median")

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="also write the table to this file")
    ap.add_argument("--shapes", default="8192x768,32768x4096", help="rows x d, comma-separated")
    ap.add_argument("--ops", default=",".join(TENSORS), help="comma-separated subset of " + ",".join(TENSORS))
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_kernels.py needs a CUDA GPU (none found); nothing to measure.")
        return 0
    import triton
    import train_gpt as T
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    peak = peak_bandwidth(name)
    shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")]
    head = f"{'op':<15} {'shape':<11} {'pass':<8} {'impl':<14} {'ms':>8} {'GB/s':>7} {'%peak':>6} {'vs eager':>8}"
    lines = [f"# {name}; peak {peak / 1e12:.2f} TB/s" if peak else f"# {name}; peak bandwidth unknown: GB/s only", head]
    print("\n".join(lines), flush=True)
    errors = []
    for op in a.ops.split(","):
        ref, tri = T.OPS[op]
        compiled = torch.compile(ref, fullgraph=True, dynamic=False)
        impls = dict(triton=tri, eager=ref, compiled_ref=compiled)
        for n, d in shapes:
            args = make_args(op, n, d, device)
            errors.append(f"{op} {n}x{d}: max relative error of triton vs reference (output and grads) {max_error(op, args, T):.2e}")
            for backward in (False, True):
                nbytes = (TENSORS[op][0] + backward * TENSORS[op][1]) * n * d * args[0].element_size()
                ms = {k: bench(fn, args, backward, triton) for k, fn in impls.items()}
                for k, t in ms.items():
                    gbs = nbytes / (t * 1e-3) / 1e9
                    pct = f"{100 * gbs * 1e9 / peak:5.1f}%" if peak else "-"
                    line = f"{op:<15} {f'{n}x{d}':<11} {'fwd+bwd' if backward else 'fwd':<8} {k:<14} {t:8.4f} {gbs:7.0f} {pct:>6} {ms['eager'] / t:7.2f}x"
                    print(line, flush=True); lines.append(line)
            torch.cuda.empty_cache()
    print("\n".join(errors))
    if a.out:
        with open(a.out, "w") as f:
            f.write("\n".join(lines + [""] + errors) + "\n")
    return 0

if __name__ == "__main__":
    sys.exit(main())
