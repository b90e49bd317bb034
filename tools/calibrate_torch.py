#!/usr/bin/python3
"""Calibration statistics from a PyTorch model, for models hydraopt cannot run.

`hydraopt calibrate` runs its own forward pass, which knows the tiny LLaMA
models of the benchmark only. This script writes the same statistics files
(docs/formats.md, "Calibration statistics") from any PyTorch model, for
`hydraopt merge --calibration DIR`: per task, the second moment
C = X^T X / rows of the inputs of every adapted linear module, with the
task's adapter applied, over all rows (tokens) of the task's examples,
kept as its top eigenpairs plus the remainder's diagonal.

Command line (a Hugging Face causal LM + a PEFT LoRA adapter; needs the
`transformers` and `peft` packages, imported only here):

    python3 tools/calibrate_torch.py --model MODEL_DIR --adapter ADAPTER_DIR \\
        --data TASK_DIR/calib.jsonl --task NAME -o OUT_DIR/NAME.safetensors \\
        [--examples 64] [--max-rank 256] [--tail 1e-3] [--batch-size 8] \\
        [--device cpu] [--dtype float32] [--encoding auto|bytes|tokenizer] \\
        [--template '{prompt}\\n{answer}']

  --data     JSON lines, one {"prompt": ..., "answer": ...} per line; the
             first --examples of them are run (teacher-forced: the answer is
             part of the input), every token's row counted.
  --task     the task's name, as `hydraopt merge` names it (the adapter
             directory's name by default); merge reads DIR/<task>.safetensors.
  --encoding bytes: hydraopt's byte-level models, bos + prompt bytes + sep +
             answer bytes + eos (ids from config.json: bos_token_id,
             sep_token_id, eos_token_id), exactly what `hydraopt calibrate`
             runs. tokenizer: the model's tokenizer on --template with the
             example's fields filled in, special tokens added, then eos.
             auto (default): bytes when config.json has a sep_token_id and
             the model directory has no tokenizer, else tokenizer. Use the
             format the adapter was trained on.
  Batches are right-padded; padding rows are not counted (attention_mask).

Run it once per task, then `hydraopt merge ADAPTERS... --calibration OUT_DIR`.

As a library (needs only torch and numpy):

    import calibrate_torch as ct
    sites = ct.collect(model, batches, module_names)
    ct.write("out/task.safetensors", "task", "base-model", len(examples), sites)

collect() runs model(batch) (model(**batch) for a dict, model(*batch) for a
tuple or list) under torch.no_grad() for every batch, with forward pre-hooks
on the named nn.Linear modules, and returns {site: (xtx, rows, modules)}:
X^T X summed in float64 over every row of every batch, the rows counted and
the modules reading that input. Modules whose inputs are one tensor object
within a forward call (q/k/v, gate/up) share a site, named after the first
of them in model order (model.named_modules()). Module names may be given as
the model names them or PEFT-stripped (without "base_model.model." and
".base_layer"); they are reported PEFT-stripped, as hydraopt names modules
("model.layers.0.self_attn.q_proj"). write() sketches each site's
C = xtx / rows exactly as hydraopt does (sketch()) and writes the file;
read() reads and checks one.
"""

import argparse
import json
import math
import os
import pathlib
import re
import struct
import sys
import tempfile

import numpy as np

FORMAT = "hydraopt-calibration"
VERSION = "1"
PEFT_PREFIX = "base_model.model."
PEFT_BASE_LAYER = ".base_layer"
ORTHO_TOLERANCE = 1e-3  # as src/io/calibration.cc


class CalibrationError(ValueError):
    """A statistics file or its inputs break the format's rules."""


# ---------------------------------------------------------------- module names

def peft_stripped(name):
    """The module name hydraopt uses: without PEFT's "base_model.model."
    prefix and ".base_layer" suffix."""
    if name.startswith(PEFT_PREFIX):
        name = name[len(PEFT_PREFIX):]
    if name.endswith(PEFT_BASE_LAYER):
        name = name[:-len(PEFT_BASE_LAYER)]
    return name


def _is_lora_part(raw_name):
    # PEFT's own submodules: lora_A / lora_B / lora_embedding_* / ...
    return any(part.startswith("lora_") for part in raw_name.split("."))


