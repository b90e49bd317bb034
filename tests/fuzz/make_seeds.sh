#!/usr/bin/env bash
# Writes seed corpora for the fuzz targets into OUT/<target>/ from real files:
# adapters and a bundle made by the hydraopt CLI, the shipped adapters'
# configs, and a few configs and pattern keys of the shapes PEFT writes.
# Usage: tests/fuzz/make_seeds.sh HYDRAOPT_CLI OUT
set -euo pipefail
cli=$1
out=$2
src=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"/{safetensors,peft_config,pattern,bundle,llama_config,quant,calibration,plan}

# Small real adapters (tiny preset, rank 1: ~4 KB each) and bundles of them.
"$cli" synth "$work/s" --preset tiny --tasks 4 --rank 1 --seed 7 --statistics "$work/st" --statistics-rank 8 2>/dev/null
"$cli" merge "$work/s/task00" "$work/s/task01" "$work/s/task02" --budget 0.6 --dtype f16 \
  -o "$work/b.safetensors" >/dev/null
"$cli" merge "$work/s/task00" "$work/s/task01" --method jd-diag --budget 0.8 --dtype bf16 \
  -o "$work/jd.safetensors" >/dev/null
"$cli" export "$work/b.safetensors" --task task01 -o "$work/e" >/dev/null
cp "$work/s/task00/adapter_model.safetensors" "$out/safetensors/synth"
cp "$work/e/adapter_model.safetensors" "$out/safetensors/exported"
cp "$work/b.safetensors" "$out/safetensors/bundle"
cp "$work/b.safetensors" "$out/bundle/hydraopt"
cp "$work/jd.safetensors" "$out/bundle/jd-diag"
# Integer storage (format version 2): codes, scales and minima tensors.
"$cli" merge "$work/s/task00" "$work/s/task01" "$work/s/task02" --budget-bf16 0.3 \
  -o "$work/q.safetensors" --report "$out/plan/report-bytes" >/dev/null
cp "$work/q.safetensors" "$out/bundle/quantized"
cp "$work/q.safetensors" "$out/safetensors/quantized-bundle"
# Bundles with a history (issue 20): one task added, then one removed.
"$cli" add "$work/b.safetensors" "$work/s/task03" -o "$work/grown.safetensors" >/dev/null 2>&1
"$cli" remove "$work/grown.safetensors" --task task00 -o "$work/shrunk.safetensors" >/dev/null
cp "$work/grown.safetensors" "$out/bundle/grown"
cp "$work/shrunk.safetensors" "$out/bundle/shrunk"
# A calibrated bundle (its "calibration" record, issue 19), and synth's statistics.
"$cli" merge "$work/s/task00" "$work/s/task01" "$work/s/task02" --budget 0.6 --calibration "$work/st" \
  -o "$work/cal.safetensors" >/dev/null
cp "$work/cal.safetensors" "$out/bundle/calibrated"
cp "$work/st/task00.safetensors" "$out/calibration/synth"
# Plans (--plan): a report's (above: with integer formats), a bare list.
printf '%s' '[{"name":"model.layers.0.self_attn.q_proj","family":"shared-A+core","rank":2,"groups":0,"precision":{"body":"int4-g32-sym","head":"int3-g64-asym","core":"int8-g32-sym"}},{"name":"x","family":"exact","rank":0,"groups":0}]' > "$out/plan/list"

# The bundle's metadata JSON as plain text, then NUL, then the file without
# it (the second input form of bundle_fuzz).
python3 - "$work/b.safetensors" "$out/bundle/split" "$work/jd.safetensors" "$out/bundle/split-jd" \
  "$work/shrunk.safetensors" "$out/bundle/split-history" "$work/cal.safetensors" "$out/bundle/split-calibrated" <<'PY'
import json, struct, sys
for src, dst in zip(sys.argv[1::2], sys.argv[2::2]):
    data = open(src, "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__")["hydraopt"]
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    open(dst, "wb").write(meta.encode() + b"\0" + struct.pack("<Q", len(h)) + h + data[8 + n:])
PY

