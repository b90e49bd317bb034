#!/usr/bin/python3
"""PyTorch peer of `hydraopt merge --method hydra` (the "hydra point").

What a skilled PyTorch user would write to get the same result from a set of
PEFT LoRA adapters of one base model, for an end-to-end comparison with the
C++ tool (bench/e2e.sh). Per module, with dW_i = s_i B_i A_i:

  * balanced task weights w_i = 1 / sum_modules ||dW_i||_F^2, with
    ||s B A||_F = ||R A||_F where s B = Q R (thin QR): only r x in products;
  * V (in x k, k = the module's largest rank r) = the top-k right singular
    subspace of the stack of sqrt(w_i) dW_i, i.e. of the stack of
    sqrt(w_i) R_i A_i ((sum_i r_i) x in; the Q_i drop out of the right
    singular vectors);
  * heads H_i = s_i B_i (A_i V) (out x k) and one shared body V^T (k x in);
  * per-task relative error ||dW_i - H_i V^T||_F / ||dW_i||_F summed over
    modules as in hydraopt's report: sqrt(sum_m err^2 / sum_m ||dW||^2),
    after rounding H and V to the stored dtype (like hydraopt, by default
    the inputs' widest dtype, BF16 for the synth presets).

No out x in matrix is ever formed. Tasks of one rank in a module are
processed as one batch (batched QR / matmul), which is how one would write it
in PyTorch rather than a Python loop over tasks.

Reading: safetensors files are parsed by hand (8-byte little-endian header
length, JSON header, raw little-endian data) into one bytearray per file;
tensors are zero-copy views (torch.frombuffer) converted to the compute
dtype one module at a time. adapter_config.json: r, lora_alpha, use_rslora,
rank_pattern / alpha_pattern (first key in file order matching the module
name as a dotted suffix, the PEFT and hydraopt rule), peft_type, use_dora.

Output: one JSON line {"tasks", "modules", "seconds_total", "seconds_read",
"mean_rel_error", "rel_errors": {task: err}, ...}; --out FILE.safetensors
also writes the factors ("<module>.hydra_body" k x in, and
"<module>.hydra_head.<task>" out x k, scaling folded into the head).

Usage:
  /usr/bin/python3 bench/peers/hydra_torch.py [--threads 2] [--solver auto|lowrank|gram]
      [--niter 4] [--oversample K+10] [--dtype auto|bf16|f16|f32|f64]
      [--compute-dtype float32|float64] [--out FILE.safetensors] ADAPTER_DIR|NAME=DIR ...
"""

import argparse
import json
import math
import os
import re
import sys
import time

T_START = time.perf_counter()


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("adapters", nargs="+", help="PEFT adapter directories (task = directory name) or NAME=DIR")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads and OpenBLAS threads (default 2)")
    p.add_argument("--solver", choices=["auto", "lowrank", "gram"], default="auto",
                   help="top-k right subspace: torch.svd_lowrank, eigh of the smaller Gram, or auto "
                        "(default: gram when min(sum of ranks, in) <= --exact-below, else lowrank)")
    p.add_argument("--exact-below", type=int, default=512, help="auto's threshold (default 512)")
    p.add_argument("--niter", type=int, default=4, help="power iterations of svd_lowrank (default 4)")
    p.add_argument("--oversample", type=int, default=-1,
                   help="extra columns q - k of svd_lowrank (default -1: k + 10, i.e. q = 2k + 10)")
    p.add_argument("--seed", type=int, default=0, help="torch.manual_seed for svd_lowrank's Gaussian start")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "f16", "f32", "f64"],
                   help="stored dtype of H and V (errors are computed after rounding to it); "
                        "auto = the inputs' widest, like hydraopt")
    p.add_argument("--compute-dtype", default="float32", choices=["float32", "float64"],
                   help="dtype of the algebra (default float32)")
    p.add_argument("--out", help="write the heads and bodies to this .safetensors file")
    p.add_argument("--read-only", action="store_true",
                   help="only read and parse the adapters (the reading floor of this peer), then exit")
    return p.parse_args(argv)


ARGS = parse_args(sys.argv[1:])
# OpenBLAS (Debian's torch calls it for GEMM and LAPACK) has its own pool; set it
# before torch loads it. torch.set_num_threads covers torch's OpenMP kernels.
os.environ["OPENBLAS_NUM_THREADS"] = str(ARGS.threads)
os.environ["OMP_NUM_THREADS"] = str(ARGS.threads)

import torch  # noqa: E402

torch.set_num_threads(ARGS.threads)
torch.manual_seed(ARGS.seed)
T_IMPORTED = time.perf_counter()

