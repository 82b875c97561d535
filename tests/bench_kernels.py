"""Kernel benchmark: Triton vs torch eager (the reference) vs torch.compile(reference), bf16, forward and
forward+backward, at the model's shapes; and every kernel's registers and spills from an ahead-of-time sm_90 compile.

    python tests/bench_kernels.py [--out FILE] [--shapes 65536x768,393216x128,32768x4096] [--ops rms_norm,dyt]
    python tests/bench_kernels.py --aot_only          # registers / spills, no GPU needed (ptxas ships with triton)

Shapes: 65,536 x 768 = the residual rows of a 64 x 1024 micro-batch at the speedrun width; 393,216 x 128 = its q or k
head rows (6 heads x 128); 32,768 x 4096 = wide rows for the % of HBM bandwidth. Each implementation is timed under
a CUDA graph when it can be captured (launch and host overhead counted once per graph, as a compiled model pays it;
`graph` in the table), else with triton.testing.do_bench (`eager`: host overhead included). GB/s counts the bytes an
ideal fused kernel must move (activations read and written once; (d,) parameters negligible), so implementations are
compared on the same work; % of peak uses the HBM bandwidth of known GPUs. Without a GPU the timing part says so;
the register table still prints. Not part of the timed test suite.
"""
import argparse, os, re, subprocess, sys, tempfile
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# activation tensors of shape (rows, d) moved by (forward, backward), per op of train_gpt.OPS
TENSORS = dict(rms_norm=(2, 3), l2_norm=(2, 3), ngpt_update=(3, 5), angpt_update=(3, 5), dyt=(2, 3))
AOT_WIDTHS = (128, 768, 4096)  # the head dim, the speedrun width, the wide benchmark rows

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
    """Median ms of fn (forward, or forward+backward): under a CUDA graph if it captures, else eagerly timed."""
    xs = leaves(args) if backward else args
    if backward:
        dy = torch.randn_like(fn(*xs))
        def step():
            for x in xs: x.grad = None
            fn(*xs).backward(dy)
    else:
        def step():
            with torch.no_grad(): fn(*xs)
    try:
        return triton.testing.do_bench_cudagraph(step, return_mode="median"), "graph"
    except Exception:  # noqa: BLE001 - some paths (allocator, autograd) refuse capture: time them eagerly
        torch.cuda.synchronize()
        return triton.testing.do_bench(step, return_mode="median"), "eager"

def ptxas_resources(ptx):
    """(registers, spill store bytes, spill load bytes) that ptxas -v reports for one kernel's PTX, for sm_90."""
    from triton.backends.nvidia.compiler import get_ptxas
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        arch = re.search(r"^\.target (sm_\w+)", ptx, re.M).group(1)  # sm_90a: what triton targets on Hopper
        r = subprocess.run([get_ptxas(90).path, f"-arch={arch}", "-v", f.name, "-o", os.devnull], capture_output=True, text=True)
        out = r.stdout + r.stderr
    finally:
        os.remove(f.name)
    used = re.search(r"Used (\d+) registers", out)
    if used is None:
        raise RuntimeError(f"ptxas -v said no register count: {out[-1000:]}")
    regs = int(used.group(1))
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", out)
    return regs, int(spills.group(1)), int(spills.group(2))

def hopper_compile(widths=AOT_WIDTHS, every_flag_at=1024, acts=("*bf16", "*fp32"), fp32_widths=None):
    """Compiles every *_kernel of train_gpt for sm_90 without a GPU, for each tile it is launched with at `widths`
    (fp32 activations: at fp32_widths, if given) and each activation dtype (constexpr flags all on; every flag
    combination at the tile of width every_flag_at): yields (kernel name, act dtype, constexprs, num_warps,
    CompiledKernel). Needs TRITON_INTERPRET unset."""
    import itertools, triton
    import train_gpt as T
    from triton.compiler import ASTSource
    from triton.backends.compiler import GPUTarget
    kernels = {k: v for k, v in vars(T).items() if k.endswith("_kernel")}
    FP32 = {"STATS", "W", "A", "G", "B", "ALPHA"}  # parameters and saved statistics are fp32 always
    def arg_type(p, act):
        if p.is_constexpr: return "constexpr"
        if p.name.isupper(): return "*fp32" if p.name in FP32 or p.name.endswith("_PART") else act
        return "fp32" if p.name in ("eps", "skip_tol") else "i32"
    for (name, fn), act in itertools.product(sorted(kernels.items()), acts):
        sig = {p.name: arg_type(p, act) for p in fn.params}
        flags = [p.name for p in fn.params if p.is_constexpr and not p.name.startswith("BLOCK_")]
        at = fp32_widths if act == "*fp32" and fp32_widths is not None else widths
        for bm, bn, warps in sorted({T._blocks(d, bwd=name.endswith("_bwd_kernel")) for d in at}):
            every = bn == every_flag_at and act == "*bf16"
            for combo in itertools.product([True, False], repeat=len(flags)) if every else [(True,) * len(flags)]:
                consts = dict(BLOCK_M=bm, BLOCK_N=bn, **dict(zip(flags, combo)))
                yield name, act, consts, warps, triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32),
                                                               options=dict(num_warps=warps, enable_fp_fusion=True))

