#!/usr/bin/env python3
"""Checks that hydraopt's layers only depend downwards (docs/architecture.md).

Each folder of src/ is a layer; a source may include headers of its own
layer and of the layers listed for it below, and the public headers
(include/hydraopt/) from anywhere. The runtime (src/runtime), the CLI
(tools/), the Python module (python/) and the lab (lab/) use the public
API only. Outside the registry, no source compares a string with a method
name (a method is chosen through the registry, never by its name).

    check_layers.py ROOT            check the tree at ROOT; exit 1 on a violation
    check_layers.py --self-test     plant violations in a scratch tree and
                                    check that each one is reported
"""
import os
import re
import shutil
import sys
import tempfile

# layer -> the layers it may include (its own is always allowed)
ALLOWED = {
    "util": set(),
    "linalg": {"util"},
    "core": {"util"},
    # io: formats. peft's one pass over a file takes each task's update
    # norms with linalg's Gram kernels while the bytes are in cache.
    "io": {"core", "linalg", "util"},
    "methods": {"core", "linalg", "util"},
    "plan": {"methods", "core", "linalg", "util"},
    "dist": {"util"},
    "synth": {"io", "core", "util"},
    "engine": {"plan", "methods", "io", "dist", "core", "linalg", "util"},
    "report": {"engine", "plan", "methods", "io", "dist", "core", "linalg", "util"},
    # api: the public classes whose work spans layers (Bundle, TensorFile).
    "api": {"report", "engine", "plan", "methods", "io", "dist", "synth", "core", "linalg", "util"},
    "runtime": set(),  # public API only
}
PUBLIC_ONLY = ["tools", "python", "lab"]  # plus src/runtime
# Where method names may be written as strings: the registry's entries.
NAME_OWNERS = {"src/plan/registry.cc", "src/plan/structure_methods.cc", "src/methods/baselines.cc"}
METHOD_NAMES = ["hydraopt", "hydra", "hydra-avg", "jd-full", "jd-diag", "linear", "ta", "ties", "dare-linear",
                "dare-ties", "magnitude-prune", "knots-ta", "knots-ties", "tsv"]

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
NAME_COMPARE = re.compile(r'(==|!=)\s*"(' + "|".join(map(re.escape, METHOD_NAMES)) + r')"|"('
                          + "|".join(map(re.escape, METHOD_NAMES)) + r')"\s*(==|!=)')


def sources(root, folder):
    for dirpath, _, files in os.walk(os.path.join(root, folder)):
        for f in sorted(files):
            if f.endswith((".h", ".cc", ".cpp", ".hpp")):
                yield os.path.join(dirpath, f)


def check(root):
    problems = []
    layers = sorted(d for d in os.listdir(os.path.join(root, "src")) if os.path.isdir(os.path.join(root, "src", d)))
    for layer in layers:
        if layer not in ALLOWED:
            problems.append(f"src/{layer}: a folder with no place in the layers (add it to {__file__})")
    for layer in layers:
        for path in sources(root, os.path.join("src", layer)):
            text = open(path, encoding="utf-8").read()
            rel = os.path.relpath(path, root)
            for inc in INCLUDE.findall(text):
                top = inc.split("/")[0]
                if "/" not in inc or top == "hydraopt" or top == layer or top not in layers:
                    continue
                if top not in ALLOWED.get(layer, set()):
                    problems.append(f"{rel}: includes \"{inc}\": layer {layer} may not depend on {top}")
            if rel not in NAME_OWNERS:
                for m in NAME_COMPARE.finditer(text):
                    problems.append(f"{rel}: compares with the method name {m.group(0).strip()}: "
                                    "choose methods through the registry (plan/registry.h)")
    src_layers = set(layers)
    for folder in PUBLIC_ONLY:
        if not os.path.isdir(os.path.join(root, folder)):
            continue
        for path in sources(root, folder):
            rel = os.path.relpath(path, root)
            for inc in INCLUDE.findall(open(path, encoding="utf-8").read()):
                if inc.split("/")[0] in src_layers and "/" in inc:
                    problems.append(f"{rel}: includes the private header \"{inc}\": {folder}/ uses the public API "
                                    "(include/hydraopt/) only")
            if rel not in NAME_OWNERS:
                for m in NAME_COMPARE.finditer(open(path, encoding="utf-8").read()):
                    problems.append(f"{rel}: compares with the method name {m.group(0).strip()}")
    return problems


def self_test(root):
    """Plants one violation of each kind in a copy of the tree's sources."""
    plants = [
        ("src/core/planted.h", '#include "engine/session.h"\n', "layer core may not depend on engine"),
        ("src/io/planted.cc", '#include "methods/structures.h"\n', "layer io may not depend on methods"),
        ("src/runtime/planted.cc", '#include "io/bundle.h"\n', "layer runtime may not depend on io"),
        ("python/planted.cc", '#include "io/bundle.h"\n', "private header"),
        ("src/engine/planted.cc", 'bool f(const std::string& m) { return m == "hydra"; }\n', "method name"),
        ("src/newlayer/x.h", "", "no place in the layers"),
    ]
    failures = 0
    for rel, text, expect in plants:
        with tempfile.TemporaryDirectory() as scratch:
            for folder in ["src", "tools", "python", "lab"]:
                if os.path.isdir(os.path.join(root, folder)):
                    shutil.copytree(os.path.join(root, folder), os.path.join(scratch, folder))
            os.makedirs(os.path.dirname(os.path.join(scratch, rel)), exist_ok=True)
            with open(os.path.join(scratch, rel), "w") as f:
                f.write(text)
            found = [p for p in check(scratch) if expect in p]
            if found:
                print(f"self-test: planted {rel}: reported: {found[0]}")
            else:
                print(f"self-test: planted {rel}: NOT reported (expected '{expect}')")
                failures += 1
    return failures


def main():
    if sys.argv[1:2] == ["--self-test"]:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        sys.exit(1 if self_test(root) else 0)
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    problems = check(sys.argv[1])
    for p in problems:
        print(p)
    if problems:
        sys.exit(1)
    print("layers: every include points down; no method chosen by name outside the registry")


if __name__ == "__main__":
    main()