ST_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}
SHORT = {"bf16": "BF16", "f16": "F16", "f32": "F32", "f64": "F64"}
PREFIX, SUF_A, SUF_B = "base_model.model.", ".lora_A.weight", ".lora_B.weight"


class Refused(Exception):
    pass


# ---------------------------------------------------------------- reading


def read_safetensors(path):
    """{name: (dtype string, tensor view)} over one bytearray holding the file."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        buf = bytearray(size)
        view, n = memoryview(buf), 0
        while n < size:
            got = f.readinto(view[n:])
            if not got:
                raise Refused(f"{path}: truncated")
            n += got
    if size < 8:
        raise Refused(f"{path}: shorter than 8 bytes")
    hlen = int.from_bytes(buf[:8], "little")
    if 8 + hlen > size:
        raise Refused(f"{path}: header length {hlen} past the end of the file")
    header = json.loads(bytes(buf[8:8 + hlen]).decode("utf-8"))
    base, out = 8 + hlen, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = ST_DTYPES.get(info["dtype"])
        if dt is None:
            raise Refused(f"{path}: {name}: dtype {info['dtype']} is not a float type we read")
        shape = [int(d) for d in info["shape"]]
        begin, end = (int(x) for x in info["data_offsets"])
        numel = math.prod(shape)
        itemsize = torch.empty((), dtype=dt).element_size()
        if end - begin != numel * itemsize or base + end > size:
            raise Refused(f"{path}: {name}: data_offsets do not match the shape")
        if numel == 0:
            raise Refused(f"{path}: {name}: empty tensor")
        t = torch.frombuffer(buf, dtype=dt, count=numel, offset=base + begin).view(shape)
        out[name] = (info["dtype"], t)
    return out


def suffix_match(keys, module):
    """Index of the first key (file order) matching `module` as a dotted suffix."""
    for i, k in enumerate(keys):
        if len(k) > 256 or len(module) > 512:
            raise Refused(f"pattern key or module name too long: {k[:40]}...")
        if re.fullmatch(r"(.*\.)?(" + k + r")", module):
            return i
    return None


def read_adapter(spec):
    """(task name, {module: (A view, B view, scale)}, set of dtype strings)."""
    name, _, d = spec.partition("=") if "=" in spec else (None, None, spec)
    d = d.rstrip("/")
    name = name or os.path.basename(d)
    with open(os.path.join(d, "adapter_config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    if cfg.get("peft_type", "LORA") != "LORA":
        raise Refused(f"{d}: peft_type is {cfg['peft_type']}, only LORA")
    if cfg.get("use_dora"):
        raise Refused(f"{d}: use_dora is true: DoRA adapters are not LoRA updates")
    r_default, alpha_default = int(cfg.get("r", 8)), float(cfg.get("lora_alpha", 8))
    rslora = bool(cfg.get("use_rslora", False))
    rank_pat = list((cfg.get("rank_pattern") or {}).items())
    alpha_pat = list((cfg.get("alpha_pattern") or {}).items())
    path = os.path.join(d, "adapter_model.safetensors")
    if not os.path.exists(path):
        raise Refused(f"{d}: no adapter_model.safetensors")
    tensors = read_safetensors(path)
    modules, dtypes = {}, set()
    for tname, (dts, t) in tensors.items():
        if not tname.startswith(PREFIX) or not (tname.endswith(SUF_A) or tname.endswith(SUF_B)):
            raise Refused(f"{path}: {tname} is not a LoRA factor")
        if not tname.endswith(SUF_A):
            continue
        mod = tname[len(PREFIX):-len(SUF_A)]
        bname = PREFIX + mod + SUF_B
        if bname not in tensors:
            raise Refused(f"{path}: {bname} missing")
        a, (bdt, b) = t, tensors[bname]
        if a.dim() != 2 or b.dim() != 2 or b.shape[1] != a.shape[0]:
            raise Refused(f"{path}: {mod}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not fit")
        r = a.shape[0]
        i = suffix_match([k for k, _ in rank_pat], mod)
        cfg_r = int(rank_pat[i][1]) if i is not None else r_default
        if cfg_r != r:
            raise Refused(f"{path}: {mod}: lora_A has rank {r} but adapter_config.json gives {cfg_r}")
        i = suffix_match([k for k, _ in alpha_pat], mod)
        alpha = float(alpha_pat[i][1]) if i is not None else alpha_default
        scale = alpha / math.sqrt(r) if rslora else alpha / r
        modules[mod] = (a, b, scale)
        dtypes.update({dts, bdt})
    if not modules:
        raise Refused(f"{path}: no LoRA factors")
    return name, modules, dtypes


def widest(dtypes):
    """hydraopt's rule: one dtype -> itself; F64 anywhere -> F64; else F32."""
    if len(dtypes) == 1:
        return next(iter(dtypes))
    return "F64" if "F64" in dtypes else "F32"


