"""PEFT interoperability of `hydraopt export`, checked with code that is not ours.

`hydraopt merge` compresses four of the shipped adapters, `hydraopt export`
writes tasks back as PEFT adapter directories, and this file then:
  - reads the exported (and the original) adapter_model.safetensors and the
    base model with its own safetensors parser (struct + json + numpy;
    Debian 12 has no python3-safetensors);
  - resolves each module's rank and alpha as PEFT does (rank_pattern /
    alpha_pattern: the first key, in file order, whose `(.*\\.)?(key)$`
    matches the module name; scaling alpha/r, or alpha/sqrt(r) with
    use_rslora) and checks lora_A has that many rows, as PEFT's loader would;
  - applies the adapter with torch to the tiny base model's weights,
    W' = W + scaling * B @ A (PEFT's merge), and compares with ours: the
    bundle's reconstructed update (Python bindings), the per-task error in
    the merge report, and hydraopt's forward pass against a torch LLaMA
    forward written here over the merged weights.

Run by ctest (python.peft_interop) with PYTHONPATH at the built module and
HYDRAOPT_CLI at the built CLI.
"""
import json
import math
import os
import pathlib
import re
import struct
import subprocess

import numpy as np
import pytest
import torch

import hydraopt

SRC = pathlib.Path(os.environ.get("HYDRAOPT_SOURCE_DIR", pathlib.Path(__file__).resolve().parents[2]))
CLI = os.environ.get("HYDRAOPT_CLI", str(SRC / "build" / "hydraopt"))
MODEL = SRC / "assets" / "model"
ADAPTERS = SRC / "assets" / "adapters"
TASKS = ["spell-de", "hyph-fr", "rev-it", "cap-pl"]
PREFIX = "base_model.model."

torch.set_num_threads(1)


# ---------------------------------------------------------------- an independent safetensors reader

def read_safetensors(path):
    """name -> float64 numpy array; checks the layout rules of the format."""
    data = pathlib.Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    assert 8 + n <= len(data)
    header = json.loads(data[8:8 + n].decode("utf-8"))
    header.pop("__metadata__", None)
    body = data[8 + n:]
    spans, out = [], {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        count = math.prod(info["shape"])
        raw = body[begin:end]
        if info["dtype"] == "F32":
            a = np.frombuffer(raw, dtype="<f4")
        elif info["dtype"] == "F16":
            a = np.frombuffer(raw, dtype="<f2")
        elif info["dtype"] == "BF16":  # the high half of a float32
            a = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        elif info["dtype"] == "F64":
            a = np.frombuffer(raw, dtype="<f8")
        else:
            raise AssertionError(f"{path}: unexpected dtype {info['dtype']}")
        assert a.size == count, f"{path}: {name}: {a.size} values for shape {info['shape']}"
        spans.append((begin, end))
        out[name] = a.astype(np.float64).reshape(info["shape"])
    spans.sort()
    assert spans[0][0] == 0 and spans[-1][1] == len(body), f"{path}: data does not fill the file"
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:])), f"{path}: gaps or overlaps"
    return out


# ---------------------------------------------------------------- PEFT's per-module rank and alpha

def pattern_value(pattern, module, default):
    for key, value in pattern.items():  # dict order = file order; first match wins
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def peft_lora(adapter_dir):
    """module -> (A, B, scaling), as PEFT would build and load the layers."""
    d = pathlib.Path(adapter_dir)
    cfg = json.loads((d / "adapter_config.json").read_text())
    return peft_layers(read_safetensors(d / "adapter_model.safetensors"), cfg, d), cfg


def peft_layers(tensors, cfg, d="state dict"):
    """module -> (A, B, scaling) of a state dict and its adapter_config."""
    out = {}
    for name, a in tensors.items():
        if not name.endswith(".lora_A.weight"):
            continue
        module = name[len(PREFIX):-len(".lora_A.weight")]
        b = tensors[PREFIX + module + ".lora_B.weight"]
        r = pattern_value(cfg.get("rank_pattern") or {}, module, cfg.get("r", 8))
        alpha = pattern_value(cfg.get("alpha_pattern") or {}, module, cfg.get("lora_alpha", 8))
        assert a.shape[0] == r and b.shape[1] == r, f"{d}: {module}: factors of rank {a.shape[0]}, config says {r}"
        scaling = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        out[module] = (a, b, scaling)
    assert len(tensors) == 2 * len(out), f"{d}: tensors other than lora_A/lora_B pairs"
    return out


def merged_weights(base, lora):
    """PEFT's merge with torch: W + scaling * B @ A on every adapted module."""
    w = {k: torch.from_numpy(v) for k, v in base.items()}
    for module, (a, b, s) in lora.items():
        key = module + ".weight"
        w[key] = w[key] + s * (torch.from_numpy(b) @ torch.from_numpy(a))
    return w


