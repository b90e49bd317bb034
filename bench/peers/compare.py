#!/usr/bin/python3
"""Compares the per-task errors of a peer run with a hydraopt report.

usage: compare.py PEER.json REPORT.json [--tol 1e-3]

PEER.json is the JSON line printed by bench/peers/hydra_torch.py, REPORT.json
the file written by `hydraopt merge ... --report` (either may be a report). Prints one JSON line with
the largest relative difference |e_peer - e_hydraopt| / e_hydraopt over
tasks (and which task), the two mean errors, and exits 1 if it exceeds
--tol (default 1e-3, i.e. 0.1%).
"""
import json
import sys


def load(path):
    """A JSON file, or the last line of a log whose last line is JSON."""
    with open(path) as f:
        text = f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return json.loads(text.strip().splitlines()[-1])


def errors(doc):
    """{task: rel_error} from a peer line or a hydraopt report."""
    if "rel_errors" in doc:
        return doc["rel_errors"]
    return {t["name"]: t["rel_error"] for t in doc["tasks"]}


def main(argv):
    tol = 1e-3
    if "--tol" in argv:
        i = argv.index("--tol")
        tol = float(argv[i + 1])
        del argv[i:i + 2]
    if len(argv) != 2:
        sys.exit(__doc__)
    peer, rep = load(argv[0]), load(argv[1])
    ours, theirs = errors(rep), errors(peer)
    if set(ours) != set(theirs):
        sys.exit(f"task sets differ: {sorted(set(ours) ^ set(theirs))}")
    worst, where = 0.0, None
    for k, e in ours.items():
        d = abs(theirs[k] - e) / e if e > 0 else abs(theirs[k])
        if d > worst:
            worst, where = d, k
    print(json.dumps({"tasks": len(ours), "max_rel_diff": worst, "worst_task": where,
                      "mean_rel_error_peer": peer["mean_rel_error"],
                      "mean_rel_error_hydraopt": rep["mean_rel_error"],
                      "params_peer": peer.get("params", peer.get("storage", {}).get("params")),
                      "params_hydraopt": rep["storage"]["params"],
                      "ok": worst <= tol}))
    return 0 if worst <= tol else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
