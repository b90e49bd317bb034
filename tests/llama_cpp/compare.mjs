// Runs hydraopt's GGUF exports in llama.cpp (node-llama-cpp's prebuilt CPU
// binaries) and compares the logits with hydraopt's own forward pass.
//
//   node compare.mjs MODEL.gguf REF.json [RESULT.json]
//
// REF.json comes from hydraopt_ref_logits (see ref_logits.cc): per case a
// LoRA .gguf, held-out examples as token ids, and our logits with and
// without the adapter. We feed llama.cpp the same token ids (no text
// tokenizer involved) and read its raw logits at the same positions.
//
// Two llama.cpp configurations, each with its tolerance:
//   - "f32 kv cache": keys and values kept in F32, so llama.cpp computes in
//     F32 throughout, like us; measured differences are float rounding
//     (about 1e-6 of the logit scale), tolerance 1e-4;
//   - "default (f16 kv cache)": what llama.cpp users get; keys and values
//     rounded to F16 cost about 1e-3 of the logit scale, tolerance 3e-3.
// Checks, per case and configuration (exit status 1 if any fails):
//   - agreement: max |llama.cpp - hydraopt| <= tolerance x logit scale, the
//     logit scale being the largest |logit| of hydraopt's rows for the case;
//   - the same greedy token (argmax) at every position whose top-2 margin
//     in our logits exceeds twice that tolerance;
//   - the adapter is applied: llama.cpp's logits differ from hydraopt's
//     base-model logits by more than EFFECT_FACTOR x the tolerance.
// And per configuration, the base model alone against our base logits.
//
// A LoRA with ggml block types (Q8_0, Q4_0, Q4_1: hydraopt's integer-stored
// factors, exactly their values) is computed by llama.cpp with the
// activations rounded to 8-bit blocks first (ggml's CPU matrix product
// converts src1 to the type's vec_dot_type, Q8_0 or Q8_1), so its LoRA
// branch is not exact arithmetic whatever the KV cache: measured up to
// 1.2e-3 of the logit scale. Such cases are held to BLOCK_TOL_REL (the
// default configuration's 3e-3) in both configurations; run.sh exports
// each of them a second time with F32 tensors (the same values), held to
// the F32 tolerance like every other case.
import fs from "node:fs";
import {getLlama, LlamaLogLevel, readGgufFileInfo} from "node-llama-cpp";

const CONFIGS = [
  {name: "f32 kv cache", kv: "F32", tolRel: 1e-4},
  {name: "default (f16 kv cache)", kv: "F16", tolRel: 3e-3},
];
const EFFECT_FACTOR = 10;
const BLOCK_TOL_REL = 3e-3;
const BLOCK_TYPES = {2: "Q4_0", 3: "Q4_1", 8: "Q8_0"};

// The ggml block types among a LoRA file's tensors.
async function blockTypes(path) {
  const info = await readGgufFileInfo(path, {readTensorInfo: true, logWarnings: false});
  return [...new Set(info.fullTensorInfo.map((t) => t.ggmlType).filter((t) => t in BLOCK_TYPES))]
      .sort().map((t) => BLOCK_TYPES[t]);
}

const [modelPath, refPath, resultPath] = process.argv.slice(2);
if (!modelPath || !refPath) {
  console.error("usage: node compare.mjs MODEL.gguf REF.json [RESULT.json]");
  process.exit(2);
}
const ref = JSON.parse(fs.readFileSync(refPath, "utf8"));

const llama = await getLlama({gpu: false, build: "never", logLevel: LlamaLogLevel.error});
const model = await llama.loadModel({modelPath});

// llama.cpp's logits at positions first.. of `tokens`, one array per
// position, evaluated from an empty sequence.
async function llamaLogits(sequence, tokens, first) {
  await sequence.clearHistory();
  const items = tokens.map((t, i) => (i >= first ? [t, {generateNext: {logits: true}}] : t));
  const out = await sequence.controlledEvaluate(items);
  const rows = [];
  for (let i = first; i < tokens.length; i++) {
    const map = out[i]?.next?.logits;
    if (!map) throw new Error(`no logits returned for position ${i}`);
    const row = [];
    for (const [token, value] of map) row[token] = value;
    rows.push(row);
  }
  return rows;
}

function argmax(row) {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
}

function margin(row) {
  const sorted = [...row].sort((a, b) => b - a);
  return sorted[0] - sorted[1];
}

async function withSequence(config, lora, fn) {
  const context = await model.createContext({
    contextSize: 64,
    sequences: 1,
    flashAttention: false,
    // One thread: ggml's worker threads spin while they wait, and on a busy
    // 2-core machine (load 10+) that made one 10-token evaluation take 12 s
    // instead of 0.05 s.
    threads: 1,
    // node-llama-cpp marks these experimental; F32 and F16 are llama.cpp's
    // ordinary cache types, and the pinned version handles both here.
    experimentalKvCacheKeyType: config.kv,
    experimentalKvCacheValueType: config.kv,
    ...(lora ? {lora: {adapters: [{filePath: lora, scale: 1}]}} : {}),
  });
  try {
    return await fn(context.getSequence());
  } finally {
    await context.dispose();
  }
}

