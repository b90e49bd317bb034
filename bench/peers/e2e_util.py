#!/usr/bin/python3
"""Helpers of bench/e2e.sh (standard library only).

  e2e_util.py shapes ADAPTER_DIR...
      Reads only the safetensors headers and prints shell assignments:
      TASKS (N), MODULES, INPUT_BYTES (sum of adapter_model.safetensors sizes),
      ONE_OVER_N, and HYDRA_FRACTION = sum_m (r_m in_m + N r_m out_m) /
      sum_m (N r_m (in_m + out_m)), the storage of one shared body (r x in) and
      N heads (out x r) per module as a fraction of the N adapters (r_m = the
      module's largest rank, as `hydraopt merge --method hydra` uses;
      with equal ranks the denominator is the original LoRA parameter count).

  e2e_util.py table ROWS.tsv OUT.md [HEADER.md]
      Turns the rows collected by e2e.sh (tab-separated: preset, label, exit
      code, /usr/bin/time -v file, JSON with the errors or "-", input bytes,
      command line) into the Markdown table, appends the peer/hydraopt ratios
      and the agreement of the peer's per-task errors with hydraopt's, prints
      it and writes it to OUT.md (after HEADER.md if given).
"""
import json
import os
import re
import sys


def header_of(path):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(n))


def shapes(dirs):
    mods, size = {}, 0
    for d in dirs:
        p = os.path.join(d, "adapter_model.safetensors")
        size += os.path.getsize(p)
        h = header_of(p)
        for name, info in h.items():
            if not name.endswith(".lora_A.weight"):
                continue
            m = name[: -len(".lora_A.weight")]
            r, d_in = info["shape"]
            d_out = h[m + ".lora_B.weight"]["shape"][0]
            e = mods.setdefault(m, {"in": d_in, "out": d_out, "r": 0})
            e["r"] = max(e["r"], r)
    n = len(dirs)
    num = sum(e["r"] * e["in"] + n * e["r"] * e["out"] for e in mods.values())
    den = sum(n * e["r"] * (e["in"] + e["out"]) for e in mods.values())
    print(f"TASKS={n}")
    print(f"MODULES={len(mods)}")
    print(f"INPUT_BYTES={size}")
    print(f"ONE_OVER_N={1.0 / n:.10g}")
    print(f"HYDRA_FRACTION={num / den:.10g}")


def parse_time(path):
    """(wall s, user+sys s, peak RSS KiB) from /usr/bin/time -v, or Nones."""
    wall = cpu = rss = None
    try:
        text = open(path).read()
    except OSError:
        return wall, cpu, rss
    u = re.search(r"User time \(seconds\): ([\d.]+)", text)
    s = re.search(r"System time \(seconds\): ([\d.]+)", text)
    if u and s:
        cpu = float(u.group(1)) + float(s.group(1))
    m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    if m:
        parts = [float(x) for x in m.group(1).split(":")]
        wall = sum(x * 60 ** i for i, x in enumerate(reversed(parts)))
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if m:
        rss = int(m.group(1))
    return wall, cpu, rss


def load_json(path):
    if path in ("-", ""):
        return None
    try:
        text = open(path).read()
    except OSError:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        lines = text.strip().splitlines()
        try:
            return json.loads(lines[-1]) if lines else None
        except json.JSONDecodeError:
            return None


def errors(doc):
    if not doc:
        return None
    if "rel_errors" in doc:
        return doc["rel_errors"]
    if isinstance(doc.get("tasks"), list):
        return {t["name"]: t["rel_error"] for t in doc["tasks"]}
    return None


def fmt(x, nd=2):
    return "" if x is None else f"{x:.{nd}f}"


