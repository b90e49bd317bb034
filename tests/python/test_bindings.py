"""The Python module against the CLI and the files: what it reads, merges and writes.

Run by ctest (python.bindings) with PYTHONPATH at the built module and
HYDRAOPT_CLI at the built CLI.
"""
import json
import os
import pathlib
import re
import struct
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest

import hydraopt

SRC = pathlib.Path(os.environ.get("HYDRAOPT_SOURCE_DIR", pathlib.Path(__file__).resolve().parents[2]))
CLI = os.environ.get("HYDRAOPT_CLI", str(SRC / "build" / "hydraopt"))
ADAPTERS = SRC / "assets" / "adapters"
TASKS = ["spell-de", "spell-fr", "rev-de", "cap-de"]
Q0 = "model.layers.0.self_attn.q_proj"


def paths(tasks=TASKS):
    return [str(ADAPTERS / t) for t in tasks]


def _blas_kernels_of_this_process():
    """The CLI re-executes itself with OPENBLAS_CORETYPE set where OpenBLAS fell
    back to its generic kernels (include/hydraopt/dist.h); this process cannot.
    Its CLI runs get this process's kernels, so that their bits can match."""
    import ctypes
    lib = ctypes.CDLL("libopenblas.so.0")
    lib.openblas_get_corename.restype = ctypes.c_char_p
    return dict(os.environ, OPENBLAS_CORETYPE=lib.openblas_get_corename().decode())


CLI_ENV = _blas_kernels_of_this_process()


def cli(*args):
    r = subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, env=CLI_ENV)
    assert r.returncode == 0, r.stderr
    return r.stdout


def raw_tensor(path, name):
    """One F32 tensor read straight from the file's bytes (not through hydraopt)."""
    data = pathlib.Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    info = json.loads(data[8:8 + n])[name]
    assert info["dtype"] == "F32"
    begin, end = info["data_offsets"]
    return np.frombuffer(data[8 + n + begin:8 + n + end], dtype="<f4").reshape(info["shape"])


@pytest.fixture(scope="module")
def bundle():
    return hydraopt.merge(paths(), budget=0.5)


def test_version_is_the_cmake_project_version():
    m = re.search(r"project\(hydraopt VERSION ([0-9.]+)", (SRC / "CMakeLists.txt").read_text())
    assert hydraopt.__version__ == m.group(1)
    assert cli("--version").strip() == f"hydraopt {hydraopt.__version__}"