def linear_module_names(model, exclude=("lm_head",)):
    """PEFT-stripped names of every nn.Linear of the model, in model order,
    but PEFT's LoRA factors and modules whose stripped name is in `exclude`
    or ends with "." + one of them."""
    import torch.nn as nn
    out = []
    for raw, mod in model.named_modules():
        if not isinstance(mod, nn.Linear) or _is_lora_part(raw):
            continue
        name = peft_stripped(raw)
        if any(name == e or name.endswith("." + e) for e in exclude):
            continue
        if name not in out:
            out.append(name)
    return out


def _resolve(model, module_names):
    """[(order, reported name, module)] for the requested names, in model
    order; raw (model) names and PEFT-stripped names are both accepted."""
    import torch.nn as nn
    raw, stripped = {}, {}
    for i, (name, mod) in enumerate(model.named_modules()):
        raw[name] = (i, mod)
        if isinstance(mod, nn.Linear) and not _is_lora_part(name):
            stripped.setdefault(peft_stripped(name), (i, mod))
    out, seen = [], set()
    names = [module_names] if isinstance(module_names, str) else list(module_names)
    if not names:
        raise ValueError("collect: no module names given")
    for name in names:
        if name in raw and isinstance(raw[name][1], nn.Linear):
            i, mod = raw[name]
        elif name in stripped:
            i, mod = stripped[name]
        elif name in raw:
            raise ValueError(f"collect: module '{name}' is a {type(raw[name][1]).__name__}, not an nn.Linear")
        else:
            raise ValueError(f"collect: the model has no nn.Linear named '{name}'")
        reported = peft_stripped(name)
        if id(mod) in seen:
            raise ValueError(f"collect: module '{name}' is named twice")
        seen.add(id(mod))
        out.append((i, reported, mod))
    out.sort(key=lambda t: t[0])
    return out


# ---------------------------------------------------------------- collecting X^T X

