#!/usr/bin/env python3
"""The shipped benchmark assets are exactly what assets/SHA256SUMS lists.

Every file under ASSETS_DIR (each adapter set, the adapters' initialisation,
the model, the test sets) has a line in SHA256SUMS with its SHA-256, and
every line names a file that exists with that hash. Regenerate after
retraining with:  cd assets && find . -type f ! -name SHA256SUMS | sed 's|^./||' | sort | xargs sha256sum > SHA256SUMS

usage: check_sums.py ASSETS_DIR
"""
import hashlib
import os
import sys


def main() -> int:
    root = sys.argv[1]
    listed = {}
    with open(os.path.join(root, "SHA256SUMS"), encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            digest, sep, name = line.rstrip("\n").partition("  ")
            if not sep or len(digest) != 64 or name in listed:
                print(f"{root}/SHA256SUMS: line {n}: not '<sha256>  <path>' or a repeated path")
                return 1
            listed[name] = digest
    present = set()
    for d, _, files in os.walk(root):
        for name in files:
            rel = os.path.relpath(os.path.join(d, name), root)
            if rel != "SHA256SUMS":
                present.add(rel)
    problems = [f"{p}: not in SHA256SUMS" for p in sorted(present - listed.keys())]
    problems += [f"{p}: listed in SHA256SUMS but missing" for p in sorted(listed.keys() - present)]
    for rel in sorted(present & listed.keys()):
        h = hashlib.sha256()
        with open(os.path.join(root, rel), "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        if h.hexdigest() != listed[rel]:
            problems.append(f"{rel}: SHA-256 differs from SHA256SUMS")
    for p in problems:
        print(f"{root}/{p}")
    print(f"{len(present)} files checked, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