def natural_key(s):
    return [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", s)]


# ---------------------------------------------------------------- algebra


SOLVED = {"lowrank": 0, "gram": 0}  # modules per route, for the output line


def top_right_subspace(m, k):
    """Orthonormal V (in x k) spanning the top-k right singular subspace of m (P x in).

    Why two routes (and `auto` picking by size):

    `lowrank`: torch.svd_lowrank (randomised subspace iteration, Halko et al.
    Alg. 4.4/5.1, re-orthonormalised every step). At the benchmark shapes,
    P = sum of ranks (N r = 1280 for llama-1b, 640 for llama-7b), in = 2048..11008
    and k = r = 16..32, it costs ~2 (2 niter + 2) P in q flops with q = k +
    oversample, against 2 P^2 in for the Gram M M^T plus an O(P^3) float64 eigh
    (the poorly parallel part) for the exact route: measured on one core,
    0.2 s against 1.1 s per llama-1b module. The subspace is approximate.
    The *sum* of the weighted errors is stationary at the optimal V (second
    order in the subspace error), but one task's error is not (first order), so
    the per-task errors need a good subspace: torch's default niter = 2 with
    q = k + 10 is 2% off on the shipped real adapters, whose spectra decay
    slowly; niter = 4 with q = 2k + 10 stays within 1.4e-4 relative of the
    exact subspace's per-task errors there (5 seeds) and ~5e-6 on llama-1b.

    `gram`: the exact route, eigh of the smaller Gram (M M^T, P x P, or M^T M)
    in float64, V = M^T U / sigma re-orthonormalised by QR. For small modules
    (min(P, in) <= 512, e.g. the shipped adapters) it costs milliseconds and
    is what `auto` uses.
    """
    p, n = m.shape
    k = min(k, p, n)
    q = min(2 * k + 10 if ARGS.oversample < 0 else k + ARGS.oversample, p, n)
    lowrank = ARGS.solver == "lowrank" or (ARGS.solver == "auto" and min(p, n) > ARGS.exact_below)
    SOLVED["lowrank" if lowrank and q > k else "gram"] += 1
    if lowrank and q > k:
        _, _, v = torch.svd_lowrank(m, q=q, niter=ARGS.niter)
        return v[:, :k].contiguous()
    if n <= p:
        _, vecs = torch.linalg.eigh((m.T @ m).double())
        return vecs[:, -k:].flip(1).to(m.dtype).contiguous()
    _, vecs = torch.linalg.eigh((m @ m.T).double())
    u = vecs[:, -k:].flip(1).to(m.dtype)
    return torch.linalg.qr(m.T @ u).Q.contiguous()  # = V up to signs; QR restores orthonormality


def rank_groups(entries):
    """Task indices of one module grouped by rank: {r: [task index, ...]}."""
    g = {}
    for i, (a, _, _) in entries.items():
        g.setdefault(a.shape[0], []).append(i)
    return g


def main():
    cd = torch.float32 if ARGS.compute_dtype == "float32" else torch.float64
    t0 = time.perf_counter()
    names, per_task, all_dtypes = [], [], set()
    for spec in ARGS.adapters:
        name, mods, dts = read_adapter(spec)
        names.append(name)
        per_task.append(mods)
        all_dtypes |= dts
    if len(set(names)) != len(names):
        raise Refused("task names are not unique")
    t_read = time.perf_counter() - t0
    if ARGS.read_only:
        print(json.dumps({"tasks": len(names), "seconds_total": round(t_read, 4), "seconds_read": round(t_read, 4),
                          "seconds_import": round(T_IMPORTED - T_START, 4), "read_only": True}))
        return
    stored = widest(all_dtypes) if ARGS.dtype == "auto" else SHORT[ARGS.dtype]
    sd = ST_DTYPES[stored]

    # module -> {task index: (A, B, scale)}; shapes must agree across tasks.
    modules = {}
    for i, mods in enumerate(per_task):
        for mod, (a, b, s) in mods.items():
            e = modules.setdefault(mod, {})
            if e:
                a0, b0, _ = next(iter(e.values()))
                if a0.shape[1] != a.shape[1] or b0.shape[0] != b.shape[0]:
                    raise Refused(f"{mod}: shapes differ between tasks")
            e[i] = (a, b, s)
    order = sorted(modules, key=natural_key)
    n = len(names)

    def factors(entries, idx):
        """Batched s B (t x out x r) and A (t x r x in) in the compute dtype."""
        a = torch.stack([entries[i][0] for i in idx]).to(cd)
        sc = torch.tensor([entries[i][2] for i in idx], dtype=cd).view(-1, 1, 1)
        b = torch.stack([entries[i][1] for i in idx]).to(cd) * sc
        return b, a

    # Pass 1: ||dW_i||^2 per module = ||R_i A_i||^2 with s B_i = Q_i R_i; keep R_i.
    norm2 = torch.zeros(n, dtype=torch.float64)
    cores = {}  # (module, rank) -> R (t x r x r)
    for mod in order:
        for r, idx in rank_groups(modules[mod]).items():
            b, a = factors(modules[mod], idx)
            rr = torch.linalg.qr(b, mode="r").R  # t x min(out, r) x r
            cores[(mod, r)] = rr
            norm2[idx] += (rr @ a).square().sum(dim=(1, 2)).double()
    w = torch.where(norm2 > 0, 1.0 / norm2, torch.zeros_like(norm2))

    # Pass 2: shared body V per module, heads, errors after rounding.
    err2 = torch.zeros(n, dtype=torch.float64)
    out_tensors, params, original = {}, 0, 0
    for mod in order:
        entries = modules[mod]
        groups = rank_groups(entries)
        k = max(groups)
        some = next(iter(entries.values()))
        d_in, d_out = some[0].shape[1], some[1].shape[0]
        original += sum(r * (d_in + d_out) * len(idx) for r, idx in groups.items())
        batches = {r: factors(entries, idx) for r, idx in groups.items()}
        stack = torch.cat([(cores[(mod, r)] @ batches[r][1]
                            * w[idx].sqrt().to(cd).view(-1, 1, 1)).reshape(-1, d_in)
                           for r, idx in groups.items()])
        v = top_right_subspace(stack, k)  # in x k
        k = v.shape[1]
        v_st = v.to(sd)
        v_r = v_st.to(cd)
        params += k * d_in + n * k * d_out
        if ARGS.out:
            out_tensors[f"{mod}.hydra_body"] = v_st.T.contiguous()
        for r, idx in groups.items():
            b, a = batches[r]
            h_st = (b @ (a @ v)).to(sd)  # heads H_i = s B_i (A_i V), rounded as stored
            if ARGS.out:
                for j, i in enumerate(idx):
                    out_tensors[f"{mod}.hydra_head.{names[i]}"] = h_st[j]
            # dW - H V^T = [s B, H] [A; -V^T]: reduce the left factor to its QR
            # core and take the norm of a (r + k) x in product, which avoids
            # the cancellation of ||dW||^2 - 2<dW, H V^T> + ||H V^T||^2.
            left = torch.cat([b, h_st.to(cd)], dim=2)
            right = torch.cat([a, -v_r.T.expand(len(idx), k, d_in)], dim=1)
            s = torch.linalg.qr(left, mode="r").R
            err2[idx] += (s @ right).square().sum(dim=(1, 2)).double()
    rel = torch.where(norm2 > 0, (err2 / norm2).sqrt(), torch.zeros_like(norm2))
    if ARGS.out:
        write_safetensors(ARGS.out, out_tensors, {"method": "hydra", "peer": "bench/peers/hydra_torch.py"})
    t_total = time.perf_counter() - t0
    print(json.dumps({
        "tasks": n, "modules": len(order),
        "seconds_total": round(t_total, 4), "seconds_read": round(t_read, 4),
        "seconds_import": round(T_IMPORTED - T_START, 4),
        "mean_rel_error": rel.mean().item(),
        "rel_errors": {names[i]: rel[i].item() for i in range(n)},
        "stored_dtype": stored, "compute_dtype": ARGS.compute_dtype,
        "solver": ARGS.solver, "modules_per_solver": SOLVED, "niter": ARGS.niter, "oversample": ARGS.oversample,
        "threads": ARGS.threads, "params": params, "original_params": original,
        "fraction": params / original if original else None,
    }))


def write_safetensors(path, tensors, metadata):
    names = sorted(tensors)
    header, off = {"__metadata__": metadata}, 0
    rev = {v: k for k, v in ST_DTYPES.items()}
    for k in names:
        t = tensors[k]
        nb = t.numel() * t.element_size()
        header[k] = {"dtype": rev[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + nb]}
        off += nb
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for k in names:
            f.write(tensors[k].contiguous().view(torch.uint8).numpy().data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


if __name__ == "__main__":
    try:
        main()
    except Refused as e:
        print(f"hydra_torch.py: {e}", file=sys.stderr)
        sys.exit(2)
