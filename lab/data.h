// Task data and batches for the lab.
//
// A task directory holds train.jsonl and test.jsonl, one JSON object per
// line with a prompt ("prompt", or "input"/"question"/"source") and an answer
// ("answer", or "output"/"target"/"completion"), both strings.
// A sequence is BOS + prompt bytes + SEP + answer bytes + EOS.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

namespace lab {

struct Example {
  std::string prompt, answer;
};

std::vector<Example> read_jsonl(const std::filesystem::path& path);

/// BOS + prompt + SEP (what generation starts from).
std::vector<int64_t> encode_prompt(const std::string& prompt);
/// BOS + prompt + SEP + answer + EOS; `answer_start` receives the index of
/// the first answer token (the one after SEP).
std::vector<int64_t> encode_example(const Example& ex, int64_t* answer_start = nullptr);

/// Examples that fit in `max_len` tokens; prints how many were dropped.
std::vector<Example> keep_fitting(std::vector<Example> v, int64_t max_len, const std::string& label);

/// Inputs and targets for next-token loss: inputs [B, T-1], targets [B, T-1]
/// with -100 where no loss is taken.
struct Batch {
  torch::Tensor inputs, targets;
  int64_t n_targets = 0;
};

/// LoRA batch: `batch` examples drawn uniformly with replacement; loss on the
/// answer bytes and EOS only. Padded to the longest sequence in the batch.
Batch task_batch(const std::vector<Example>& data, int64_t batch, std::mt19937_64& rng);

/// Pretraining batch: each row is, with probability `task_frac` (and when
/// `tasks` is not empty), a task example (loss on every next token that is
/// not padding: prompt, SEP, answer, EOS), else BOS + `seq_len - 1`
/// consecutive bytes of `text` from a uniform random offset (loss on all).
Batch pretrain_batch(const std::string& text, const std::vector<Example>& tasks, int64_t batch,
                     int64_t seq_len, double task_frac, std::mt19937_64& rng);

}  // namespace lab
