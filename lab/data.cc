#include "data.h"

#include <algorithm>
#include <fstream>
#include <iostream>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "model.h"

namespace lab {

namespace {

std::string get_field(const nlohmann::json& j, std::initializer_list<const char*> keys, const std::string& where) {
  for (const char* k : keys) {
    if (j.contains(k)) {
      if (!j[k].is_string()) throw std::runtime_error(where + ": field \"" + k + "\" is not a string");
      return j[k].get<std::string>();
    }
  }
  throw std::runtime_error(where + ": no field \"" + *keys.begin() + "\"");
}

}  // namespace

std::vector<Example> read_jsonl(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path.string());
  std::vector<Example> out;
  std::string line;
  int64_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path.string() + ":" + std::to_string(lineno);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const std::exception& e) {
      throw std::runtime_error(where + ": " + e.what());
    }
    Example ex;
    ex.prompt = get_field(j, {"prompt", "input", "question", "source"}, where);
    ex.answer = get_field(j, {"answer", "output", "target", "completion"}, where);
    out.push_back(std::move(ex));
  }
  return out;
}

std::vector<int64_t> encode_prompt(const std::string& prompt) {
  std::vector<int64_t> t;
  t.reserve(prompt.size() + 2);
  t.push_back(kBos);
  for (unsigned char c : prompt) t.push_back(c);
  t.push_back(kSep);
  return t;
}

std::vector<int64_t> encode_example(const Example& ex, int64_t* answer_start) {
  std::vector<int64_t> t = encode_prompt(ex.prompt);
  if (answer_start) *answer_start = static_cast<int64_t>(t.size());
  for (unsigned char c : ex.answer) t.push_back(c);
  t.push_back(kEos);
  return t;
}

std::vector<Example> keep_fitting(std::vector<Example> v, int64_t max_len, const std::string& label) {
  const size_t before = v.size();
  std::erase_if(v, [&](const Example& e) { return static_cast<int64_t>(encode_example(e).size()) > max_len; });
  if (v.size() != before) {
    std::cerr << label << ": dropped " << (before - v.size()) << " of " << before << " examples longer than "
              << max_len << " tokens\n";
  }
  return v;
}

namespace {

// rows: token sequences; loss_from[i]: first index (in the sequence) whose
// token is a target. Builds inputs/targets padded to the longest row.
Batch make_batch(const std::vector<std::vector<int64_t>>& rows, const std::vector<int64_t>& loss_from) {
  int64_t T = 0;
  for (const auto& r : rows) T = std::max<int64_t>(T, static_cast<int64_t>(r.size()));
  const int64_t B = static_cast<int64_t>(rows.size());
  torch::Tensor tok = torch::full({B, T}, kPad, torch::kInt64);
  torch::Tensor tgt = torch::full({B, T - 1}, int64_t{-100}, torch::kInt64);
  auto ta = tok.accessor<int64_t, 2>();
  auto ga = tgt.accessor<int64_t, 2>();
  Batch b;
  for (int64_t i = 0; i < B; ++i) {
    const auto& r = rows[i];
    const int64_t n = static_cast<int64_t>(r.size());
    for (int64_t t = 0; t < n; ++t) ta[i][t] = r[t];
    for (int64_t t = std::max<int64_t>(loss_from[i], 1); t < n; ++t) {
      ga[i][t - 1] = r[t];  // predicted at position t-1
      ++b.n_targets;
    }
  }
  b.inputs = tok.slice(1, 0, T - 1).contiguous();
  b.targets = tgt;
  return b;
}

}  // namespace

Batch task_batch(const std::vector<Example>& data, int64_t batch, std::mt19937_64& rng) {
  if (data.empty()) throw std::runtime_error("no training examples");
  std::uniform_int_distribution<size_t> pick(0, data.size() - 1);
  std::vector<std::vector<int64_t>> rows;
  std::vector<int64_t> from;
  for (int64_t i = 0; i < batch; ++i) {
    int64_t start = 0;
    rows.push_back(encode_example(data[pick(rng)], &start));
    from.push_back(start);
  }
  return make_batch(rows, from);
}

Batch pretrain_batch(const std::string& text, const std::vector<Example>& tasks, int64_t batch, int64_t seq_len,
                     double task_frac, std::mt19937_64& rng) {
  const int64_t chunk = seq_len - 1;
  if (static_cast<int64_t>(text.size()) < chunk) throw std::runtime_error("pretraining text is too short");
  std::uniform_real_distribution<double> coin(0.0, 1.0);
  std::uniform_int_distribution<size_t> off(0, text.size() - static_cast<size_t>(chunk));
  std::uniform_int_distribution<size_t> pick(0, tasks.empty() ? 0 : tasks.size() - 1);
  std::vector<std::vector<int64_t>> rows;
  std::vector<int64_t> from;
  for (int64_t i = 0; i < batch; ++i) {
    if (!tasks.empty() && coin(rng) < task_frac) {
      rows.push_back(encode_example(tasks[pick(rng)]));
    } else {
      const size_t o = off(rng);
      std::vector<int64_t> r;
      r.reserve(seq_len);
      r.push_back(kBos);
      for (int64_t t = 0; t < chunk; ++t) r.push_back(static_cast<unsigned char>(text[o + t]));
      rows.push_back(std::move(r));
    }
    from.push_back(1);
  }
  return make_batch(rows, from);
}

}  // namespace lab
