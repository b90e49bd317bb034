"""tools/calibrate_torch.py against `hydraopt calibrate` on the tiny model.

`hydraopt calibrate` writes two tasks' statistics from the project's own
forward pass; tools/calibrate_torch.py's collect() + write() write them from
llama_torch.py (a PyTorch port of llama_ref.py's forward pass, checked here
against it) with the same adapters on the same examples. The files must
agree: metadata, sites and their module lists, tensor names and widths,
and each site's dense moment V^T diag(values) V + diag(diagonal) to 1e-4
relative (both forward passes are float32). `hydraopt merge --calibration`
must accept the torch-written files.

Run by ctest (python.calibrate_torch) with HYDRAOPT_CLI at the built CLI;
by hand: /usr/bin/python3 -m pytest -q tests/python/test_calibrate_torch.py
(HYDRAOPT_CLI defaults to build/hydraopt).
"""
import json
import os
import pathlib
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

HERE = pathlib.Path(__file__).resolve().parent
SRC = pathlib.Path(os.environ.get("HYDRAOPT_SOURCE_DIR", HERE.parents[1]))
CLI = os.environ.get("HYDRAOPT_CLI", str(SRC / "build" / "hydraopt"))
MODEL = SRC / "assets" / "model"
ADAPTERS = SRC / "assets" / "adapters"
DATA = SRC / "assets" / "tasks"
TOOL = SRC / "tools" / "calibrate_torch.py"
TASKS = ["spell-de", "rev-it"]
EXAMPLES = 16
TOLERANCE = 1e-4

sys.path.insert(0, str(HERE))
sys.path.insert(0, str(SRC / "tools"))
import calibrate_torch as ct  # noqa: E402
import llama_ref  # noqa: E402
import llama_torch  # noqa: E402

torch.set_num_threads(1)


def sequences(task, config):
    """hydraopt calibrate's sequences: bos + prompt bytes + sep + answer bytes + eos."""
    out = []
    for line in (DATA / task / "calib.jsonl").read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        j = json.loads(line)
        out.append([config["bos_token_id"], *j["prompt"].encode("utf-8"), config["sep_token_id"],
                    *j["answer"].encode("utf-8"), config["eos_token_id"]])
        if len(out) == EXAMPLES:
            break
    return out


def padded_batches(seqs, size, pad):
    for b in range(0, len(seqs), size):
        chunk = seqs[b:b + size]
        width = max(map(len, chunk))
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, s in enumerate(chunk):
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
        yield {"input_ids": ids, "attention_mask": mask}


def header(path):
    data = pathlib.Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return data[8:8 + n]


@pytest.fixture(scope="module")
def model():
    return llama_torch.load_model(MODEL)


@pytest.fixture(scope="module")
def files(tmp_path_factory, model):
    """(hydraopt's directory, torch's directory, the run's directory)."""
    tmp = tmp_path_factory.mktemp("calibrate")
    ours, theirs = tmp / "hydraopt", tmp / "torch"
    subprocess.run([CLI, "calibrate", str(MODEL), *[str(ADAPTERS / t) for t in TASKS], "--data", str(DATA),
                    "-o", str(ours), "--examples", str(EXAMPLES)], check=True)
    names = ct.linear_module_names(model)
    for task in TASKS:
        adapter = ADAPTERS / task
        seqs = sequences(task, model.config)
        with llama_torch.lora(model, adapter):
            sites = ct.collect(model, [torch.tensor(s)[None] for s in seqs], names,
                               adapted=set(llama_torch.adapter_deltas(adapter)))
        base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
        ct.write(theirs / f"{task}.safetensors", task, base, len(seqs), sites)
    return ours, theirs, tmp


def test_llama_torch_matches_reference(model):
    weights = {k: v.astype(np.float64) for k, v in llama_torch.read_safetensors(MODEL / "model.safetensors").items()}
    adapter = ADAPTERS / TASKS[0]
    lora = {k: (a.astype(np.float64), b.astype(np.float64), s)
            for k, (a, b, s) in llama_torch.adapter_deltas(adapter).items()}
    seqs = sequences(TASKS[0], model.config)[:3] + [[256, *"grüße".encode(), 259, 257]]
    for s in seqs:
        for deltas in ({}, lora):
            want = llama_ref.forward(weights, model.config, s, deltas)
            with llama_torch.lora(model, adapter) if deltas else torch.no_grad():
                got = model(torch.tensor(s))[0].double().numpy()
            err = np.abs(got - want).max() / np.abs(want).max()
            assert err < 1e-5, f"{s}: logits off by {err:.3g} relative (adapter: {bool(deltas)})"
    # Right-padded batches: the real tokens' logits are the unpadded ones.
    batch = next(padded_batches(seqs, len(seqs), model.config["pad_token_id"]))
    with llama_torch.lora(model, adapter):
        padded = model(**batch)
        for i, s in enumerate(seqs):
            alone = model(torch.tensor(s))[0]
            torch.testing.assert_close(padded[i, :len(s)], alone, rtol=1e-5, atol=1e-5)


