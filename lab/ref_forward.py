#!/usr/bin/env python3
"""Pure-Python (float64, no dependencies) reference forward pass of the lab's
tiny LLaMA, written from the spec in lab/README.md, for cross-checking
`hydraopt-lab logits` and the Eigen implementation.

usage: ref_forward.py MODEL_DIR TEXT [ADAPTER_DIR]
prints the logits of the last position for BOS + TEXT bytes as a JSON list.
Slow (seconds for a short text with the default sizes) but independent.
"""
import json, struct, sys, math, array
def load(path):
    b = open(path, 'rb').read(); n = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8+n]); data = b[8+n:]
    out = {}
    for k, v in h.items():
        if k == '__metadata__': continue
        s, e = v['data_offsets']; a = array.array('f'); a.frombytes(data[s:e]); a = list(a)
        shp = v['shape']
        out[k] = [a[i*shp[1]:(i+1)*shp[1]] for i in range(shp[0])] if len(shp) == 2 else a
    return out
mdir, text = sys.argv[1], sys.argv[2]; adir = sys.argv[3] if len(sys.argv) > 3 else None
cfg = json.load(open(mdir + '/config.json')); W = load(mdir + '/model.safetensors')
d, H, KV, hd, L, eps, theta = cfg['hidden_size'], cfg['num_attention_heads'], cfg['num_key_value_heads'], cfg['head_dim'], cfg['num_hidden_layers'], cfg['rms_norm_eps'], cfg['rope_theta']
A = None
if adir:
    ac = json.load(open(adir + '/adapter_config.json')); A = load(adir + '/adapter_model.safetensors'); sc = ac['lora_alpha'] / ac['r']
def mv(M, x): return [sum(r[i]*x[i] for i in range(len(x))) for r in M]
def lin(name, x):
    y = mv(W[name + '.weight'], x)
    if A is not None and ('base_model.model.' + name + '.lora_A.weight') in A:
        a = mv(A['base_model.model.' + name + '.lora_A.weight'], x); b = mv(A['base_model.model.' + name + '.lora_B.weight'], a)
        y = [y[i] + sc*b[i] for i in range(len(y))]
    return y
def rms(x, w): r = 1/math.sqrt(sum(v*v for v in x)/len(x) + eps); return [x[i]*r*w[i] for i in range(len(x))]
def rope(v, pos):
    half = hd//2; out = list(v)
    for j in range(half):
        ang = pos * theta ** (-2*j/hd); c, s = math.cos(ang), math.sin(ang)
        out[j] = v[j]*c - v[j+half]*s; out[j+half] = v[j+half]*c + v[j]*s
    return out
toks = [256] + list(text.encode())
xs = [list(W['model.embed_tokens.weight'][t]) for t in toks]
for l in range(L):
    p = f'model.layers.{l}.'
    hs = [rms(x, W[p+'input_layernorm.weight']) for x in xs]
    q = [lin(p+'self_attn.q_proj', h) for h in hs]; k = [lin(p+'self_attn.k_proj', h) for h in hs]; v = [lin(p+'self_attn.v_proj', h) for h in hs]
    q = [[x for hh in range(H) for x in rope(q[t][hh*hd:(hh+1)*hd], t)] for t in range(len(toks))]
    k = [[x for hh in range(KV) for x in rope(k[t][hh*hd:(hh+1)*hd], t)] for t in range(len(toks))]
    att = []
    for t in range(len(toks)):
        o = []
        for hh in range(H):
            g = hh // (H // KV); qq = q[t][hh*hd:(hh+1)*hd]
            sc_ = [sum(qq[i]*k[s][g*hd+i] for i in range(hd))/math.sqrt(hd) for s in range(t+1)]
            m = max(sc_); e = [math.exp(z-m) for z in sc_]; Z = sum(e)
            o += [sum(e[s]/Z*v[s][g*hd+i] for s in range(t+1)) for i in range(hd)]
        att.append(o)
    xs = [[a+b for a, b in zip(xs[t], lin(p+'self_attn.o_proj', att[t]))] for t in range(len(toks))]
    for t in range(len(toks)):
        h = rms(xs[t], W[p+'post_attention_layernorm.weight'])
        gt = mv(W[p+'mlp.gate_proj.weight'], h); up = mv(W[p+'mlp.up_proj.weight'], h)
        m = [gt[i]/(1+math.exp(-gt[i]))*up[i] for i in range(len(gt))]
        xs[t] = [a+b for a, b in zip(xs[t], mv(W[p+'mlp.down_proj.weight'], m))]
x = rms(xs[-1], W['model.norm.weight'])
print(json.dumps(mv(W['lm_head.weight'], x)))