def collect(model, batches, module_names, *, adapted=None, accumulate_device="cpu"):
    """Runs every batch through `model` and returns {site: (xtx, rows, modules)}.

    batches: an iterable; a dict is passed as model(**batch), a tuple or list
      as model(*batch), anything else as model(batch). A dict's
      "attention_mask" (same leading shape as the hooked inputs, e.g.
      [batch, tokens]) marks the rows counted: padding rows (mask 0) are not.
    module_names: the nn.Linear modules to watch (model or PEFT-stripped
      names); their inputs' X^T X is summed in float64 over all rows.
    adapted: if given, a collection of PEFT-stripped module names; sites none
      of whose modules is in it are left out (as `hydraopt calibrate` keeps
      the sites of the modules the adapter has). Their X^T X is then not
      computed after the first batch.
    accumulate_device: where the float64 sums live (default the CPU).

    A site is the set of watched modules that read one tensor object within
    a forward call (q/k/v read the attention norm's output); it is named
    after its first module in model order, and lists its modules in model
    order. Every batch must group the watched modules the same way, and every
    watched module must run exactly once per forward call. The watched
    inputs of one forward call are held until it returns (so that no id()
    is reused): about one batch's activations per watched site.
    """
    import torch

    watched = _resolve(model, module_names)
    order = {name: i for i, name, _ in watched}
    adapted = None if adapted is None else set(adapted)
    structure = None  # site -> tuple of modules, from the first batch
    skip = set()      # sites not kept (no adapted module), once structure is known
    skip_modules = set()  # their modules: inputs not summed from the second batch on
    sums = {}         # site -> [xtx, rows]
    state = {"groups": {}, "mask": None, "called": {}}

    def rows_of(x):
        if not torch.is_tensor(x):
            raise TypeError(f"collect: a watched module's input is a {type(x).__name__}, not a tensor")
        flat = x.detach().reshape(-1, x.shape[-1])
        mask = state["mask"]
        if mask is not None:
            if tuple(x.shape[:-1]) != tuple(mask.shape):
                raise ValueError(f"collect: attention_mask has shape {tuple(mask.shape)} but a watched "
                                 f"module's input is {tuple(x.shape)}")
            flat = flat[mask.reshape(-1).to(flat.device)]
        return flat

    def make_hook(name):
        def hook(module, args):
            if not args:
                raise ValueError(f"collect: module '{name}' was called without a positional input")
            x = args[0]
            if name in state["called"]:
                raise ValueError(f"collect: module '{name}' ran twice in one forward call")
            state["called"][name] = True
            g = state["groups"].get(id(x))
            if g is None:
                # Holding x keeps its id() from being reused within this call.
                g = {"x": x, "modules": [name], "xtx": None, "rows": 0}
                state["groups"][id(x)] = g
                if name not in skip_modules:
                    flat = rows_of(x).to(device=accumulate_device, dtype=torch.float64)
                    g["xtx"] = flat.T @ flat
                    g["rows"] = flat.shape[0]
            else:
                g["modules"].append(name)
        return hook

    handles = [mod.register_forward_pre_hook(make_hook(name)) for _, name, mod in watched]
    try:
        with torch.no_grad():
            for batch in batches:
                state["groups"], state["called"] = {}, {}
                state["mask"] = None
                if isinstance(batch, dict):
                    m = batch.get("attention_mask")
                    state["mask"] = None if m is None else m.detach() != 0
                    model(**batch)
                elif isinstance(batch, (tuple, list)):
                    model(*batch)
                else:
                    model(batch)
                groups = {}
                for g in state["groups"].values():
                    mods = tuple(sorted(g["modules"], key=lambda n: order[n]))
                    groups[mods[0]] = (mods, g)
                now = {site: mods for site, (mods, _) in groups.items()}
                if structure is None:
                    missing = [n for _, n, _ in watched if n not in state["called"]]
                    if missing:
                        raise ValueError("collect: watched modules did not run: " + ", ".join(missing))
                    structure = now
                    if adapted is not None:
                        skip = {s for s, mods in structure.items() if not any(m in adapted for m in mods)}
                        skip_modules = {m for s in skip for m in structure[s]}
                elif now != structure:
                    raise ValueError("collect: this batch grouped the watched modules' inputs differently "
                                     f"from the first batch ({sorted(now.items())} vs {sorted(structure.items())})")
                for site, (mods, g) in groups.items():
                    if site in skip:
                        continue
                    acc = sums.setdefault(site, [None, 0])
                    acc[0] = g["xtx"] if acc[0] is None else acc[0] + g["xtx"]
                    acc[1] += g["rows"]
                state["groups"] = {}
    finally:
        state["groups"], state["mask"] = {}, None
        for h in handles:
            h.remove()
    if structure is None:
        raise ValueError("collect: no batches")
    # With `adapted`, a site lists only the adapted modules among its readers
    # (as `hydraopt calibrate` does: merge --calibration refuses modules the
    # adapters lack); it keeps its name.
    def listed(site):
        return [m for m in structure[site] if adapted is None or m in adapted]
    return {site: (acc[0], acc[1], listed(site)) for site, acc in sorted(sums.items())}


# ---------------------------------------------------------------- the sketch

