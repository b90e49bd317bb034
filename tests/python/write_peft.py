#!/usr/bin/python3
"""Independent writer of PEFT LoRA adapter directories, for interop tests.

    /usr/bin/python3 write_peft.py OUT_DIR --case NAME [--seed N]

writes several adapter directories OUT_DIR/<task>/{adapter_config.json,
adapter_model.safetensors} for the named case, and OUT_DIR/expected.json
with what a correct reader must find in them, computed here with numpy in
float64 from the exact values stored (after rounding to each tensor's dtype).

Deliberately shares no code with hydraopt: the safetensors bytes are
produced by hand (u64 little-endian header length, JSON header, raw
row-major little-endian data), bf16 is rounded to nearest-even by hand from
float32 bits, f16 goes through numpy.float16, and PEFT's rank_pattern /
alpha_pattern matching is Python's own `re`, as in peft.utils.other.
get_pattern_key (first key in dict order whose `(.*\\.)?(key)$` matches).

expected.json:
  {"case": NAME,
   "tasks": [{"name", "dir", "rank", "alpha", "use_rslora", "dtype",
              "params", "modules",
              "module_info": {MODULE: {"in", "out", "rank", "alpha", "scale",
                                       "dtype", "A": [[...]], "B": [[...]]}}}],
   "modules": [{"name", "in", "out", "ranks", "tasks", "min_rank",
                "max_rank", "similarity_A", "similarity_B"}],   # natural order
   "dtype": widest dtype over the set, "params": total}
A similarity is null when fewer than two tasks have the module.
"""

import argparse
import json
import math
import os
import re
import struct
import sys

try:
    import numpy as np
except ImportError:  # the C++ test turns this into a failure with this text
    sys.stderr.write("write_peft.py: numpy is required (apt install python3-numpy) but "
                     "cannot be imported by %s\n" % sys.executable)
    sys.exit(3)

PREFIX = "base_model.model."
BASE_MODEL = "hydraopt-tests/interop-tiny"

# (in, out) of each kind of module: hidden 16, v out 8 (grouped KV), MLP 32.
SHAPES = {"q_proj": (16, 16), "k_proj": (16, 8), "v_proj": (16, 8), "o_proj": (16, 16),
          "down_proj": (32, 16)}


def module_shape(module):
    return SHAPES[module.rsplit(".", 1)[-1]]


# ---------------------------------------------------------------- dtypes

def bf16_round(values):
    """float64 array -> (uint16 bf16 bits, float64 values they hold).

    Goes through float32 (as torch does when casting), then keeps the top 16
    bits rounded to nearest, ties to even."""
    f32 = np.ascontiguousarray(values, dtype=np.float64).astype(np.float32)
    if not np.all(np.isfinite(f32)):
        raise ValueError("bf16_round: non-finite value")
    bits = f32.view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    if np.any(rounded > 0xFFFF) or np.any((rounded & 0x7F80) == 0x7F80):
        raise ValueError("bf16_round: overflow")
    h = rounded.astype(np.uint16)
    back = (h.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return h, back


def self_check_bf16():
    # 1 + 2^-8 is halfway between 1 and 1 + 2^-7: the even neighbour is 1.
    # 1 + 3*2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even).
    # 1 + 2^-8 + 2^-20 is just above the tie: rounds up.
    x = np.array([1 + 2.0**-8, 1 + 3 * 2.0**-8, 1 + 2.0**-8 + 2.0**-20, -(1 + 2.0**-8), 1e-39])
    h, back = bf16_round(x)
    assert list(back[:4]) == [1.0, 1 + 2.0**-6, 1 + 2.0**-7, -1.0], back
    assert list(h[:4]) == [0x3F80, 0x3F82, 0x3F81, 0xBF80], [hex(v) for v in h]
    assert back[4] != 0 and abs(back[4] - 1e-39) <= 2.0**-134  # bf16 subnormal: spacing 2^-133


def encode(values, dtype):
    """float64 matrix -> (little-endian row-major bytes, float64 stored values)."""
    values = np.ascontiguousarray(values, dtype=np.float64)
    if dtype == "F64":
        return values.astype("<f8").tobytes(order="C"), values.copy()
    if dtype == "F32":
        v = values.astype("<f4")
        return v.tobytes(order="C"), v.astype(np.float64)
    if dtype == "F16":
        v = values.astype(np.float16)
        if not np.all(np.isfinite(v)):
            raise ValueError("F16 overflow")
        return v.astype("<f2").tobytes(order="C"), v.astype(np.float64)
    if dtype == "BF16":
        h, back = bf16_round(values)
        return h.astype("<u2").tobytes(order="C"), back
    raise ValueError("unknown dtype " + dtype)


DTYPE_SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}