# Configs: the shipped adapters' (few distinct ones), synth's, an export's
# (rank_pattern / alpha_pattern written by hydraopt), and PEFT-shaped ones.
i=0
for f in "$src"/assets/adapters/*/adapter_config.json; do
  cp "$f" "$out/peft_config/asset$i"; i=$((i + 1)); [ $i -lt 3 ] || break
done
cp "$work/s/task00/adapter_config.json" "$out/peft_config/synth"
cp "$work/e/adapter_config.json" "$out/peft_config/exported"
cat > "$out/peft_config/patterns" <<'JSON'
{"peft_type":"LORA","r":8,"lora_alpha":16,"use_rslora":true,"fan_in_fan_out":false,
 "target_modules":["q_proj","v_proj"],"base_model_name_or_path":"m",
 "rank_pattern":{"model.layers.1.self_attn.q_proj":4,"layers\\.[0-9]+\\.mlp\\..*":2,"(q|v)_proj":6},
 "alpha_pattern":{"^model\\.layers\\.\\d{1,2}\\.self_attn\\.[qkv]_proj$":3.5,"down_proj":1e-3}}
JSON

# Model configs: the shipped tiny LLaMA's and shapes
# Hugging Face writes (no head_dim, nulls, rope_scaling, a list of eos ids).
cp "$src/assets/model/config.json" "$out/llama_config/shipped"
cat > "$out/llama_config/hf-llama" <<'JSON'
{"architectures":["LlamaForCausalLM"],"bos_token_id":1,"eos_token_id":2,"hidden_act":"silu",
 "hidden_size":4096,"initializer_range":0.02,"intermediate_size":11008,"max_position_embeddings":4096,
 "model_type":"llama","num_attention_heads":32,"num_hidden_layers":32,"num_key_value_heads":32,
 "pad_token_id":null,"pretraining_tp":1,"rms_norm_eps":1e-05,"rope_scaling":null,"rope_theta":10000.0,
 "tie_word_embeddings":false,"torch_dtype":"float16","transformers_version":"4.31.0","vocab_size":32000}
JSON
cat > "$out/llama_config/hf-llama3" <<'JSON'
{"_name_or_path":"meta-llama/Llama-3.2-1B","attention_bias":false,"bos_token_id":128000,
 "eos_token_id":[128001,128008,128009],"head_dim":64,"hidden_size":2048,"intermediate_size":8192,
 "max_position_embeddings":131072,"mlp_bias":false,"model_type":"llama","num_attention_heads":32,
 "num_hidden_layers":16,"num_key_value_heads":8,"rms_norm_eps":1e-05,
 "rope_scaling":{"factor":32.0,"high_freq_factor":4.0,"low_freq_factor":1.0,
 "original_max_position_embeddings":8192,"rope_type":"llama3"},"rope_theta":500000.0,
 "tie_word_embeddings":true,"vocab_size":128256}
JSON
cat > "$out/llama_config/mistral" <<'JSON'
{"model_type":"mistral","hidden_size":64,"intermediate_size":96,"num_hidden_layers":2,
 "num_attention_heads":4,"num_key_value_heads":2,"vocab_size":300,"sliding_window":null}
JSON

# Pattern keys: KEY NUL SUBJECT.
while IFS='|' read -r name key subject; do
  printf '%s\0%s' "$key" "$subject" > "$out/pattern/$name"
done <<'KEYS'
plain|q_proj|model.layers.0.self_attn.q_proj
dotted|layers.1.self_attn.q_proj|model.layers.1.self_attn.q_proj
class|layers\.[0-9]+\.mlp\.(up|down)_proj|model.layers.11.mlp.down_proj
counted|\d{1,2}\.self_attn\.[^k]_proj|model.layers.3.self_attn.v_proj
anchored|^model\.layers\.0\..*$|model.layers.0.self_attn.o_proj
nested|((a|b)*c)+?|abcbc
KEYS

# Stored integer factors (quant_fuzz.cc's layout): 3 bits, groups of 32,
# symmetric, 2 x 40 (30 code bytes, 4 scales of 1.0); and 4 bits, groups of
# 64, asymmetric, 3 x 70 (105 code bytes, 6 scales and 6 minima).
{ printf '\x01\x00\x01\x02\x28\x1e\x00\x04\x00'; head -c 30 /dev/zero | tr '\0' '\245'
  printf '\x00\x3c%.0s' 1 2 3 4; } > "$out/quant/int3-g32-sym"
{ printf '\x02\x01\x00\x03\x46\x69\x00\x06\x00'; head -c 105 /dev/zero | tr '\0' '\123'
  printf '\x00\x2c%.0s' 1 2 3 4 5 6; printf '\x00\xbc%.0s' 1 2 3 4 5 6; } > "$out/quant/int4-g64-asym"

# Calibration statistics (src/io/calibration.h), written by hand: one
# attention site (k 2 of in 4), a k = 0 site beside it, and a full-rank one.
python3 - "$out/calibration" <<'PY'
import json, struct, sys
def write(path, sites):
    meta = {"format": "hydraopt-calibration", "version": "1", "task": "seed", "base_model": "tiny",
            "examples": "3", "rows": "96", "sites": json.dumps({s: m for s, (m, _, _, _) in sites.items()})}
    tensors = {}
    for s, (_, values, vectors, diagonal) in sites.items():
        tensors[s + ".values"] = ([len(values)], values)
        tensors[s + ".vectors"] = ([len(vectors), len(diagonal)], [x for row in vectors for x in row])
        tensors[s + ".diagonal"] = ([len(diagonal)], diagonal)
    header, data = {"__metadata__": meta}, b""
    for name in sorted(tensors):
        shape, xs = tensors[name]
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [len(data), len(data) + 4 * len(xs)]}
        data += struct.pack("<%df" % len(xs), *xs)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-(8 + len(h)) % 8)
    open(path, "wb").write(struct.pack("<Q", len(h)) + h + data)
attn = (["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj"],
        [5.0, 2.0], [[0.6, 0.8, 0, 0], [0, 0, 0.8, -0.6]], [0.1, 0.2, 0.0, 0.4])
mlp = (["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"], [], [], [1.0, 2.0, 3.0])
write(sys.argv[1] + "/one-site", {"model.layers.0.self_attn.q_proj": attn})
write(sys.argv[1] + "/two-sites", {"model.layers.0.self_attn.q_proj": attn, "model.layers.0.mlp.gate_proj": mlp})
write(sys.argv[1] + "/full-rank", {"model.layers.1.self_attn.q_proj": (["model.layers.1.self_attn.q_proj"],
      [3.0, 3.0, 1.0], [[0, 1, 0], [1, 0, 0], [0, 0, -1]], [0.0, 0.0, 0.0])})
PY
