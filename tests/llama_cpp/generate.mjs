// Greedy answers of the tiny benchmark model in llama.cpp (node-llama-cpp),
// with a hydraopt-exported LoRA: the deployment example of the README.
//
//   node generate.mjs MODEL.gguf [LORA.gguf | -] PROMPT...
//
// Each prompt is encoded as the benchmark does (bos, UTF-8 bytes, sep: the
// GGUF vocabulary keeps our token ids), then decoded greedily until eos.
import {getLlama, LlamaLogLevel} from "node-llama-cpp";

const [modelPath, lora, ...prompts] = process.argv.slice(2);
if (!modelPath || !lora || prompts.length === 0) {
  console.error("usage: node generate.mjs MODEL.gguf [LORA.gguf | -] PROMPT...");
  process.exit(2);
}
const BOS = 256, EOS = 257, SEP = 259;

const llama = await getLlama({gpu: false, build: "never", logLevel: LlamaLogLevel.error});
const model = await llama.loadModel({modelPath});
const context = await model.createContext({
  contextSize: 64,
  threads: 1,
  ...(lora !== "-" ? {lora: {adapters: [{filePath: lora}]}} : {}),
});
const sequence = context.getSequence();

for (const prompt of prompts) {
  await sequence.clearHistory();
  let input = [BOS, ...new TextEncoder().encode(prompt), SEP];
  const answer = [];
  while (input.length + answer.length <= 64) {
    const items = input.map((t, i) => (i === input.length - 1 ? [t, {generateNext: {logits: true}}] : t));
    const out = await sequence.controlledEvaluate(items);
    const next = out[items.length - 1].next.logits.keys().next().value;  // sorted: highest first
    if (next === EOS) break;
    answer.push(next);
    input = [next];
  }
  console.log(`${prompt}\t${new TextDecoder().decode(new Uint8Array(answer))}`);
}
await context.dispose();
await model.dispose();
await llama.dispose();