def test_same_statistics(files):
    ours, theirs, _ = files
    worst, checked_vectors = 0.0, 0
    for task in TASKS:
        a, b = ct.read(ours / f"{task}.safetensors"), ct.read(theirs / f"{task}.safetensors")
        for key in ("task", "base_model", "examples", "rows"):
            assert a[key] == b[key], f"{task}: metadata {key}: hydraopt {a[key]!r}, torch {b[key]!r}"
        assert a["examples"] == EXAMPLES
        assert {s: v["modules"] for s, v in a["sites"].items()} == {s: v["modules"] for s, v in b["sites"].items()}
        same_ranks = True
        for site, sa in a["sites"].items():
            sb = b["sites"][site]
            ka, kb = len(sa["values"]), len(sb["values"])
            assert sa["diagonal"].shape == sb["diagonal"].shape, f"{task}: {site}: widths differ"
            # The ranks could differ by one where an eigenvalue sits on the
            # tail boundary; in these files they do not.
            assert abs(ka - kb) <= 1, f"{task}: {site}: {ka} eigenpairs from hydraopt, {kb} from torch"
            same_ranks &= ka == kb
            k = min(ka, kb)
            top = sa["values"][0]
            assert np.abs(sa["values"][:k] - sb["values"][:k]).max() <= TOLERANCE * top, f"{task}: {site}: eigenvalues"
            # Well separated eigenvalues: the same eigenvectors, signs fixed
            # alike (largest entry positive).
            lam = sa["values"][:k]
            gaps = np.minimum(np.abs(np.diff(lam, prepend=np.inf)), np.abs(np.diff(lam, append=-np.inf)))
            for i in np.flatnonzero(gaps > 1e-2 * top):
                assert np.abs(sa["vectors"][i] - sb["vectors"][i]).max() < 1e-3, f"{task}: {site}: eigenvector {i}"
                checked_vectors += 1
            ca, cb = ct.dense(sa), ct.dense(sb)
            rel = np.linalg.norm(ca - cb) / np.linalg.norm(ca)
            worst = max(worst, rel, np.abs(ca - cb).max() / np.abs(ca).max())
            assert rel <= TOLERANCE, f"{task}: {site}: dense moments differ by {rel:.3g} relative"
            assert np.trace(cb) == pytest.approx(np.trace(ca), rel=TOLERANCE)
        if same_ranks:  # same shapes: the writers must agree byte for byte on the header
            assert header(ours / f"{task}.safetensors") == header(theirs / f"{task}.safetensors")
    assert checked_vectors >= 2 * len(TASKS)
    print(f"\nlargest relative difference of the dense moments: {worst:.3g}; eigenvectors compared: {checked_vectors}")


