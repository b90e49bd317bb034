// hydraopt's own logits for the llama.cpp comparison (tests/llama_cpp/run.sh).
//
//   hydraopt_ref_logits MODEL_DIR TASKS_DIR N OUT.json CASE...
//
// CASE is LABEL=BUNDLE:TASK:GGUF: the first N held-out examples of
// TASKS_DIR/TASK/test.jsonl, run teacher-forced (bos, prompt bytes, sep,
// answer bytes) through our forward pass with the bundle's task applied,
// and without any adapter. For every position from the sep on (the ones
// that predict the answer and eos), both rows of logits are written, with
// the token ids, so that llama.cpp can be fed the same ids. OUT.json:
//   {"cases": [{"label", "task", "gguf", "examples": [{"prompt", "tokens",
//     "first", "logits": [[...], ...], "base_logits": [[...], ...]}]}]}
// where logits[j] is for the position tokens[first + j].
#include <fmt/format.h>

#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "hydraopt/benchmark.h"
#include "hydraopt/error.h"
#include "hydraopt/model.h"

int main(int argc, char** argv) {
  if (argc < 6) {
    std::cerr
        << "usage: hydraopt_ref_logits MODEL_DIR TASKS_DIR N OUT.json LABEL=BUNDLE:TASK:GGUF...\n";
    return 2;
  }
  try {
    const auto model = hydraopt::Model::open(argv[1]);
    const std::filesystem::path tasks_dir = argv[2];
    const int n = std::stoi(argv[3]);
    const int eos = model.config().eos;
    nlohmann::json cases = nlohmann::json::array();
    for (int a = 5; a < argc; ++a) {
      const std::string spec = argv[a];
      const size_t eq = spec.find('='), c1 = spec.find(':', eq), c2 = spec.find(':', c1 + 1);
      if (eq == std::string::npos || c1 == std::string::npos || c2 == std::string::npos) {
        throw hydraopt::Error("case '" + spec + "' is not LABEL=BUNDLE:TASK:GGUF");
      }
      const std::string label = spec.substr(0, eq), bundle = spec.substr(eq + 1, c1 - eq - 1),
                        task = spec.substr(c1 + 1, c2 - c1 - 1), gguf = spec.substr(c2 + 1);
      const hydraopt::Deltas deltas = hydraopt::deltas_from_bundle(bundle, task);
      const auto examples = hydraopt::load_task(tasks_dir / task, n);
      nlohmann::json ex = nlohmann::json::array();
      for (const auto& [prompt, answer] : examples.examples) {
        std::vector<int> tokens = model.encode_prompt(prompt);
        const int first = static_cast<int>(tokens.size()) - 1;
        for (unsigned char c : answer) tokens.push_back(c);
        tokens.push_back(eos);
        tokens.resize(
            std::min<size_t>(tokens.size(), static_cast<size_t>(model.config().max_positions)));
        const Eigen::MatrixXf with = model.forward(tokens, &deltas), base = model.forward(tokens);
        nlohmann::json lw = nlohmann::json::array(), lb = nlohmann::json::array();
        for (Eigen::Index t = first; t < with.rows(); ++t) {
          lw.push_back(std::vector<float>(with.row(t).begin(), with.row(t).end()));
          lb.push_back(std::vector<float>(base.row(t).begin(), base.row(t).end()));
        }
        ex.push_back({{"prompt", prompt},
                      {"tokens", tokens},
                      {"first", first},
                      {"logits", lw},
                      {"base_logits", lb}});
      }
      cases.push_back({{"label", label}, {"task", task}, {"gguf", gguf}, {"examples", ex}});
    }
    std::ofstream(argv[4]) << nlohmann::json{{"cases", cases}}.dump() << "\n";
  } catch (const std::exception& e) {
    std::cerr << "hydraopt_ref_logits: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