const results = [];
let failed = false;

function compare(config, label, llamaRows, refRows, baseRows, blocks = []) {
  let maxAbs = 0, scale = 0, effect = 0, ourEffect = 0, argmaxSame = 0;
  for (let p = 0; p < refRows.length; p++) {
    const a = llamaRows[p], r = refRows[p], b = baseRows[p];
    if (a.length !== r.length) throw new Error(`${label}: llama.cpp returned ${a.length} logits, hydraopt ${r.length}`);
    for (let i = 0; i < r.length; i++) {
      maxAbs = Math.max(maxAbs, Math.abs(a[i] - r[i]));
      scale = Math.max(scale, Math.abs(r[i]));
      effect = Math.max(effect, Math.abs(a[i] - b[i]));
      ourEffect = Math.max(ourEffect, Math.abs(r[i] - b[i]));
    }
    if (argmax(a) === argmax(r)) argmaxSame++;
  }
  const tolRel = blocks.length ? Math.max(config.tolRel, BLOCK_TOL_REL) : config.tolRel;
  const positions = refRows.length, tol = tolRel * scale;
  let decisive = 0, decisiveSame = 0;
  for (let p = 0; p < positions; p++) {
    if (margin(refRows[p]) > 2 * tol) {
      decisive++;
      if (argmax(llamaRows[p]) === argmax(refRows[p])) decisiveSame++;
    }
  }
  const problems = [];
  if (!(maxAbs <= tol)) {
    problems.push(`max |llama.cpp - hydraopt| = ${maxAbs.toExponential(3)} > tolerance ${tol.toExponential(3)}`);
  }
  if (decisiveSame !== decisive) {
    problems.push(`greedy token differs at ${decisive - decisiveSame} of ${decisive} decisive positions`);
  }
  const isBase = baseRows === refRows;
  if (!isBase && !(effect > EFFECT_FACTOR * tol)) {
    problems.push(`adapter not visible: max |llama.cpp - base| = ${effect.toExponential(3)} <= ${EFFECT_FACTOR} x tolerance`);
  }
  const res = {
    config: config.name, label, positions, max_abs_diff: maxAbs, logit_scale: scale, rel_diff: maxAbs / scale,
    tol_rel: tolRel, block_types: blocks, argmax_agree: argmaxSame, decisive_positions: decisive, decisive_agree: decisiveSame,
    max_abs_vs_base: isBase ? null : effect, hydraopt_max_abs_vs_base: isBase ? null : ourEffect,
    ok: problems.length === 0, problems,
  };
  failed ||= !res.ok;
  results.push(res);
  console.log(
    `${res.ok ? "ok  " : "FAIL"} [${config.name}] ${label}: ${positions} positions, max abs diff ` +
    `${maxAbs.toExponential(3)} = ${(maxAbs / scale).toExponential(3)} of logit scale ${scale.toFixed(2)} ` +
    `(tolerance ${tolRel}${blocks.length ? `: block types ${blocks.join(", ")}` : ""}), greedy agree ${argmaxSame}/${positions}` +
    (isBase ? "" : `, adapter effect ${effect.toFixed(3)} (hydraopt ${ourEffect.toFixed(3)})`) +
    (problems.length ? `\n     ${problems.join("\n     ")}` : ""));
}

for (const config of CONFIGS) {
  // The base model alone, on the first case's examples.
  await withSequence(config, null, async (sequence) => {
    const llamaRows = [], refRows = [];
    for (const ex of ref.cases[0].examples) {
      llamaRows.push(...await llamaLogits(sequence, ex.tokens, ex.first));
      refRows.push(...ex.base_logits);
    }
    compare(config, "base model (no adapter)", llamaRows, refRows, refRows);
  });
  for (const c of ref.cases) {
    const blocks = await blockTypes(c.gguf);
    await withSequence(config, c.gguf, async (sequence) => {
      const llamaRows = [], refRows = [], baseRows = [];
      for (const ex of c.examples) {
        llamaRows.push(...await llamaLogits(sequence, ex.tokens, ex.first));
        refRows.push(...ex.logits);
        baseRows.push(...ex.base_logits);
      }
      compare(config, c.label, llamaRows, refRows, baseRows, blocks);
    });
  }
}

const nlcVersion = JSON.parse(
  fs.readFileSync(new URL("./node_modules/node-llama-cpp/package.json", import.meta.url), "utf8")).version;
const summary = {node_llama_cpp: nlcVersion, ok: !failed, results};
if (resultPath) fs.writeFileSync(resultPath, JSON.stringify(summary, null, 2) + "\n");
await model.dispose();
await llama.dispose();
console.log(failed ? "llama.cpp comparison FAILED" : `llama.cpp comparison passed (node-llama-cpp ${nlcVersion})`);
process.exit(failed ? 1 : 0);