# ---------------------------------------------------------------- a torch LLaMA forward (Hugging Face conventions)

def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def llama_logits(w, cfg, tokens):
    d, H, KV = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim", d // H)
    eps, theta = cfg["rms_norm_eps"], cfg["rope_theta"]
    T = len(tokens)

    def norm(x, g):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g

    inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = torch.outer(torch.arange(T, dtype=torch.float64), inv)
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)
    mask = torch.full((T, T), float("-inf"), dtype=torch.float64).triu(1)

    x = w["model.embed_tokens.weight"][torch.tensor(tokens)]
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        h = norm(x, w[p + "input_layernorm.weight"])
        q = (h @ w[p + "self_attn.q_proj.weight"].T).view(T, H, hd).transpose(0, 1)
        k = (h @ w[p + "self_attn.k_proj.weight"].T).view(T, KV, hd).transpose(0, 1)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).view(T, KV, hd).transpose(0, 1)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = k.repeat_interleave(H // KV, 0), v.repeat_interleave(H // KV, 0)
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(hd) + mask, -1) @ v
        x = x + att.transpose(0, 1).reshape(T, H * hd) @ w[p + "self_attn.o_proj.weight"].T
        h = norm(x, w[p + "post_attention_layernorm.weight"])
        gate = torch.nn.functional.silu(h @ w[p + "mlp.gate_proj.weight"].T)
        x = x + (gate * (h @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
    return (norm(x, w["model.norm.weight"]) @ w["lm_head.weight"].T).numpy()


# ---------------------------------------------------------------- fixtures

def run(*args):
    r = subprocess.run([CLI, *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, f"hydraopt {' '.join(map(str, args))}: {r.stderr}"
    return r.stdout


@pytest.fixture(scope="module")
def base():
    return read_safetensors(MODEL / "model.safetensors")


@pytest.fixture(scope="module")
def model_cfg():
    return json.loads((MODEL / "config.json").read_text())


@pytest.fixture(scope="module", params=[0.5, 1.0], ids=["budget0.5", "budget1"])
def merged(request, tmp_path_factory):
    """(bundle path, report, export dir) of a CLI merge of TASKS and export --all."""
    d = tmp_path_factory.mktemp(f"b{request.param}")
    run("merge", *(ADAPTERS / t for t in TASKS), "--budget", request.param,
        "-o", d / "bundle.safetensors", "--report", d / "report.json")
    run("export", d / "bundle.safetensors", "--all", "-o", d / "peft")
    return d / "bundle.safetensors", json.loads((d / "report.json").read_text()), d / "peft"


# ---------------------------------------------------------------- tests

def test_exported_update_equals_bundle_reconstruction(merged, base):
    """torch's W' - W from the exported adapter == the bundle's dW_hat (bindings)."""
    bundle_path, _, peft = merged
    bundle = hydraopt.Bundle(bundle_path)
    worst = 0.0
    for task in TASKS:
        lora, _ = peft_lora(peft / task)
        assert sorted(lora) == sorted(bundle.modules)
        w = merged_weights(base, lora)
        for module in lora:
            peft_dw = (w[module + ".weight"] - torch.from_numpy(base[module + ".weight"])).numpy()
            ours = bundle.update(task, module)
            scale = np.abs(ours).max()
            assert scale > 0
            worst = max(worst, np.abs(peft_dw - ours).max() / scale)
    print(f"max |dW_peft - dW_bundle| / max |dW_bundle| = {worst:.3g}")
    assert worst < 1e-5  # F32 rounding of the exported factors and of W'


def test_exported_error_is_the_reported_error(merged):
    """Each task's error of the exported adapter against the original, as PEFT applies both,
    is the rel_error the merge report states."""
    _, report, peft = merged
    reported = {t["name"]: t["rel_error"] for t in report["tasks"]}
    for task in TASKS:
        exported, _ = peft_lora(peft / task)
        original, _ = peft_lora(ADAPTERS / task)
        num = den = 0.0
        for module, (a, b, s) in original.items():
            dw = s * torch.from_numpy(b) @ torch.from_numpy(a)
            ea, eb, es = exported[module]
            num += float(((es * torch.from_numpy(eb) @ torch.from_numpy(ea)) - dw).pow(2).sum())
            den += float(dw.pow(2).sum())
        err = math.sqrt(num / den)
        print(f"{task}: budget {report['budget']}: exported error {err:.6g}, reported {reported[task]:.6g}")
        assert err == pytest.approx(reported[task], rel=1e-4, abs=1e-6)
    if report["budget"] < 1:
        assert min(reported.values()) > 0.01  # really compressed: the check above is not 0 == 0
    else:
        assert max(reported.values()) < 1e-5


def test_export_uses_patterns_for_per_module_scaling(merged):
    """The export keeps scaling exact through lora_alpha / rank_pattern / alpha_pattern; the check
    above only means something if those keys are really what gives each module its scaling."""
    _, report, peft = merged
    cfg = json.loads((peft / TASKS[0] / "adapter_config.json").read_text())
    assert cfg.get("peft_type", "LORA") == "LORA"
    lora, _ = peft_lora(peft / TASKS[0])
    scalings = {s for _, _, s in lora.values()}
    ranks = {a.shape[0] for a, _, _ in lora.values()}
    if len(ranks) > 1:
        assert cfg.get("rank_pattern"), "modules of different ranks need rank_pattern"
    # Ignoring the patterns must change the scaling of some module (unless all agree).
    plain = {cfg["lora_alpha"] / a.shape[0] for a, _, _ in lora.values()}
    print(f"budget {report['budget']}: ranks {sorted(ranks)}, scalings {sorted(scalings)}, "
          f"rank_pattern {len(cfg.get('rank_pattern') or {})} keys, "
          f"alpha_pattern {len(cfg.get('alpha_pattern') or {})} keys")
    if report["budget"] < 1:
        assert len(ranks) > 1 or plain != scalings


def test_forward_with_exported_adapter_matches_hydraopt(merged, base, model_cfg):
    """Logits of a torch forward over W + scaling*B@A (the exported adapter merged PEFT's way)
    against hydraopt's own forward pass applying the bundle task directly."""
    bundle_path, _, peft = merged
    model = hydraopt.Model(MODEL)
    bundle = hydraopt.Bundle(bundle_path)
    tokens = model.encode_prompt("Grundstücksverkehrsgenehmigung") + list(b"Gr")
    torch_base = llama_logits({k: torch.from_numpy(v) for k, v in base.items()}, model_cfg, tokens)
    ours_base = model.forward(tokens)
    assert np.abs(torch_base - ours_base).max() < 1e-3 * np.abs(torch_base).max()
    for task in TASKS[:2]:
        lora, _ = peft_lora(peft / task)
        peft_logits = llama_logits(merged_weights(base, lora), model_cfg, tokens)
        ours = model.forward(tokens, bundle=bundle, task=task)
        diff = np.abs(peft_logits - ours).max()
        effect = np.abs(peft_logits - torch_base).max()
        print(f"{task}: max |logits_torch - logits_hydraopt| = {diff:.3g} "
              f"(adapter's effect on the logits {effect:.3g}, logit scale {np.abs(peft_logits).max():.3g})")
        assert effect > 0.05  # the adapter matters, so the comparison can tell
        assert diff < 2e-3 * np.abs(peft_logits).max()
        assert diff < 0.05 * effect


def test_task_adapter_is_the_cli_export_and_loads_into_torch(merged, base, model_cfg):
    """Bundle.task_adapter (no files) against the CLI's export of the CLI's bundle, read by the
    reader above: the same tensors (float64 values that round to the file's F32 bits) and config;
    applied with torch,
    PEFT's way, it gives the reported error against the original adapter and hydraopt's logits."""
    bundle_path, report, peft = merged
    bundle = hydraopt.Bundle(bundle_path)
    reported = {t["name"]: t["rel_error"] for t in report["tasks"]}
    model = hydraopt.Model(MODEL)
    tokens = model.encode_prompt("Rechtschreibung") + list(b"Re")
    for task in TASKS:
        state, config = bundle.task_adapter(task)
        files = read_safetensors(peft / task / "adapter_model.safetensors")
        assert sorted(state) == sorted(files)
        for name, array in state.items():
            assert array.dtype == np.float64 and array.shape == files[name].shape
            np.testing.assert_array_equal(array.astype(np.float32), files[name].astype(np.float32),
                                          err_msg=f"{task}: {name}")
        assert config == json.loads((peft / task / "adapter_config.json").read_text())

        lora = peft_layers({k: v.copy() for k, v in state.items()}, config)
        original, _ = peft_lora(ADAPTERS / task)
        num = den = 0.0
        for module, (a, b, s) in original.items():
            dw = s * torch.from_numpy(b) @ torch.from_numpy(a)
            ea, eb, es = lora[module]
            num += float(((es * torch.from_numpy(eb) @ torch.from_numpy(ea)) - dw).pow(2).sum())
            den += float(dw.pow(2).sum())
        assert math.sqrt(num / den) == pytest.approx(reported[task], rel=1e-4, abs=1e-6)
        if task == TASKS[0]:
            logits = llama_logits(merged_weights(base, lora), model_cfg, tokens)
            ours = model.forward(tokens, bundle=bundle, task=task)
            assert np.abs(logits - ours).max() < 2e-3 * np.abs(logits).max()
    with pytest.raises(hydraopt.Error, match="no task 'spell-xx'"):
        bundle.task_adapter("spell-xx")