def resource_table(widths=AOT_WIDTHS):
    """One line per kernel and tile (bf16 activations, every flag on): registers and spills from ptxas for sm_90."""
    lines = [f"{'kernel':<28} {'BLOCK_M x BLOCK_N':<18} {'warps':>5} {'regs':>5} {'spill st':>8} {'spill ld':>8}"]
    for name, act, consts, warps, k in hopper_compile(widths, every_flag_at=0, acts=("*bf16",)):
        regs, st, ld = ptxas_resources(k.asm["ptx"])
        lines.append(f"{name:<28} {consts['BLOCK_M']:>6} x {consts['BLOCK_N']:<9} {warps:>5} {regs:>5} {st:>8} {ld:>8}")
    return lines

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="also write the table to this file")
    ap.add_argument("--shapes", default="65536x768,393216x128,32768x4096", help="rows x d, comma-separated")
    ap.add_argument("--ops", default=",".join(TENSORS), help="comma-separated subset of " + ",".join(TENSORS))
    ap.add_argument("--aot_only", action="store_true", help="only the sm_90 register / spill table (no GPU needed)")
    ap.add_argument("--tiny", action="store_true", help="small shapes (tests/gpu_check.py --tiny)")
    a = ap.parse_args(argv)
    lines = []
    def say(line):
        print(line, flush=True); lines.append(line)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        say("(register table skipped: TRITON_INTERPRET=1 makes interpreted kernels, which do not compile)")
    else:
        say("# sm_90 resources per kernel (ptxas -v on the AOT-compiled PTX, bf16 activations, every flag on)")
        for line in resource_table((128,) if a.tiny else AOT_WIDTHS):  # --tiny: one width, the plumbing
            say(line)
    if a.aot_only or not torch.cuda.is_available():
        if not a.aot_only:
            say("bench_kernels.py timing needs a CUDA GPU (none found); nothing timed.")
        return finish(a, lines, [])
    import triton
    import train_gpt as T
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    peak = peak_bandwidth(name)
    shapes = [tuple(int(v) for v in s.split("x")) for s in ("1024x768,4096x128" if a.tiny else a.shapes).split(",")]
    say(f"# {name}; peak {peak / 1e12:.2f} TB/s" if peak else f"# {name}; peak bandwidth unknown: GB/s only")
    say(f"{'op':<15} {'shape':<12} {'pass':<8} {'impl':<14} {'timing':<6} {'ms':>8} {'GB/s':>7} {'%peak':>6} {'vs compiled':>11}")
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
                for k, (t, how) in ms.items():
                    gbs = nbytes / (t * 1e-3) / 1e9
                    pct = f"{100 * gbs * 1e9 / peak:5.1f}%" if peak else "-"
                    say(f"{op:<15} {f'{n}x{d}':<12} {'fwd+bwd' if backward else 'fwd':<8} {k:<14} {how:<6} {t:8.4f} {gbs:7.0f} {pct:>6} "
                        f"{ms['compiled_ref'][0] / t:10.2f}x")
            torch.cuda.empty_cache()
    return finish(a, lines, errors)

def finish(a, lines, errors):
    for e in errors:
        print(e)
    if a.out:
        with open(a.out, "w") as f:
            f.write("\n".join(lines + [""] + errors) + "\n")
    return 0

if __name__ == "__main__":
    sys.exit(main())
