"""A tiny LLaMA in PyTorch, for tests: a port of llama_ref.py's numpy forward
pass with nn.Linear modules named as Hugging Face names them
(model.layers.N.self_attn.{q,k,v,o}_proj, model.layers.N.mlp.{gate,up,down}_proj),
so that tools/calibrate_torch.py can hook them as it would a real model.

    model = load_model(SRC / "assets" / "model")          # config.json + model.safetensors
    with lora(model, SRC / "assets" / "adapters" / "spell-de"):
        logits = model(input_ids)                         # [B, T] -> [B, T, vocab]

A PEFT adapter is applied as forward hooks on the adapted nn.Linear modules
that add s * B A x to their outputs (s = alpha / r, or alpha / sqrt(r) with
use_rslora; rank_pattern / alpha_pattern as PEFT matches them), so a forward
pre-hook on a module still sees the module's own input. model(input_ids,
attention_mask) takes right-padded batches: padding keys are masked out and
the real tokens' rows are those of the unpadded sequences.

Needs torch and numpy only (no transformers); weights are read with a small
safetensors reader here.
"""
import contextlib
import json
import math
import pathlib
import re
import struct

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

PEFT_PREFIX = "base_model.model."


def read_safetensors(path):
    """name -> numpy array (F32, F16, BF16 or F64 as float32/float64)."""
    data = pathlib.Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    body = data[8 + n:]
    out = {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        raw = body[b:e]
        if info["dtype"] == "F32":
            a = np.frombuffer(raw, dtype="<f4")
        elif info["dtype"] == "F64":
            a = np.frombuffer(raw, dtype="<f8")
        elif info["dtype"] == "F16":
            a = np.frombuffer(raw, dtype="<f2").astype(np.float32)
        elif info["dtype"] == "BF16":
            a = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            raise ValueError(f"{path}: {name}: dtype {info['dtype']} not supported")
        out[name] = a.reshape(info["shape"]).copy()
    return out


class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate(x, cos, sin):
    """x [B, heads, T, hd]: the rotary embedding (halves rotated, as llama_ref.rope)."""
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rot * sin


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, hd = cfg["hidden_size"], cfg["head_dim"]
        self.heads, self.kv_heads, self.hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], hd
        # Created in Hugging Face's order: q, k, v, o (the model order).
        self.q_proj = nn.Linear(d, self.heads * hd, bias=False)
        self.k_proj = nn.Linear(d, self.kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(d, self.kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(self.heads * hd, d, bias=False)

    def forward(self, h, cos, sin, mask):
        B, T, _ = h.shape
        q = self.q_proj(h).view(B, T, self.heads, self.hd).transpose(1, 2)
        k = self.k_proj(h).view(B, T, self.kv_heads, self.hd).transpose(1, 2)
        v = self.v_proj(h).view(B, T, self.kv_heads, self.hd).transpose(1, 2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        group = self.heads // self.kv_heads
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(self.hd)
        s = s.masked_fill(~mask, float("-inf"))
        att = torch.softmax(s, dim=-1) @ v  # [B, heads, T, hd]
        return self.o_proj(att.transpose(1, 2).reshape(B, T, self.heads * self.hd))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, i = cfg["hidden_size"], cfg["intermediate_size"]
        self.gate_proj = nn.Linear(d, i, bias=False)
        self.up_proj = nn.Linear(d, i, bias=False)
        self.down_proj = nn.Linear(i, d, bias=False)

    def forward(self, h):
        return self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class DecoderLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])
        self.post_attention_layernorm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg["num_hidden_layers"]))
        self.norm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.model = Decoder(cfg)
        self.lm_head = nn.Linear(cfg["hidden_size"], cfg["vocab_size"], bias=False)

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        # use_cache: accepted (and ignored) as Hugging Face models accept it.
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        B, T = input_ids.shape
        cfg = self.config
        hd = cfg["head_dim"]
        # cos / sin in float64, then the model's dtype (as hydraopt's tables).
        inv = cfg["rope_theta"] ** (-2.0 * torch.arange(hd // 2, dtype=torch.float64) / hd)
        ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
        dtype = self.lm_head.weight.dtype
        cos = torch.cat([ang.cos(), ang.cos()], -1).to(dtype)
        sin = torch.cat([ang.sin(), ang.sin()], -1).to(dtype)
        mask = torch.ones(T, T, dtype=torch.bool).tril()[None, None]  # [1, 1, T, T]: query, key
        if attention_mask is not None:
            mask = mask & (attention_mask != 0)[:, None, None, :]
        x = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            x = layer(x, cos, sin, mask)
        return self.lm_head(self.model.norm(x))


def load_model(model_dir, dtype=torch.float32):
    """The model of a directory with config.json and model.safetensors."""
    model_dir = pathlib.Path(model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg.setdefault("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
    model = LlamaForCausalLM(cfg)
    weights = read_safetensors(model_dir / "model.safetensors")
    state = model.state_dict()
    missing = set(state) - set(weights)
    if missing:
        raise ValueError(f"{model_dir}: model.safetensors lacks {sorted(missing)[:3]}")
    model.load_state_dict({k: torch.from_numpy(np.asarray(weights[k], dtype=np.float32)) for k in state})
    model.requires_grad_(False)  # inference only
    return model.to(dtype).eval()


def _pattern_value(patterns, module, default):
    # PEFT's get_pattern_key: the first key (in file order) matching a
    # dot-separated suffix of the module name.
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def adapter_deltas(adapter_dir):
    """module (PEFT-stripped) -> (A [r, in], B [out, r], scale) of a PEFT LoRA adapter."""
    adapter_dir = pathlib.Path(adapter_dir)
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    tensors = read_safetensors(adapter_dir / "adapter_model.safetensors")
    out = {}
    for name in tensors:
        m = re.fullmatch(re.escape(PEFT_PREFIX) + r"(.*)\.lora_A\.weight", name)
        if not m:
            continue
        module = m.group(1)
        a, b = tensors[name], tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"]
        r = _pattern_value(cfg.get("rank_pattern") or {}, module, cfg["r"])
        alpha = _pattern_value(cfg.get("alpha_pattern") or {}, module, cfg["lora_alpha"])
        if a.shape[0] != r:
            raise ValueError(f"{adapter_dir}: {module}: lora_A has rank {a.shape[0]}, config {r}")
        scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        out[module] = (a, b, scale)
    return out


def apply_lora(model, adapter_dir):
    """Adds the adapter's s * B A x to the outputs of its modules (forward
    hooks); returns the hook handles (remove() them to take it off)."""
    modules = dict(model.named_modules())
    dtype = model.lm_head.weight.dtype
    handles = []
    for name, (a, b, scale) in adapter_deltas(adapter_dir).items():
        if name not in modules or not isinstance(modules[name], nn.Linear):
            raise ValueError(f"{adapter_dir}: module {name} is not an nn.Linear of the model")
        A = torch.from_numpy(np.asarray(a, dtype=np.float32)).to(dtype)
        B = torch.from_numpy(np.asarray(b, dtype=np.float32)).to(dtype)

        def hook(module, inputs, output, A=A, B=B, scale=scale):
            return output + scale * F.linear(F.linear(inputs[0], A), B)
        handles.append(modules[name].register_forward_hook(hook))
    return handles


@contextlib.contextmanager
def lora(model, adapter_dir):
    """The adapter applied within the block."""
    handles = apply_lora(model, adapter_dir)
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