def test_package_names_stubs_and_command(tmp_path):
    """The package around the extension: public names, stubs beside it, `python -m hydraopt`."""
    assert hydraopt.Bundle.__module__ == hydraopt.Error.__module__ == "hydraopt"
    assert repr(hydraopt.Error) == "<class 'hydraopt.Error'>"
    package = pathlib.Path(hydraopt.__file__).parent
    assert (package / "py.typed").is_file() and (package / "_hydraopt.pyi").is_file()
    r = subprocess.run([sys.executable, "-m", "hydraopt", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == f"hydraopt {hydraopt.__version__}", r.stderr
    r = subprocess.run([sys.executable, "-m", "hydraopt", "export", "no-such.safetensors", "--all", "-o", str(tmp_path / "x")],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "no-such.safetensors" in r.stderr


def test_adapter_reads_config_and_factors():
    a = hydraopt.Adapter(ADAPTERS / "spell-de")
    assert (a.name, a.rank, a.alpha, a.dtype, a.use_rslora) == ("spell-de", 8, 16.0, "F32", False)
    assert a.base_model == "hydraopt-tiny-llama"
    assert len(a.modules) == 16 and a.params == 16 * 8 * 512 - 8 * 8 * 128  # k/v out 128
    assert hydraopt.Adapter(f"renamed={ADAPTERS / 'spell-de'}").name == "renamed"
    lora = a.load(Q0)
    assert lora["scale"] == 2.0
    assert lora["A"].shape == (8, 256) and lora["B"].shape == (256, 8) and lora["A"].dtype == np.float64
    st = ADAPTERS / "spell-de" / "adapter_model.safetensors"
    np.testing.assert_array_equal(lora["A"], raw_tensor(st, f"base_model.model.{Q0}.lora_A.weight"))
    np.testing.assert_array_equal(lora["B"], raw_tensor(st, f"base_model.model.{Q0}.lora_B.weight"))


def test_inspect_is_the_cli_json():
    assert hydraopt.inspect(paths()) == json.loads(cli("inspect", "--json", *paths()))


def test_merge_report_is_a_dict_within_budget(bundle):
    r = bundle.report
    assert r["method"] == "hydraopt" and r["budget"] == 0.5
    assert 0.3 < r["storage"]["fraction"] <= 0.5
    assert r["storage"]["params"] == bundle.params
    assert [t["name"] for t in r["tasks"]] == TASKS == bundle.tasks
    assert 0.01 < r["mean_rel_error"] < 1
    assert len(r["plan"]) == 16 and bundle.plan == r["plan"]


def test_factors_are_numpy_and_reproduce_the_reported_errors(bundle):
    stored = 0
    num = dict.fromkeys(TASKS, 0.0)
    den = dict.fromkeys(TASKS, 0.0)
    originals = {t: hydraopt.Adapter(ADAPTERS / t) for t in TASKS}
    for module in bundle.modules:
        f = bundle.factors(module)
        stored += sum(x.size for x in f["heads"] + f["cores"] + f["bodies"])
        for i, task in enumerate(TASKS):
            head, body = f["heads"][f["head_of"][i]], f["bodies"][f["body_of"][i]]
            assert isinstance(head, np.ndarray) and head.dtype == np.float64 and head.shape[0] == f["out"]
            if f["core_of"][i] >= 0:
                core = f["cores"][f["core_of"][i]]
                head = head * core if f["diagonal_cores"] else head @ core
            dw_hat = f["scale"][i] * head @ body
            np.testing.assert_allclose(dw_hat, bundle.update(task, module), rtol=1e-12, atol=1e-12)
            lora = originals[task].load(module)
            dw = lora["scale"] * lora["B"] @ lora["A"]
            num[task] += ((dw - dw_hat) ** 2).sum()
            den[task] += (dw ** 2).sum()
    assert stored == bundle.params
    for t in bundle.report["tasks"]:
        assert np.sqrt(num[t["name"]] / den[t["name"]]) == pytest.approx(t["rel_error"], rel=1e-6)


def test_merge_writes_the_same_bundle_as_the_cli(tmp_path):
    hydraopt.merge(paths(), budget=0.5, output=tmp_path / "py.safetensors")
    cli("merge", *paths(), "--budget", "0.5", "-o", tmp_path / "cli.safetensors")
    assert (tmp_path / "py.safetensors").read_bytes() == (tmp_path / "cli.safetensors").read_bytes()
    reread = hydraopt.Bundle(tmp_path / "py.safetensors")
    assert reread.report is None and reread.tasks == TASKS


def test_module_weights_match_the_cli(tmp_path):
    hydraopt.merge(paths(), budget=0.4, weights="module", output=tmp_path / "py.safetensors")
    cli("merge", *paths(), "--budget", "0.4", "--weights", "module", "-o", tmp_path / "cli.safetensors")
    assert (tmp_path / "py.safetensors").read_bytes() == (tmp_path / "cli.safetensors").read_bytes()


def test_byte_budgets_store_integers_and_match_the_cli(tmp_path):
    b = hydraopt.merge(paths(), budget=0.2, unit="bytes", output=tmp_path / "py.safetensors")
    s = b.report["storage"]
    assert b.report["budget_unit"] == "bf16_bytes"
    assert s["bytes"] <= 0.2 * 2 * s["original_params"] and s["bf16_fraction"] > 0.15
    assert any("precision" in m for m in b.plan)
    cli("merge", *paths(), "--budget-bf16", "0.2", "-o", tmp_path / "cli.safetensors")
    assert (tmp_path / "py.safetensors").read_bytes() == (tmp_path / "cli.safetensors").read_bytes()
    swept = hydraopt.sweep(paths(), methods=["quant"], budgets=[0.2, 0.3], unit="bytes")
    assert [r["budget"] for r in swept] == [0.2, 0.3]
    assert all(r["storage"]["bf16_fraction"] <= r["budget"] for r in swept)
    with pytest.raises(hydraopt.Error, match="unit must be"):
        hydraopt.merge(paths(), budget=0.2, unit="kilobytes")


def test_method_parameters_and_dtype(tmp_path):
    b = hydraopt.merge(paths(), method="ties", params={"density": 0.3}, dtype="bf16")
    assert b.report["method"] == "ties" and b.dtype == "BF16"
    assert b.report["parameters"]["density"] in ("0.3", 0.3)
    assert any(m["name"] == "ties" and m["single_adapter"] for m in hydraopt.methods())


def test_export_roundtrip(bundle, tmp_path):
    bundle.export(tmp_path / "one", task="spell-fr")
    exported = hydraopt.Adapter(tmp_path / "one")
    for module in bundle.modules:
        lora = exported.load(module)
        np.testing.assert_allclose(lora["scale"] * lora["B"] @ lora["A"], bundle.update("spell-fr", module),
                                   rtol=0, atol=1e-6 * np.abs(bundle.update("spell-fr", module)).max())
    hydraopt.export(bundle.path, tmp_path / "all")
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == sorted(TASKS)


def test_task_adapter_is_what_export_writes(bundle, tmp_path):
    state, config = bundle.task_adapter("rev-de")
    bundle.export(tmp_path / "rev", task="rev-de")
    assert config == json.loads((tmp_path / "rev" / "adapter_config.json").read_text())
    written = tmp_path / "rev" / "adapter_model.safetensors"
    assert sorted(state) == sorted(json.loads(written.read_bytes()[8:8 + struct.unpack("<Q", written.read_bytes()[:8])[0]])
                                   .keys() - {"__metadata__"})
    for name, array in state.items():
        assert array.dtype == np.float64
        np.testing.assert_array_equal(array.astype(np.float32), raw_tensor(written, name))  # F32 bundle: exact
    # With each module's alpha / r, the pairs give back the task's updates.
    for module in bundle.modules:
        a = state[f"base_model.model.{module}.lora_A.weight"]
        b = state[f"base_model.model.{module}.lora_B.weight"]
        leaf = re.escape(module)
        r = config["rank_pattern"].get(leaf, config["r"])
        alpha = config["alpha_pattern"].get(leaf, config["lora_alpha"])
        assert a.shape[0] == r == b.shape[1]
        np.testing.assert_allclose(alpha / r * b @ a, bundle.update("rev-de", module), rtol=1e-12, atol=1e-15)
    with pytest.raises(hydraopt.Error, match="no task 'nope'"):
        bundle.task_adapter("nope")


def test_sweep_returns_the_cli_reports(tmp_path):
    reports = hydraopt.sweep(paths(), methods=["hydraopt", "ta"], budgets=[0.3, 0.6])
    cli("sweep", *paths(), "--methods", "hydraopt,ta", "--budgets", "0.3,0.6", "--out", tmp_path)
    want = json.loads((tmp_path / "sweep.json").read_text())
    assert [(r["method"], r["budget"]) for r in reports] == [(r["method"], r["budget"]) for r in want]
    for got, exp in zip(reports, want):
        # The same reports but for the time and the plan (sweep.json leaves plans out).
        assert len(got["plan"]) == 16 and "plan" not in exp
        assert {k: v for k, v in got.items() if k not in ("seconds", "plan")} == \
            {k: v for k, v in exp.items() if k != "seconds"}
    assert [r["budget"] for r in reports if r["method"] == "hydraopt"] == [0.3, 0.6]
    with pytest.raises(hydraopt.Error, match="unknown method 'nope'"):
        hydraopt.sweep(paths(), methods=["nope"])


def test_temporary_bundle_is_removed_with_its_object():
    b = hydraopt.merge(paths()[:2], method="hydra-avg")
    path = pathlib.Path(b.path)
    assert path.is_file()
    del b
    assert not path.exists() and not path.parent.exists()


def test_bad_input_raises_hydraopt_error_with_its_message(tmp_path):
    with pytest.raises(hydraopt.Error, match="adapter_config.json"):
        hydraopt.Adapter(tmp_path)
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        hydraopt.merge(paths(), method="nope")
    with pytest.raises(hydraopt.Error, match="budget"):
        hydraopt.merge(paths(), budget=1.5)
    with pytest.raises(hydraopt.Error, match="also used by"):
        hydraopt.merge([ADAPTERS / "spell-de", ADAPTERS / "spell-de"])
    with pytest.raises(hydraopt.Error, match="dtype"):
        hydraopt.merge(paths(), dtype="int8")
    b = hydraopt.merge(paths()[:2], method="hydra-avg")
    with pytest.raises(hydraopt.Error, match="no module 'nope'"):
        b.factors("nope")
    with pytest.raises(hydraopt.Error, match="no task"):
        b.update("nope", Q0)


def test_merge_releases_the_gil():
    """Another Python thread keeps running while a merge computes."""
    ticks, done = [], threading.Event()

    # Every task: the planner's predictions got cheaper (12 tasks took
    # 0.9 s, then 0.18 s; 4 took 0.18-0.25 s once merges ran their threads
    # inside modules), and the check needs well over 0.2 s.
    tasks = sorted(p.name for p in ADAPTERS.iterdir())

    def work():
        try:
            hydraopt.merge(paths(tasks), budget=0.5, threads=1)
        finally:
            done.set()

    t = threading.Thread(target=work)
    start = time.perf_counter()
    t.start()
    while not done.is_set():
        ticks.append(time.perf_counter())
        time.sleep(0.002)
    t.join()
    seconds = time.perf_counter() - start
    gaps = np.diff([start] + ticks)
    print(f"merge {seconds:.2f} s, {len(ticks)} ticks, longest gap {gaps.max():.3f} s")
    assert seconds > 0.2  # long enough to tell
    assert gaps.max() < 0.5 * seconds  # holding the GIL gives one gap of the whole merge


def test_readme_python_example_runs_as_written(tmp_path):
    """The README's "Use it from Python" example, run from a directory with the assets."""
    readme = (SRC / "README.md").read_text()
    section = readme.split("## Use it from Python", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "assets").symlink_to(SRC / "assets")
    env = dict(os.environ, PYTHONPATH=str(pathlib.Path(hydraopt.__file__).parents[1]))  # this package
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    promised = re.search(r"print\(b\)\s*# (<.*>)", code).group(1)
    assert lines[0] == promised
    assert float(lines[-1]) < 1e-6  # the exported adapter reproduces the bundle's update
    assert (tmp_path / "out" / "py" / "spell-de" / "adapter_config.json").is_file()


def test_unmergeable_tensors_raise_or_warn(tmp_path):
    """A DoRA magnitude vector: an error naming it, or a Python warning with skip_unmergeable."""
    src = ADAPTERS / "spell-de"
    data = (src / "adapter_model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header, body = json.loads(data[8:8 + n]), data[8 + n:]
    extra = f"base_model.model.{Q0}.lora_magnitude_vector"
    header[extra] = {"dtype": "F32", "shape": [256], "data_offsets": [len(body), len(body) + 1024]}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    dora = tmp_path / "dora"
    dora.mkdir()
    (dora / "adapter_config.json").write_bytes((src / "adapter_config.json").read_bytes())
    (dora / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + body + bytes(1024))
    with pytest.raises(hydraopt.Error, match="lora_magnitude_vector"):
        hydraopt.Adapter(dora)
    with pytest.warns(UserWarning, match="skipping 1 unmergeable"):
        a = hydraopt.Adapter(dora, skip_unmergeable=True)
    assert len(a.modules) == 16
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning):
            hydraopt.merge([dora, ADAPTERS / "spell-fr"], method="hydra-avg", skip_unmergeable=True)


def test_bundle_add_and_remove_match_the_cli(tmp_path, bundle):
    grown = bundle.add([str(ADAPTERS / "cap-nl")], output=tmp_path / "grown.safetensors")
    assert grown.tasks == TASKS + ["cap-nl"]
    r = grown.report
    assert r["op"] == "add" and r["refit"] == "none"
    assert [t["status"] for t in r["tasks"]] == ["kept"] * 4 + ["added"]
    assert 0 < r["tasks"][-1]["rel_error"] < 1
    assert bundle.tasks == TASKS  # the original is unchanged
    for t in TASKS:  # stored factors kept: the old tasks' updates are the same numbers
        np.testing.assert_array_equal(grown.update(t, Q0), bundle.update(t, Q0))
    cli("add", bundle.path, ADAPTERS / "cap-nl", "-o", tmp_path / "cli.safetensors")
    assert (tmp_path / "cli.safetensors").read_bytes() == (tmp_path / "grown.safetensors").read_bytes()
    back = grown.remove(["cap-nl"])
    assert back.tasks == TASKS and back.params == bundle.params
    assert back.report["op"] == "remove" and back.report["removed"] == ["cap-nl"]
    for t in TASKS:
        np.testing.assert_array_equal(back.update(t, Q0), bundle.update(t, Q0))
    with pytest.raises(hydraopt.Error, match="already in the bundle"):
        grown.add([str(ADAPTERS / "cap-nl")])
    with pytest.raises(hydraopt.Error, match="no task 'nope'"):
        grown.remove(["nope"])


def test_calibrated_merge_matches_the_cli(tmp_path):
    stats = tmp_path / "stats"
    cli("calibrate", SRC / "assets" / "model", *paths(), "--data", SRC / "assets" / "tasks", "-o", stats,
        "--examples", "8")
    b = hydraopt.merge(paths(), budget=0.4, calibration=str(stats), shrinkage=0.3, output=tmp_path / "py.safetensors")
    assert "mean_frobenius_rel_error" in b.report
    assert all("frobenius_rel_error" in t for t in b.report["tasks"])
    cli("merge", *paths(), "--budget", "0.4", "--calibration", stats, "--shrinkage", "0.3",
        "-o", tmp_path / "cli.safetensors")
    assert (tmp_path / "py.safetensors").read_bytes() == (tmp_path / "cli.safetensors").read_bytes()
    free = hydraopt.merge(paths(), budget=0.4)
    assert "mean_frobenius_rel_error" not in free.report
    with pytest.raises(hydraopt.Error, match="shrinkage"):
        hydraopt.merge(paths(), budget=0.4, calibration=str(stats), shrinkage=2.0)
    rounds = hydraopt.merge(paths(), method="hydra", calibration=str(stats), calibration_rounds=1,
                            output=tmp_path / "py-rounds.safetensors")
    cli("merge", *paths(), "--method", "hydra", "--calibration", stats, "--calibration-rounds", "1",
        "-o", tmp_path / "cli-rounds.safetensors")
    assert (tmp_path / "py-rounds.safetensors").read_bytes() == (tmp_path / "cli-rounds.safetensors").read_bytes()
    assert rounds.report["tasks"] != hydraopt.merge(paths(), method="hydra", calibration=str(stats)).report["tasks"]
    with pytest.raises(hydraopt.Error, match="calibration-rounds"):
        hydraopt.merge(paths(), method="hydra", calibration=str(stats), calibration_rounds=-1)