def test_hydraopt_merges_with_torch_statistics(files):
    _, theirs, tmp = files
    r = subprocess.run([CLI, "merge", *[str(ADAPTERS / t) for t in TASKS], "--method", "hydra",
                        "--calibration", str(theirs), "-o", str(tmp / "b.safetensors")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "calibrated" in r.stdout, r.stdout
    assert "no calibration statistics" not in r.stdout + r.stderr
    assert (tmp / "b.safetensors").is_file()


def test_padded_batches_count_real_rows_only(model):
    """collect() with right-padded batches and an attention_mask: the same sums."""
    adapter = ADAPTERS / TASKS[0]
    seqs = sequences(TASKS[0], model.config)[:6]
    names = ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj", "model.layers.1.mlp.down_proj"]
    with llama_torch.lora(model, adapter):
        alone = ct.collect(model, [torch.tensor(s)[None] for s in seqs], names)
        padded = ct.collect(model, padded_batches(seqs, 4, model.config["pad_token_id"]), names)
    assert alone.keys() == padded.keys()
    for site, (xtx, rows, mods) in alone.items():
        assert rows == sum(map(len, seqs)) == padded[site][1]
        assert mods == padded[site][2]
        torch.testing.assert_close(padded[site][0], xtx, rtol=1e-5, atol=1e-6 * float(xtx.abs().max()))


def test_sites_group_modules_reading_one_input(model):
    """q/k/v and gate/up share a site named after the first in model order,
    whatever order the names are given in; PEFT-style names are stripped."""
    seqs = [torch.tensor([[256, 104, 105, 259, 105, 257]])]
    p = "model.layers.2."
    got = ct.collect(model, seqs, [p + "mlp.up_proj", p + "self_attn.v_proj", p + "self_attn.k_proj",
                                   p + "mlp.down_proj", p + "mlp.gate_proj", p + "self_attn.o_proj"])
    assert {s: m for s, (_, _, m) in got.items()} == {
        p + "self_attn.k_proj": [p + "self_attn.k_proj", p + "self_attn.v_proj"],
        p + "self_attn.o_proj": [p + "self_attn.o_proj"],
        p + "mlp.gate_proj": [p + "mlp.gate_proj", p + "mlp.up_proj"],
        p + "mlp.down_proj": [p + "mlp.down_proj"]}
    assert all(rows == 6 for _, rows, _ in got.values())
    assert got[p + "mlp.down_proj"][0].shape == (688, 688) and got[p + "mlp.down_proj"][0].dtype == torch.float64
    assert ct.peft_stripped("base_model.model." + p + "self_attn.q_proj.base_layer") == p + "self_attn.q_proj"
    with pytest.raises(ValueError, match="no nn.Linear named"):
        ct.collect(model, seqs, [p + "self_attn.x_proj"])


def test_sketch_rule():
    """The tail rule (inclusive, smallest first), max_rank, the sign convention."""
    # Exact eigenvalues (a diagonal c), trace 16: tail 1/32 keeps 0.5 of it,
    # which drops 0.25 + 0.25 exactly and not the 0.5 after them.
    c = np.diag([0.25, 8.0, 0.25, 3.0, 0.5, 4.0])
    values, vectors, diagonal = ct.sketch(c, tail=1 / 32)
    assert values.tolist() == [8.0, 4.0, 3.0, 0.5]
    assert vectors.tolist() == np.eye(6)[[1, 5, 3, 4]].tolist()
    assert diagonal.tolist() == [0.25, 0, 0.25, 0, 0, 0]
    assert len(ct.sketch(c, tail=1 / 33)[0]) == 5
    assert len(ct.sketch(c, tail=1 / 32, max_rank=2)[0]) == 2
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    c = q @ np.diag([10.0, 5.0, 1.0, 0.006, 0.003, 0.001]) @ q.T
    values, vectors, diagonal = ct.sketch(c)  # 1e-3 of 16.01: drops 0.001 + 0.003 + 0.006
    assert len(values) == 3 and np.allclose(values, [10, 5, 1])
    for v in vectors:
        assert v[np.argmax(np.abs(v))] > 0
    assert np.trace(vectors.T @ np.diag(values) @ vectors) + diagonal.sum() == pytest.approx(np.trace(c))
    values, vectors, diagonal = ct.sketch(c, tail=1.0)
    assert len(values) == 0 and np.allclose(diagonal, np.diag(c))


def test_write_refuses_what_the_reader_refuses(tmp_path):
    xtx = torch.eye(3, dtype=torch.float64)
    with pytest.raises(ct.CalibrationError, match="listed twice"):
        ct.write(tmp_path / "t.safetensors", "t", "", 1, {"a": (xtx, 3, ["m"]), "b": (xtx, 3, ["m"])})
    with pytest.raises(ct.CalibrationError, match="no input rows"):
        ct.write(tmp_path / "t.safetensors", "t", "", 1, {"a": (xtx, 0, ["m"])})
    assert not list(tmp_path.iterdir())


def test_command_line_help_and_missing_packages(tmp_path):
    r = subprocess.run([sys.executable, str(TOOL), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--adapter" in r.stdout and "--encoding" in r.stdout
    try:
        import transformers  # noqa: F401
        import peft  # noqa: F401
        pytest.skip("transformers and peft are installed: the missing-package message is not reachable")
    except ImportError:
        pass
    r = subprocess.run([sys.executable, str(TOOL), "--model", str(MODEL), "--adapter", str(ADAPTERS / TASKS[0]),
                        "--data", str(DATA / TASKS[0] / "calib.jsonl"), "-o", str(tmp_path / "x.safetensors")],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "pip install" in r.stderr and "Traceback" not in r.stderr


STAND_IN_TRANSFORMERS = """
import llama_torch
class AutoModelForCausalLM:
    @staticmethod
    def from_pretrained(path, torch_dtype=None):
        return llama_torch.load_model(path, torch_dtype)
"""
STAND_IN_PEFT = """
import llama_torch
class PeftModel:
    @staticmethod
    def from_pretrained(model, adapter_dir):
        llama_torch.apply_lora(model, adapter_dir)
        return model
"""


def test_command_line_with_stand_in_packages(files, tmp_path):
    """The command line end to end (byte encoding, padded batches, only the
    adapted sites kept, the task named after the adapter), with stand-ins
    for transformers and peft that load llama_torch.py's model: the file
    hydraopt calibrate wrote."""
    ours, _, _ = files
    (tmp_path / "transformers.py").write_text(STAND_IN_TRANSFORMERS)
    (tmp_path / "peft.py").write_text(STAND_IN_PEFT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(HERE)]))
    task = TASKS[1]
    out = tmp_path / "out" / f"{task}.safetensors"
    subprocess.run([sys.executable, str(TOOL), "--model", str(MODEL), "--adapter", str(ADAPTERS / task),
                    "--data", str(DATA / task / "calib.jsonl"), "--examples", str(EXAMPLES), "--batch-size", "5",
                    "-o", str(out)], env=env, check=True)
    a, b = ct.read(ours / f"{task}.safetensors"), ct.read(out)
    for key in ("task", "base_model", "examples", "rows"):
        assert a[key] == b[key], key
    assert {s: v["modules"] for s, v in a["sites"].items()} == {s: v["modules"] for s, v in b["sites"].items()}
    for site, sa in a["sites"].items():
        ca, cb = ct.dense(sa), ct.dense(b["sites"][site])
        assert np.linalg.norm(ca - cb) / np.linalg.norm(ca) <= TOLERANCE, site