def dtype_widest(a, b):
    # F64 > F32 > {BF16, F16}; BF16 and F16 together need F32.
    if a == b:
        return a
    if "F64" in (a, b):
        return "F64"
    return "F32"


# ----------------------------------------------------------- safetensors

def safetensors_bytes(tensors, header_order, data_order, metadata=None,
                      metadata_position=0, pad_to=None, pretty=False):
    """tensors: name -> (dtype, shape, bytes). Tensors appear in the header in
    `header_order` and in the data buffer in `data_order`."""
    assert sorted(header_order) == sorted(tensors) == sorted(data_order)
    offsets = {}
    pos = 0
    for name in data_order:
        dtype, shape, raw = tensors[name]
        assert len(raw) == DTYPE_SIZE[dtype] * math.prod(shape)
        offsets[name] = (pos, pos + len(raw))
        pos += len(raw)
    header = {}
    for i, name in enumerate(header_order):
        if metadata is not None and i == metadata_position:
            header["__metadata__"] = metadata
        dtype, shape, _ = tensors[name]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets[name])}
    if metadata is not None and metadata_position >= len(header_order):
        header["__metadata__"] = metadata
    text = json.dumps(header, indent=1 if pretty else None,
                      separators=None if pretty else (",", ":")).encode("utf-8")
    if pad_to:
        text += b" " * (-len(text) % pad_to)
    out = bytearray(struct.pack("<Q", len(text)))
    out += text
    for name in data_order:
        out += tensors[name][2]
    return bytes(out)


# ------------------------------------------------------------------ PEFT

def pattern_key(keys, module):
    """peft.utils.other.get_pattern_key: first key whose regex matches."""
    for key in keys:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return None


def natural_key(s):
    parts = re.split(r"(\d+)", s)
    return [int(p) if i % 2 else p for i, p in enumerate(parts)]


def orthonormal_basis(m):
    """Orthonormal basis of the column space of m (n x r, full column rank)."""
    m = np.asarray(m, dtype=np.float64)
    s = np.linalg.svd(m, compute_uv=False)
    if m.shape[1] > m.shape[0] or s[-1] <= 1e-6 * s[0]:
        raise ValueError("factor is not of full, well-conditioned rank: singular values %s" % s)
    q, _ = np.linalg.qr(m)
    return q


def mean_pairwise_similarity(bases):
    if len(bases) < 2:
        return None
    total, pairs = 0.0, 0
    for i in range(len(bases)):
        for j in range(i):
            qi, qj = bases[i], bases[j]
            total += float(np.sum((qi.T @ qj) ** 2)) / min(qi.shape[1], qj.shape[1])
            pairs += 1
    return total / pairs


class Task:
    def __init__(self, name, modules, r, alpha, dtype="F32", rslora=False, rank_pattern=None,
                 alpha_pattern=None, target_modules=("q_proj", "v_proj"), dtype_B=None,
                 metadata=None, metadata_position=0, pad_to=8, pretty=False):
        self.name = name
        self.modules = list(modules)
        self.r = r
        self.alpha = alpha
        self.dtype_A = dtype
        self.dtype_B = dtype_B or dtype
        self.rslora = rslora
        self.rank_pattern = dict(rank_pattern or {})
        self.alpha_pattern = dict(alpha_pattern or {})
        self.target_modules = list(target_modules)
        self.metadata = metadata
        self.metadata_position = metadata_position
        self.pad_to = pad_to
        self.pretty = pretty

    def module_rank(self, module):
        key = pattern_key(self.rank_pattern, module)
        return self.rank_pattern[key] if key is not None else self.r

    def module_alpha(self, module):
        key = pattern_key(self.alpha_pattern, module)
        return self.alpha_pattern[key] if key is not None else self.alpha

    def config(self):
        return {
            "alpha_pattern": self.alpha_pattern,
            "auto_mapping": None,
            "base_model_name_or_path": BASE_MODEL,
            "bias": "none",
            "fan_in_fan_out": False,
            "inference_mode": True,
            "init_lora_weights": True,
            "layers_pattern": None,
            "layers_to_transform": None,
            "lora_alpha": self.alpha,
            "lora_dropout": 0.05,
            "modules_to_save": None,
            "peft_type": "LORA",
            "r": self.r,
            "rank_pattern": self.rank_pattern,
            "revision": None,
            "target_modules": self.target_modules,
            "task_type": "CAUSAL_LM",
            "use_dora": False,
            "use_rslora": self.rslora,
        }


