#!/usr/bin/env python3
"""Pins hydraopt's bundles and reports to checksums recorded by an earlier build.

A refactor that must not change results (issue 15) runs every method on the
shipped adapters and on `synth --preset small`, and compares a checksum of
each bundle and report with the one recorded in checksums.json by the code
before the change (the commit is named in that file).

What is hashed:
  bundle: the data bytes, and the header JSON with the two fields that name
          the run rather than the result blanked: each task's "source" path
          (where the adapter was read from) and "hydraopt_version".
  report: the JSON without "seconds".

Bits depend on the CPU's instruction set (-march=native picks Eigen's kernels
and so the summation order), so the checksums are recorded with the CPU they
came from. On another CPU this test cannot compare bits; it says so and
exits 77 (ctest: skipped). Record anew only from a commit known to be right:
    pin_outputs.py --record HYDRAOPT_CLI ASSETS_DIR tests/pin/checksums.json
Usage:
    pin_outputs.py --check HYDRAOPT_CLI ASSETS_DIR tests/pin/checksums.json
"""
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile

# Every method on every input, with a budget where the method takes one.
# hydraopt is also pinned at a low and a high budget and with a plan file.
RUNS = [
    ("hydraopt", ["--budget", "0.5"]),
    ("hydraopt", ["--budget", "0.2"]),
    ("hydraopt", ["--budget", "0.8"]),
    ("hydra", []),
    ("hydra-avg", []),
    ("jd-full", ["--budget", "0.4"]),
    ("jd-diag", ["--budget", "0.4"]),
    ("linear", []),
    ("ta", []),
    ("ties", []),
    ("ties", ["--sign-method", "frequency", "--density", "0.3"]),
    ("dare-linear", ["--seed", "3"]),
    ("dare-ties", []),
    ("magnitude-prune", []),
    ("knots-ta", []),
    ("knots-ties", []),
    ("tsv", []),
]


def cpu_fingerprint():
    model, flags = "", ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].strip()
    return model + " / flags " + hashlib.sha256(flags.encode()).hexdigest()[:12]


def bundle_digest(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["hydraopt"])
    meta.pop("hydraopt_version", None)
    for t in meta["tasks"]:
        t["source"] = os.path.basename(t["source"].rstrip("/"))
    header["__metadata__"]["hydraopt"] = json.dumps(meta, sort_keys=True)
    h = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    h.update(data[8 + n :].lstrip(b" "))  # padding belongs to the header
    return h.hexdigest()


def report_digest(path):
    with open(path) as f:
        r = json.load(f)
    r.pop("seconds", None)
    return hashlib.sha256(json.dumps(r, sort_keys=True).encode()).hexdigest()


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"pin: {' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()}")


def digests(cli, assets, work):
    synth = os.path.join(work, "synth")
    run([cli, "synth", synth, "--preset", "small"])
    inputs = {
        "shipped": sorted(os.path.join(assets, "adapters", d) for d in os.listdir(os.path.join(assets, "adapters"))),
        "synth-small": sorted(os.path.join(synth, d) for d in os.listdir(synth)),
    }
    out = {}
    for where, adapters in inputs.items():
        for method, flags in RUNS:
            key = " ".join([where, method] + flags)
            bundle, report = os.path.join(work, "b.safetensors"), os.path.join(work, "r.json")
            run([cli, "merge", *adapters, "--method", method, *flags, "--threads", "2", "-o", bundle, "--report", report])
            out[key] = {"bundle": bundle_digest(bundle), "report": report_digest(report)}
            plan = os.path.join(work, "plan.json")
            if method == "hydraopt" and flags == ["--budget", "0.5"]:
                os.replace(report, plan)
        # The planner's plan, given back by hand.
        key = f"{where} hydraopt --plan"
        run([cli, "merge", *inputs[where], "--plan", plan, "--threads", "1", "-o", bundle, "--report", report])
        out[key] = {"bundle": bundle_digest(bundle), "report": report_digest(report)}
    # Several budgets at once (fits shared across budgets), every method.
    sweep = os.path.join(work, "sweep")
    run([cli, "sweep", *inputs["synth-small"], "--budgets", "0.1,0.3,0.6", "--out", sweep])
    with open(os.path.join(sweep, "sweep.json")) as f:
        reports = json.load(f)
    for r in reports:
        r.pop("seconds", None)
    out["synth-small sweep"] = {"reports": hashlib.sha256(json.dumps(reports, sort_keys=True).encode()).hexdigest()}
    return out


def main():
    if len(sys.argv) != 5 or sys.argv[1] not in ("--check", "--record"):
        sys.exit(__doc__)
    mode, cli, assets, pins = sys.argv[1:]
    if mode == "--check":
        with open(pins) as f:
            recorded = json.load(f)
        if recorded["cpu"] != cpu_fingerprint():
            print(f"pin: checksums were recorded on '{recorded['cpu']}', this is '{cpu_fingerprint()}': "
                  "bits differ across instruction sets, nothing compared")
            sys.exit(77)
    with tempfile.TemporaryDirectory() as work:
        got = digests(cli, assets, work)
    if mode == "--record":
        commit = subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(pins)), "rev-parse", "HEAD"],
                                capture_output=True, text=True).stdout.strip()
        with open(pins, "w") as f:
            json.dump({"commit": commit, "cpu": cpu_fingerprint(), "runs": got}, f, indent=1, sort_keys=True)
            f.write("\n")
        print(f"pin: recorded {len(got)} runs at {commit}")
        return
    bad = [k for k in recorded["runs"] if recorded["runs"][k] != got.get(k)]
    missing = [k for k in recorded["runs"] if k not in got]
    for k in bad:
        which = [p for p in recorded["runs"][k] if got.get(k, {}).get(p) != recorded["runs"][k][p]]
        print(f"pin: {k}: {' and '.join(which)} changed since {recorded['commit'][:10]}")
    if bad or missing or len(got) != len(recorded["runs"]):
        sys.exit(1)
    print(f"pin: {len(got)} runs byte-identical to {recorded['commit'][:10]}")


if __name__ == "__main__":
    main()
