"""The type stubs (python/hydraopt/_hydraopt.pyi) against the built extension.

Every public function, class, method and property of the extension has a
stub and vice versa, each stub's parameters have the extension's names,
order and defaults (read from pybind11's signature lines), and properties
are properties. Run by ctest (python.stubs) with PYTHONPATH at the built
package.
"""
import ast
import os
import pathlib

import pytest

import hydraopt
from hydraopt import _hydraopt as ext

SRC = pathlib.Path(os.environ.get("HYDRAOPT_SOURCE_DIR", pathlib.Path(__file__).resolve().parents[2]))
STUB = ast.parse((SRC / "python" / "hydraopt" / "_hydraopt.pyi").read_text())


def split_top(text):
    """Splits at commas outside brackets and quotes."""
    parts, depth, quote, cur = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
            continue
        cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


def runtime_params(obj, name):
    """[(name, default or ...)] from pybind11's first docstring line `name(a: T, b: T = x) -> R`."""
    line = obj.__doc__.splitlines()[0]
    assert line.startswith(name + "("), f"{name}: unexpected signature line {line!r}"
    inner = line[len(name) + 1:line.rindex(") -> ")]
    out = []
    for p in split_top(inner):
        pname, _, rest = p.partition(":")
        default = rest.split(" = ", 1)[1] if " = " in rest else None
        out.append((pname.strip(), ast.literal_eval(default) if default is not None else ...))
    return out


def stub_params(fn):
    args = fn.args
    names = [a.arg for a in args.posonlyargs + args.args]
    defaults = [...] * (len(names) - len(args.defaults)) + [ast.literal_eval(d) for d in args.defaults]
    return list(zip(names, defaults))


def stub_members(body):
    """name -> ast node for the defs and classes of a stub body (annotated names as AnnAssign)."""
    out = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            out[node.name] = node
        elif isinstance(node, ast.AnnAssign):
            out[node.target.id] = node
    return out


def public(names):
    return {n for n in names if not n.startswith("_")}


TOP = stub_members(STUB.body)


def test_module_names_match():
    assert public(dir(ext)) == public(TOP)
    assert "__version__" in TOP and isinstance(ext.__version__, str)
    # The package re-exports every one of them.
    assert public(dir(ext)) <= set(hydraopt.__all__)


@pytest.mark.parametrize("name", sorted(n for n in public(TOP) if isinstance(TOP[n], ast.FunctionDef)))
def test_function_signature(name):
    assert stub_params(TOP[name]) == runtime_params(getattr(ext, name), name)


@pytest.mark.parametrize("name", sorted(n for n in public(TOP) if isinstance(TOP[n], ast.ClassDef)))
def test_class_members(name):
    cls = getattr(ext, name)
    members = stub_members(TOP[name].body)
    if issubclass(cls, BaseException):
        assert issubclass(cls, ValueError) and not public(members)
        return
    runtime = {n: v for n, v in vars(cls).items() if not n.startswith("_")}
    assert set(runtime) == public(members), f"{name}: stub and extension differ"
    for n, v in runtime.items():
        is_property = any(isinstance(d, ast.Name) and d.id == "property" for d in members[n].decorator_list)
        assert is_property == isinstance(v, property), f"{name}.{n}: property in one, method in the other"
        if not is_property:
            assert stub_params(members[n]) == runtime_params(v, n), f"{name}.{n}"
    assert stub_params(members["__init__"]) == runtime_params(cls.__init__, "__init__"), f"{name}.__init__"


def test_split_top_and_params_parse_what_they_should():
    assert split_top("a: List[int] = [1, 2], b: str = 'x,y'") == ["a: List[int] = [1, 2]", "b: str = 'x,y'"]

    class F:
        __doc__ = "f(self: X, a: Dict[str, int], b: float = 0.5) -> None\n\nmore"
    assert runtime_params(F, "f") == [("self", ...), ("a", ...), ("b", 0.5)]