def permutation_not_sorted(items, rng):
    items = list(items)
    order = [items[i] for i in rng.permutation(len(items))]
    if len(order) > 1 and (order == sorted(order) or order == sorted(order, reverse=True)):
        order = order[1:] + order[:1]
    return order


def write_case(out_dir, case, tasks, factors, seed):
    """factors(task, module, rank, rng) -> (A r x in, B out x r) in float64."""
    rng = np.random.default_rng(seed + 1000)
    os.makedirs(out_dir, exist_ok=True)
    expected_tasks = []
    stored = {}  # (task, module) -> (A, B) as stored
    for t in tasks:
        tdir = os.path.join(out_dir, t.name)
        os.makedirs(tdir, exist_ok=True)
        with open(os.path.join(tdir, "adapter_config.json"), "w") as f:
            json.dump(t.config(), f, indent=2)
        tensors = {}
        info = {}
        task_dtype = None
        params = 0
        for module in t.modules:
            n_in, n_out = module_shape(module)
            r = t.module_rank(module)
            A, B = factors(t, module, r, rng)
            assert A.shape == (r, n_in) and B.shape == (n_out, r)
            rawA, A = encode(A, t.dtype_A)
            rawB, B = encode(B, t.dtype_B)
            orthonormal_basis(A.T)  # checks the stored factors have full rank
            orthonormal_basis(B)
            tensors[PREFIX + module + ".lora_A.weight"] = (t.dtype_A, (r, n_in), rawA)
            tensors[PREFIX + module + ".lora_B.weight"] = (t.dtype_B, (n_out, r), rawB)
            stored[(t.name, module)] = (A, B)
            alpha = t.module_alpha(module)
            scale = alpha / math.sqrt(r) if t.rslora else alpha / r
            mdtype = dtype_widest(t.dtype_A, t.dtype_B)
            task_dtype = mdtype if task_dtype is None else dtype_widest(task_dtype, mdtype)
            params += r * (n_in + n_out)
            info[module] = {"in": n_in, "out": n_out, "rank": r, "alpha": float(alpha),
                            "scale": scale, "dtype": mdtype, "A": A.tolist(), "B": B.tolist()}
        header_order = permutation_not_sorted(tensors, rng)
        data_order = permutation_not_sorted(tensors, rng)
        if data_order == header_order:
            data_order = data_order[::-1]
        blob = safetensors_bytes(tensors, header_order, data_order, metadata=t.metadata,
                                 metadata_position=t.metadata_position, pad_to=t.pad_to,
                                 pretty=t.pretty)
        with open(os.path.join(tdir, "adapter_model.safetensors"), "wb") as f:
            f.write(blob)
        expected_tasks.append({"name": t.name, "dir": t.name, "rank": t.r, "alpha": float(t.alpha),
                               "use_rslora": t.rslora, "dtype": task_dtype, "params": params,
                               "modules": len(t.modules), "module_info": info})

    names = sorted({m for t in tasks for m in t.modules}, key=natural_key)
    expected_modules = []
    for module in names:
        n_in, n_out = module_shape(module)
        ranks, qa, qb = [], [], []
        for t in tasks:
            if module in t.modules:
                A, B = stored[(t.name, module)]
                ranks.append(A.shape[0])
                qa.append(orthonormal_basis(A.T))
                qb.append(orthonormal_basis(B))
            else:
                ranks.append(0)
        present = [r for r in ranks if r > 0]
        expected_modules.append({
            "name": module, "in": n_in, "out": n_out, "ranks": ranks, "tasks": len(present),
            "min_rank": min(present), "max_rank": max(present),
            "similarity_A": mean_pairwise_similarity(qa),
            "similarity_B": mean_pairwise_similarity(qb)})
    widest = None
    for e in expected_tasks:
        widest = e["dtype"] if widest is None else dtype_widest(widest, e["dtype"])
    expected = {"case": case, "tasks": expected_tasks, "modules": expected_modules,
                "dtype": widest, "params": sum(e["params"] for e in expected_tasks)}
    with open(os.path.join(out_dir, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, allow_nan=False)


# ----------------------------------------------------------------- cases

def layers(ids, kinds=("q_proj", "v_proj")):
    return ["model.layers.%d.self_attn.%s" % (i, k) for i in ids for k in kinds]


def shared_a_factors(seed, noise=0.15):
    """A's share a per-module base (high similarity_A); B's are independent."""
    base_rng = np.random.default_rng(seed)
    bases = {}

    def factors(task, module, r, rng):
        n_in, n_out = module_shape(module)
        if module not in bases:
            bases[module] = base_rng.standard_normal((16, n_in)) / math.sqrt(n_in)
        A = bases[module][:r] + noise * rng.standard_normal((r, n_in)) / math.sqrt(n_in)
        B = 0.05 * rng.standard_normal((n_out, r))
        return A, B
    return factors


def case_basic(out_dir, seed):
    mods = layers([0, 1])
    tasks = [Task("task_a", mods, 4, 8, metadata={"format": "pt"}),
             Task("task_b", mods, 4, 8, pad_to=None, pretty=True),
             Task("task_c", mods, 4, 8, metadata={"format": "pt", "note": "ünïcode ✓"},
                  metadata_position=3, pad_to=None)]
    write_case(out_dir, "basic", tasks, shared_a_factors(seed), seed)


def case_dtypes(out_dir, seed):
    mods = layers([0, 1])
    tasks = [Task("f32", mods, 4, 16, dtype="F32"),
             Task("f16", mods, 4, 16, dtype="F16", pad_to=None),  # unaligned data buffer
             Task("bf16", mods, 4, 16, dtype="BF16", metadata={"format": "pt"}, pad_to=None),
             Task("f64", mods, 4, 16, dtype="F64", pad_to=None, pretty=True),
             Task("mixed", mods, 4, 16, dtype="BF16", dtype_B="F16", metadata_position=2,
                  metadata={"format": "pt"})]
    inner = shared_a_factors(seed, noise=0.3)

    def factors(task, module, r, rng):
        A, B = inner(task, module, r, rng)
        if task.dtype_A == "BF16":
            # exact ties (round to even both ways), just above a tie, and a
            # value that is subnormal in float32 and bf16
            A[0, :4] = [1 + 2.0**-8, 1 + 3 * 2.0**-8, -(1 + 2.0**-8 + 2.0**-20), 1e-39]
        if task.dtype_B == "F16":
            B[0, 0] = 3e-6       # f16 subnormal
            B[-1, -1] = -6.1e-5  # near the smallest normal f16
        return A, B
    write_case(out_dir, "dtypes", tasks, factors, seed)


def case_patterns(out_dir, seed):
    mods = layers([0, 1, 2, 11])
    tasks = [
        # layers.11.q_proj: "1.self_attn.q_proj" is a plain suffix of its name
        # but not a dot-separated one, so "q_proj" applies (6, not 2);
        # layers.0.q_proj: "q_proj" comes first, so 6, not the exact key's 3.
        Task("first_match", mods, 4, 8,
             rank_pattern={"1.self_attn.q_proj": 2, "q_proj": 6, "model.layers.0.self_attn.q_proj": 3},
             alpha_pattern={"layers.11.self_attn.q_proj": 3, "self_attn.q_proj": 5, "v_proj": 2.5,
                            "layers.1.self_attn.v_proj": 7}),
        Task("rslora", mods, 8, 16, rslora=True, dtype="F64",
             rank_pattern={"v_proj": 2, "model.layers.1.self_attn.v_proj": 5,
                           r"layers\.1[0-9]\.self_attn\.q_proj": 3},
             alpha_pattern={r"layers\.(0|2)\.self_attn\.[qv]_proj": 4}),
        # None of these rank keys matches a dot-separated suffix.
        Task("anchored", mods, 4, 4, metadata={"format": "pt"},
             rank_pattern={"proj": 7, "layers.1.self_attn": 7, "attn.q_proj": 7, "layers.1": 7},
             alpha_pattern={"_proj": 9, r"model\.layers\.2\..*": 6, "1.self_attn.v_proj": 11}),
    ]
    write_case(out_dir, "patterns", tasks, shared_a_factors(seed, noise=0.5), seed)


def case_missing_module(out_dir, seed):
    mods = layers([0, 1])
    tasks = [Task("a", mods + ["model.layers.0.mlp.down_proj"], 4, 8,
                  target_modules=["q_proj", "v_proj", "down_proj"]),
             Task("b", mods, 2, 4, metadata={"format": "pt"}),
             Task("c", [m for m in mods if m != "model.layers.1.self_attn.v_proj"], 4, 8,
                  dtype="F64", pad_to=None)]
    write_case(out_dir, "missing_module", tasks, shared_a_factors(seed, noise=0.4), seed)


CASES = {"basic": case_basic, "dtypes": case_dtypes, "patterns": case_patterns,
         "missing_module": case_missing_module}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--case", required=True, choices=sorted(CASES))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    self_check_bf16()
    CASES[args.case](args.out_dir, args.seed)


if __name__ == "__main__":
    main()