def sketch(c, max_rank=256, tail=1e-3):
    """(values [k], vectors [k, in], diagonal [in]), float64: the sketch of a
    dense second moment, the rule of src/io/calibration.cc's
    sketch_second_moment. c is made symmetric, its eigenvalues clamped at 0;
    the smallest are dropped while what is dropped (summed smallest first)
    stays within `tail` of the trace (summed in the same order); at most
    max_rank are kept; each eigenvector's largest entry (the first such) is
    made positive; diagonal = diag(c - V^T diag(values) V) clamped at 0."""
    c = np.asarray(c, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise CalibrationError(f"second moment is {' x '.join(map(str, c.shape))}, not square")
    if max_rank < 0:
        raise CalibrationError(f"sketch rank must be >= 0, got {max_rank}")
    if not (0 <= tail <= 1):
        raise CalibrationError(f"sketch tail must be in [0, 1], got {tail}")
    if not np.all(np.isfinite(c)):
        raise CalibrationError("second moment has non-finite entries")
    n = c.shape[0]
    if n == 0:
        return np.zeros(0), np.zeros((0, 0)), np.zeros(0)
    s = (c + c.T) / 2
    lam, vec = np.linalg.eigh(s)  # ascending, eigenvectors in columns
    lam = np.maximum(lam, 0.0)
    lst = [float(x) for x in lam]
    total = 0.0
    for x in lst:
        total += x
    dropped, k, j = 0.0, n, 0
    while j < n and dropped + lst[j] <= tail * total:
        dropped += lst[j]
        k -= 1
        j += 1
    k = min(k, int(max_rank))
    values = lam[::-1][:k].copy()
    vectors = np.ascontiguousarray(vec[:, ::-1][:, :k].T)
    for i in range(k):
        top = int(np.argmax(np.abs(vectors[i])))
        if vectors[i, top] < 0:
            vectors[i] *= -1
    kept = (vectors * vectors * values[:, None]).sum(axis=0) if k else np.zeros(n)
    diagonal = np.maximum(np.diag(s) - kept, 0.0)
    return values, vectors, diagonal


# ---------------------------------------------------------------- safetensors

def _header_json(meta, entries):
    # As src/io/safetensors.cc writes it: compact, no ASCII escaping,
    # __metadata__ first with its keys sorted, then the tensors by name.
    parts = ['"__metadata__":' + json.dumps({k: meta[k] for k in sorted(meta)}, ensure_ascii=False,
                                            separators=(",", ":"))]
    for name, info in entries:
        parts.append(json.dumps(name, ensure_ascii=False) + ":" + json.dumps(info, separators=(",", ":")))
    return "{" + ",".join(parts) + "}"


def safetensors_bytes(tensors, metadata):
    """A safetensors image: tensors {name: float32 array} in name order,
    metadata {str: str}; the header padded with spaces to a multiple of 8."""
    names = sorted(tensors, key=lambda n: n.encode("utf-8"))
    entries, blobs, offset = [], [], 0
    for name in names:
        if name == "__metadata__":
            raise CalibrationError("'__metadata__' is a reserved tensor name")
        a = np.ascontiguousarray(tensors[name], dtype="<f4")
        b = a.tobytes()
        entries.append((name, {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}))
        blobs.append(b)
        offset += len(b)
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise CalibrationError(f"metadata '{k}': keys and values must be strings")
    header = _header_json(metadata, entries).encode("utf-8")
    header += b" " * ((8 - len(header) % 8) % 8)
    return struct.pack("<Q", len(header)) + header + b"".join(blobs)


def parse_safetensors(data, label="<bytes>"):
    """(metadata, {name: (dtype, shape, bytes)}) from a safetensors image;
    checks the layout (no gaps, overlaps or trailing bytes)."""
    if len(data) < 8:
        raise CalibrationError(f"{label}: shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise CalibrationError(f"{label}: header length {n} runs past the end of the file")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CalibrationError(f"{label}: header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise CalibrationError(f"{label}: header is not a JSON object")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CalibrationError(f"{label}: __metadata__ is not an object of strings")
    body = data[8 + n:]
    sizes = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "U8": 1}
    tensors, spans = {}, []
    for name, info in header.items():
        dtype, shape, (b, e) = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in sizes:
            raise CalibrationError(f"{label}: {name}: dtype {dtype} is not supported")
        if e < b or (e - b) != math.prod(shape) * sizes[dtype]:
            raise CalibrationError(f"{label}: {name}: data_offsets do not match shape and dtype")
        tensors[name] = (dtype, list(shape), body[b:e])
        spans.append((b, e, name))
    pos = 0
    for b, e, name in sorted(spans):
        if b != pos:
            raise CalibrationError(f"{label}: {name}: {'gap before' if b > pos else 'overlaps'} this tensor")
        pos = e
    if pos != len(body):
        raise CalibrationError(f"{label}: tensors cover {pos} bytes but the data buffer has {len(body)}")
    return meta, tensors


# ---------------------------------------------------------------- statistics files

def _count(meta, key, label):
    s = meta[key]
    if not re.fullmatch(r"[0-9]+", s) or int(s) >= 2 ** 63:
        raise CalibrationError(f'{label}: metadata "{key}" is not a non-negative decimal integer below 2^63')
    return int(s)


def _parse_sites(text, label):
    class Repeated(Exception):
        pass

    def pairs(items):
        out = {}
        for k, v in items:
            if k in out:
                raise Repeated(k)
            out[k] = v
        return out
    try:
        j = json.loads(text, object_pairs_hook=pairs)
    except Repeated as e:
        raise CalibrationError(f"{label}: metadata \"sites\" lists site '{e.args[0]}' twice") from None
    except ValueError:
        raise CalibrationError(f'{label}: metadata "sites" is not valid JSON') from None
    if not isinstance(j, dict):
        raise CalibrationError(f'{label}: metadata "sites" is not a JSON object')
    site_of = {}
    for site, mods in j.items():
        if not site:
            raise CalibrationError(f'{label}: metadata "sites" has a site with an empty name')
        if not isinstance(mods, list) or not mods:
            raise CalibrationError(f"{label}: site '{site}' does not list module names")
        for m in mods:
            if not isinstance(m, str) or not m:
                raise CalibrationError(f"{label}: site '{site}' lists a non-string or empty name")
            if m in site_of:
                raise CalibrationError(f"{label}: module '{m}' is listed twice (sites '{site_of[m]}', '{site}')")
            site_of[m] = site
    return j


def parse(data, label="<bytes>"):
    """A statistics file's contents, checked as src/io/calibration.cc's reader
    checks them: {"task", "base_model", "examples", "rows", "sites": {site:
    {"modules", "values" [k], "vectors" [k, in], "diagonal" [in]}}} (float64
    arrays of the stored F32 values)."""
    meta, tensors = parse_safetensors(data, label)
    if meta.get("format") != FORMAT:
        raise CalibrationError(f'{label}: not calibration statistics (__metadata__ "format" is not "{FORMAT}")')
    for key in ("version", "task", "base_model", "examples", "rows", "sites"):
        if key not in meta:
            raise CalibrationError(f'{label}: metadata has no "{key}"')
    if meta["version"] != VERSION:
        raise CalibrationError(f"{label}: calibration format version '{meta['version']}' is not supported")
    if not meta["task"]:
        raise CalibrationError(f'{label}: metadata "task" is empty')
    out = {"task": meta["task"], "base_model": meta["base_model"],
           "examples": _count(meta, "examples", label), "rows": _count(meta, "rows", label), "sites": {}}
    listed = _parse_sites(meta["sites"], label)
    for name in tensors:
        site, _, part = name.rpartition(".")
        if not site or part not in ("values", "vectors", "diagonal"):
            raise CalibrationError(f"{label}: {name}: not a calibration tensor")
        if site not in listed:
            raise CalibrationError(f"{label}: {name}: site '{site}' is not listed in \"sites\"")
    for site, mods in listed.items():
        got = {}
        for part, rank in (("values", 1), ("vectors", 2), ("diagonal", 1)):
            t = tensors.get(f"{site}.{part}")
            if t is None:
                raise CalibrationError(f"{label}: {site}.{part}: missing")
            dtype, shape, raw = t
            if dtype != "F32" or len(shape) != rank:
                raise CalibrationError(f"{label}: {site}.{part}: not a {rank}-D F32 tensor")
            got[part] = np.frombuffer(raw, dtype="<f4").astype(np.float64).reshape(shape)
        k, n = got["values"].shape[0], got["diagonal"].shape[0]
        if n < 1 or k > n or got["vectors"].shape != (k, n):
            raise CalibrationError(f"{label}: site '{site}': shapes [k]={k}, [in]={n}, "
                                   f"vectors {list(got['vectors'].shape)} do not fit")
        for part, a in got.items():
            if not np.all(np.isfinite(a)):
                raise CalibrationError(f"{label}: {site}.{part}: non-finite values")
        if np.any(got["values"] < 0) or np.any(got["diagonal"] < 0):
            raise CalibrationError(f"{label}: site '{site}': a negative eigenvalue or diagonal entry")
        if np.any(np.diff(got["values"]) > 0):
            raise CalibrationError(f"{label}: {site}.values: not in descending order")
        if k and np.max(np.abs(got["vectors"] @ got["vectors"].T - np.eye(k))) > ORTHO_TOLERANCE:
            raise CalibrationError(f"{label}: {site}.vectors: rows are not orthonormal")
        out["sites"][site] = {"modules": list(mods), **got}
    return out


def read(path):
    """parse() of the file at `path`."""
    return parse(pathlib.Path(path).read_bytes(), str(path))


def dense(site):
    """V^T diag(values) V + diag(diagonal) of one site as parse() returns it."""
    v = site["vectors"]
    return v.T @ (site["values"][:, None] * v) + np.diag(site["diagonal"])


def write(path, task, base_model, examples, sites, max_rank=256, tail=1e-3):
    """Writes one task's statistics file (atomically: a temporary file in the
    same directory, renamed into place) from collect()'s {site: (xtx, rows,
    modules)}: each site's C = xtx / rows sketched by sketch(max_rank, tail).
    Metadata rows is the largest site's rows (every site of a model sees the
    same rows). The image is checked by parse() before anything is written."""
    path = pathlib.Path(path)
    if not isinstance(task, str) or not task:
        raise CalibrationError(f"{path}: the task's name is empty")
    if base_model is None:
        base_model = ""
    if not isinstance(examples, int) or isinstance(examples, bool) or not 0 <= examples < 2 ** 63:
        raise CalibrationError(f"{path}: examples must be an integer >= 0")
    tensors, listed, rows_max = {}, {}, 0
    for site, entry in sites.items():
        xtx, rows, modules = entry
        if not site:
            raise CalibrationError(f"{path}: a site with an empty name")
        if not isinstance(rows, int) or rows <= 0:
            raise CalibrationError(f"{path}: {site}: no input rows seen")
        if hasattr(xtx, "detach"):
            xtx = xtx.detach().cpu().double().numpy()
        values, vectors, diagonal = sketch(np.asarray(xtx, dtype=np.float64) / rows, max_rank, tail)
        tensors[site + ".values"] = values
        tensors[site + ".vectors"] = vectors
        tensors[site + ".diagonal"] = diagonal
        listed[site] = list(modules)
        rows_max = max(rows_max, rows)
    meta = {"format": FORMAT, "version": VERSION, "task": task, "base_model": base_model,
            "examples": str(examples), "rows": str(rows_max),
            "sites": json.dumps({s: listed[s] for s in sorted(listed)}, ensure_ascii=False,
                                separators=(",", ":"))}
    try:
        data = safetensors_bytes(tensors, meta)
        parse(data, str(path))
    except UnicodeEncodeError:
        raise CalibrationError(f"{path}: a name is not valid UTF-8") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# ---------------------------------------------------------------- command line (Hugging Face)

def _require(module, what):
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as e:
        sys.exit(f"calibrate_torch.py: {what} needs the Python package '{module}', which "
                 f"{sys.executable} cannot import ({e}); install it (pip install transformers peft). "
                 "collect() and write() as a library need only torch and numpy.")


def _load_examples(path, limit):
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                j = json.loads(line)
                out.append((j["prompt"], j["answer"]))
            except (ValueError, KeyError, TypeError) as e:
                sys.exit(f"calibrate_torch.py: {path}: line {n}: {e}")
            if limit > 0 and len(out) >= limit:
                break
    if not out:
        sys.exit(f"calibrate_torch.py: {path}: no examples")
    return out


def _adapted_modules(adapter_dir):
    """PEFT-stripped names of the modules the adapter file holds factors for."""
    data = (pathlib.Path(adapter_dir) / "adapter_model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    names = set()
    for key in json.loads(data[8:8 + n]):
        m = re.fullmatch(r"(?:base_model\.model\.)?(.*)\.lora_[AB](?:\.[^.]+)?\.weight", key)
        if m:
            names.add(m.group(1))
    return names


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="calibrate_torch.py",
        description="Writes a hydraopt calibration statistics file for one task from a Hugging Face "
                    "causal LM with a PEFT LoRA adapter applied (needs transformers and peft).",
        epilog="See the docstring at the top of this file; the format is in docs/formats.md.")
    p.add_argument("--model", required=True, help="Hugging Face model directory (or hub id)")
    p.add_argument("--adapter", required=True, help="PEFT LoRA adapter directory")
    p.add_argument("--data", required=True, help="JSON lines of {\"prompt\", \"answer\"} (e.g. calib.jsonl)")
    p.add_argument("--task", help="task name written to the file (default: the adapter directory's name)")
    p.add_argument("-o", "--output", required=True, help="statistics file to write (DIR/<task>.safetensors)")
    p.add_argument("--examples", type=int, default=64, help="first N examples (default 64; 0: all)")
    p.add_argument("--max-rank", type=int, default=256, help="eigenpairs kept per site at most (default 256)")
    p.add_argument("--tail", type=float, default=1e-3, help="share of the trace left to the diagonal (1e-3)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (default 8)")
    p.add_argument("--device", default="cpu", help="torch device for the model (default cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16", "float64"],
                   help="the model's dtype (default float32); sums are float64 regardless")
    p.add_argument("--encoding", default="auto", choices=["auto", "bytes", "tokenizer"],
                   help="bytes: hydraopt's byte-level models; tokenizer: the model's tokenizer (default auto)")
    p.add_argument("--template", default="{prompt}\n{answer}",
                   help="with --encoding tokenizer: the text of one example (default '{prompt}\\n{answer}')")
    a = p.parse_args(argv)
    if a.examples < 0 or a.batch_size <= 0 or a.max_rank < 0 or not 0 <= a.tail <= 1:
        p.error("--examples >= 0, --batch-size > 0, --max-rank >= 0 and --tail in [0, 1]")
    import torch
    transformers = _require("transformers", "the command line")
    peft = _require("peft", "the command line")

    adapter_dir = pathlib.Path(a.adapter)
    cfg_path = adapter_dir / "adapter_config.json"
    if not cfg_path.is_file() or not (adapter_dir / "adapter_model.safetensors").is_file():
        sys.exit(f"calibrate_torch.py: {adapter_dir}: not a PEFT adapter directory "
                 "(adapter_config.json + adapter_model.safetensors)")
    adapter_cfg = json.loads(cfg_path.read_text())
    task = a.task or adapter_dir.resolve().name
    examples = _load_examples(a.data, a.examples)

    model_dir = pathlib.Path(a.model)
    model_cfg = json.loads((model_dir / "config.json").read_text()) if (model_dir / "config.json").is_file() else {}
    encoding = a.encoding
    if encoding == "auto":
        has_tok = any((model_dir / f).exists() for f in ("tokenizer.json", "tokenizer_config.json",
                                                          "tokenizer.model"))
        encoding = "bytes" if "sep_token_id" in model_cfg and not has_tok else "tokenizer"
    if encoding == "bytes":
        try:
            bos, sep, eos = (int(model_cfg[k]) for k in ("bos_token_id", "sep_token_id", "eos_token_id"))
        except (KeyError, TypeError, ValueError):
            sys.exit("calibrate_torch.py: --encoding bytes needs bos_token_id, sep_token_id and eos_token_id "
                     f"in {model_dir / 'config.json'}")
        seqs = [[bos, *prompt.encode("utf-8"), sep, *answer.encode("utf-8"), eos] for prompt, answer in examples]
        pad = int(model_cfg.get("pad_token_id") or 0)
    else:
        tok = transformers.AutoTokenizer.from_pretrained(a.model)
        seqs = []
        for prompt, answer in examples:
            ids = list(tok(a.template.format(prompt=prompt, answer=answer), add_special_tokens=True)["input_ids"])
            if tok.eos_token_id is not None and (not ids or ids[-1] != tok.eos_token_id):
                ids.append(tok.eos_token_id)
            seqs.append(ids)
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    limit = model_cfg.get("max_position_embeddings")
    if limit and max(map(len, seqs)) > limit:
        sys.exit(f"calibrate_torch.py: a sequence of {max(map(len, seqs))} tokens exceeds the model's "
                 f"max_position_embeddings ({limit})")

    dtype = getattr(torch, a.dtype)
    model = transformers.AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=dtype)
    model = peft.PeftModel.from_pretrained(model, str(adapter_dir))
    model.to(a.device).eval()

    def batches():
        for b in range(0, len(seqs), a.batch_size):
            chunk = seqs[b:b + a.batch_size]
            width = max(map(len, chunk))
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, s in enumerate(chunk):  # right padding: positions stay 0.. for the real tokens
                ids[i, :len(s)] = torch.tensor(s)
                mask[i, :len(s)] = 1
            yield {"input_ids": ids.to(a.device), "attention_mask": mask.to(a.device), "use_cache": False}

    adapted = _adapted_modules(adapter_dir)
    names = linear_module_names(model)
    if not adapted & set(names):
        sys.exit(f"calibrate_torch.py: none of the adapter's modules is an nn.Linear of the model "
                 f"(adapter: {sorted(adapted)[:3]}..., model: {names[:3]}...)")
    sites = collect(model, batches(), names, adapted=adapted)
    write(a.output, task, adapter_cfg.get("base_model_name_or_path") or "", len(examples), sites,
          max_rank=a.max_rank, tail=a.tail)
    print(f"calibrate_torch.py: {task}: {len(sites)} sites, {len(examples)} examples -> {a.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
