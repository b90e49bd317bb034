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
// Checks, per case (exit status 1 if any fails):
//   - agreement: max |llama.cpp - hydraopt| <= TOL_REL * logit scale, where
//     the logit scale is the largest |logit| of hydraopt's rows for the case;
//   - same greedy token (argmax) at every position whose top-2 margin in
//     our logits exceeds twice the tolerance;
//   - the adapter is applied: llama.cpp's logits differ from hydraopt's
//     base-model logits by more than EFFECT_FACTOR x the tolerance.
// And once, the base model alone against hydraopt's base logits.
import fs from "node:fs";
import {getLlama, LlamaLogLevel} from "node-llama-cpp";

const TOL_REL = Number(process.env.HYDRAOPT_LLAMA_TOL_REL ?? 2e-3);
const EFFECT_FACTOR = 10;

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
  {
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

async function withContext(lora, fn) {
  const context = await model.createContext({
    contextSize: 64,
    sequences: 1,
    flashAttention: false,
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

function compare(label, llamaRows, refRows, baseRows) {
  let maxAbs = 0, scale = 0, effect = 0, ourEffect = 0, positions = 0, argmaxSame = 0, decisive = 0, decisiveSame = 0;
  for (let p = 0; p < refRows.length; p++) {
    const a = llamaRows[p], r = refRows[p], b = baseRows[p];
    if (a.length !== r.length) throw new Error(`${label}: llama.cpp returned ${a.length} logits, hydraopt ${r.length}`);
    for (let i = 0; i < r.length; i++) {
      maxAbs = Math.max(maxAbs, Math.abs(a[i] - r[i]));
      scale = Math.max(scale, Math.abs(r[i]));
      effect = Math.max(effect, Math.abs(a[i] - b[i]));
      ourEffect = Math.max(ourEffect, Math.abs(r[i] - b[i]));
    }
    positions++;
    if (argmax(a) === argmax(r)) argmaxSame++;
  }
  const tol = TOL_REL * scale;
  for (let p = 0; p < refRows.length; p++) {
    if (margin(refRows[p]) > 2 * tol) {
      decisive++;
      if (argmax(llamaRows[p]) === argmax(refRows[p])) decisiveSame++;
    }
  }
  const res = {
    label, positions, max_abs_diff: maxAbs, logit_scale: scale, rel_diff: maxAbs / scale, tolerance: tol,
    argmax_agree: argmaxSame, decisive_positions: decisive, decisive_agree: decisiveSame,
    max_abs_vs_base: effect, hydraopt_max_abs_vs_base: ourEffect,
  };
  const problems = [];
  if (!(maxAbs <= tol)) problems.push(`max |llama.cpp - hydraopt| = ${maxAbs.toExponential(3)} > tolerance ${tol.toExponential(3)}`);
  if (decisiveSame !== decisive) problems.push(`greedy token differs at ${decisive - decisiveSame} of ${decisive} decisive positions`);
  if (baseRows !== refRows && !(effect > EFFECT_FACTOR * tol)) {
    problems.push(`adapter not visible: max |llama.cpp - base| = ${effect.toExponential(3)} <= ${EFFECT_FACTOR} x tolerance`);
  }
  res.ok = problems.length === 0;
  res.problems = problems;
  failed ||= !res.ok;
  results.push(res);
  console.log(
    `${res.ok ? "ok  " : "FAIL"} ${label}: ${positions} positions, max abs diff ${maxAbs.toExponential(3)} ` +
    `(${(maxAbs / scale).toExponential(3)} of logit scale ${scale.toFixed(2)}), greedy agree ${argmaxSame}/${positions}, ` +
    `adapter effect ${effect.toFixed(3)} (ours ${ourEffect.toFixed(3)})` + (problems.length ? `\n     ${problems.join("\n     ")}` : ""));
}

// The base model alone, on the first case's examples.
const first = ref.cases[0];
await withContext(null, async (sequence) => {
  const llamaRows = [], refRows = [];
  for (const ex of first.examples) {
    llamaRows.push(...await llamaLogits(sequence, ex.tokens, ex.first));
    refRows.push(...ex.base_logits);
  }
  compare("base model (no adapter)", llamaRows, refRows, refRows);
});

for (const c of ref.cases) {
  await withContext(c.gguf, async (sequence) => {
    const llamaRows = [], refRows = [], baseRows = [];
    for (const ex of c.examples) {
      llamaRows.push(...await llamaLogits(sequence, ex.tokens, ex.first));
      refRows.push(...ex.logits);
      baseRows.push(...ex.base_logits);
    }
    compare(c.label, llamaRows, refRows, baseRows);
  });
}

const nlcVersion = JSON.parse(fs.readFileSync(new URL("./node_modules/node-llama-cpp/package.json", import.meta.url))).version;
const summary = {node_llama_cpp: nlcVersion, tol_rel: TOL_REL, ok: !failed, cases: results};
if (resultPath) fs.writeFileSync(resultPath, JSON.stringify(summary, null, 2) + "\n");
await model.dispose();
await llama.dispose();
console.log(failed ? "llama.cpp comparison FAILED" : `llama.cpp comparison passed (node-llama-cpp ${nlcVersion})`);
process.exit(failed ? 1 : 0);
