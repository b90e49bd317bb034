#!/usr/bin/python3
"""Independent numpy reference for the tiny LLaMA forward pass.

Writes a random model (config.json + model.safetensors, bytes produced here)
and a random LoRA adapter (PEFT directory), then the logits of a fixed token
sequence with and without the adapter, to OUT/expected.json.

Usage: llama_ref.py OUT_DIR
"""
import json
import os
import struct
import sys

import numpy as np


def write_safetensors(path, tensors):
    header, offset, blobs = {}, 0, []
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype="<f4")
        b = a.tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def rms(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def rope(x, n_heads, hd, theta):
    t = np.arange(x.shape[0])[:, None]
    inv = theta ** (-2.0 * np.arange(hd // 2) / hd)
    ang = t * inv[None, :]
    cos = np.concatenate([np.cos(ang), np.cos(ang)], -1)
    sin = np.concatenate([np.sin(ang), np.sin(ang)], -1)
    out = np.empty_like(x)
    for h in range(n_heads):
        v = x[:, h * hd:(h + 1) * hd]
        rot = np.concatenate([-v[:, hd // 2:], v[:, :hd // 2]], -1)
        out[:, h * hd:(h + 1) * hd] = v * cos + rot * sin
    return out


def forward(w, cfg, tokens, lora):
    d, hd, H, KV = cfg["hidden_size"], cfg["head_dim"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    eps, theta = cfg["rms_norm_eps"], cfg["rope_theta"]

    def lin(x, name):
        y = x @ w[name + ".weight"].T
        if name in lora:
            a, b, s = lora[name]
            y = y + s * (x @ a.T) @ b.T
        return y

    x = w["model.embed_tokens.weight"][tokens].astype(np.float64)
    T = len(tokens)
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        h = rms(x, w[p + "input_layernorm.weight"], eps)
        q = rope(lin(h, p + "self_attn.q_proj"), H, hd, theta)
        k = rope(lin(h, p + "self_attn.k_proj"), KV, hd, theta)
        v = lin(h, p + "self_attn.v_proj")
        att = np.zeros((T, H * hd))
        for head in range(H):
            kv = head // (H // KV)
            s = q[:, head * hd:(head + 1) * hd] @ k[:, kv * hd:(kv + 1) * hd].T / np.sqrt(hd)
            s = s + np.triu(np.full((T, T), -np.inf), 1)
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            att[:, head * hd:(head + 1) * hd] = s @ v[:, kv * hd:(kv + 1) * hd]
        x = x + lin(att, p + "self_attn.o_proj")
        h2 = rms(x, w[p + "post_attention_layernorm.weight"], eps)
        g = lin(h2, p + "mlp.gate_proj")
        x = x + lin(g / (1 + np.exp(-g)) * lin(h2, p + "mlp.up_proj"), p + "mlp.down_proj")
    return rms(x, w["model.norm.weight"], eps) @ w["lm_head.weight"].T


def main():
    out = sys.argv[1]
    rng = np.random.default_rng(7)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32,
           "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "head_dim": 8, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
           "vocab_size": 260, "max_position_embeddings": 64, "tie_word_embeddings": False,
           "bos_token_id": 256, "eos_token_id": 257, "pad_token_id": 258, "sep_token_id": 259}
    d, I, V, hd = 32, 48, 260, 8
    shapes = {"model.embed_tokens.weight": (V, d), "lm_head.weight": (V, d), "model.norm.weight": (d,)}
    for l in range(2):
        p = f"model.layers.{l}."
        shapes.update({p + "self_attn.q_proj.weight": (4 * hd, d), p + "self_attn.k_proj.weight": (2 * hd, d),
                       p + "self_attn.v_proj.weight": (2 * hd, d), p + "self_attn.o_proj.weight": (d, 4 * hd),
                       p + "mlp.gate_proj.weight": (I, d), p + "mlp.up_proj.weight": (I, d),
                       p + "mlp.down_proj.weight": (d, I), p + "input_layernorm.weight": (d,),
                       p + "post_attention_layernorm.weight": (d,)})
    w = {}
    for name, shape in shapes.items():
        if len(shape) == 1:
            w[name] = (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            w[name] = (rng.standard_normal(shape) / np.sqrt(shape[1])).astype(np.float32)
    os.makedirs(os.path.join(out, "model"), exist_ok=True)
    with open(os.path.join(out, "model", "config.json"), "w") as f:
        json.dump(cfg, f)
    write_safetensors(os.path.join(out, "model", "model.safetensors"), w)

    r, alpha = 4, 8
    lora, tensors = {}, {}
    for l in range(2):
        for proj, (o, i) in {"q_proj": (4 * hd, d), "k_proj": (2 * hd, d), "v_proj": (2 * hd, d),
                             "o_proj": (d, 4 * hd)}.items():
            name = f"model.layers.{l}.self_attn.{proj}"
            a = (rng.standard_normal((r, i)) / np.sqrt(i)).astype(np.float32)
            b = (0.3 * rng.standard_normal((o, r))).astype(np.float32)
            lora[name] = (a.astype(np.float64), b.astype(np.float64), alpha / r)
            tensors[f"base_model.model.{name}.lora_A.weight"] = a
            tensors[f"base_model.model.{name}.lora_B.weight"] = b
    os.makedirs(os.path.join(out, "adapter"), exist_ok=True)
    with open(os.path.join(out, "adapter", "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "r": r, "lora_alpha": alpha,
                   "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
                   "base_model_name_or_path": "ref-model"}, f)
    write_safetensors(os.path.join(out, "adapter", "adapter_model.safetensors"), tensors)

    w64 = {k: v.astype(np.float64) for k, v in w.items()}
    tokens = [256] + list(b"hydra-opt") + [259, 72, 105]
    expected = {"tokens": tokens,
                "base": forward(w64, cfg, tokens, {}).tolist(),
                "adapter": forward(w64, cfg, tokens, lora).tolist()}
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f)


if __name__ == "__main__":
    main()