def table(rows_path, out_path, header_path=None):
    rows = []
    with open(rows_path) as f:
        for line in f:
            if line.strip():
                preset, label, rc, tfile, jfile, ibytes, cmd = line.rstrip("\n").split("\t")
                rows.append(dict(preset=preset, label=label, rc=int(rc), tfile=tfile, jfile=jfile,
                                 ibytes=int(ibytes), cmd=cmd))
    lines = ["| preset | command | wall s | CPU s | peak RSS MiB | input MiB | RSS % of input | mean rel. error |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    by = {}
    for r in rows:
        wall, cpu, rss = parse_time(r["tfile"])
        doc = load_json(r["jfile"]) if r["rc"] == 0 else None
        err = doc.get("mean_rel_error") if doc else None
        imib = r["ibytes"] / 2**20
        r.update(wall=wall, cpu=cpu, rss=rss, doc=doc)
        by[(r["preset"], r["label"])] = r
        if r["rc"] in (124, 137):
            status = f"timeout"
            lines.append(f"| {r['preset']} | {r['label']} | {status} | | | {imib:.1f} | | |")
            continue
        if r["rc"] != 0:
            lines.append(f"| {r['preset']} | {r['label']} | failed (exit {r['rc']}) | | | {imib:.1f} | | |")
            continue
        rmib = rss / 1024 if rss is not None else None
        pct = 100 * rmib / imib if rmib is not None and imib > 0 else None
        lines.append(f"| {r['preset']} | {r['label']} | {fmt(wall)} | {fmt(cpu)} | {fmt(rmib, 1)} | {imib:.1f} | "
                     f"{fmt(pct, 1)} | {'' if err is None else f'{err:.6g}'} |")
    notes = [""]
    for preset in dict.fromkeys(r["preset"] for r in rows):
        h = by.get((preset, "hydraopt merge --method hydra"))
        p = by.get((preset, "peer hydra_torch.py (hydra point)"))
        if not h or not p:
            continue
        if h["rc"] == 0 and p["rc"] == 0 and h["wall"] and p["wall"]:
            notes.append(f"- {preset}, hydra point, peer / hydraopt: wall {p['wall'] / h['wall']:.2f}x, "
                         f"CPU {p['cpu'] / h['cpu']:.2f}x, peak RSS {p['rss'] / h['rss']:.2f}x.")
        else:
            notes.append(f"- {preset}, hydra point, peer / hydraopt: n/a (exit {p['rc']} / {h['rc']}).")
        eh, ep = errors(h["doc"]), errors(p["doc"])
        if eh and ep and set(eh) == set(ep):
            worst = max(abs(ep[k] - e) / e if e > 0 else abs(ep[k]) for k, e in eh.items())
            notes.append(f"- {preset}, agreement: max over tasks of |e_peer - e_hydraopt| / e_hydraopt = "
                         f"{worst:.2e} ({'within' if worst <= 1e-3 else 'NOT within'} 0.1%).")
        doc = p["doc"]
        if doc and "seconds_read" in doc:
            notes.append(f"- {preset}, peer's own split: read {doc['seconds_read']:.2f} s, total "
                         f"{doc['seconds_total']:.2f} s, torch import {doc.get('seconds_import', 0):.2f} s "
                         f"(wall in the table includes interpreter start and import).")
        if h["doc"] and "seconds" in h["doc"]:
            notes.append(f"- {preset}, hydraopt's own `seconds` (merge, excluding process start): "
                         f"{h['doc']['seconds']:.2f} s.")
    notes.append("")
    notes.append("Commands:")
    notes.append("")
    for r in rows:
        notes.append(f"- {r['preset']} / {r['label']}: `{r['cmd']}`")
    md = "\n".join(lines + notes) + "\n"
    head = open(header_path).read() if header_path else ""
    with open(out_path + ".tmp", "w") as f:
        f.write(head + md)
    os.replace(out_path + ".tmp", out_path)
    sys.stdout.write(md)


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "shapes":
        shapes(sys.argv[2:])
    elif len(sys.argv) in (4, 5) and sys.argv[1] == "table":
        table(*sys.argv[2:])
    else:
        sys.exit(__doc__)
