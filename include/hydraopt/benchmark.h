// The task benchmark: how much of each adapter's task quality a bundle keeps.
//
// Assets layout (made by the lab, shipped in assets/):
//   model/                       config.json + model.safetensors (tiny LLaMA)
//   adapters/<task>/             one PEFT LoRA adapter per task: set "fast"
//   adapters-<set>/<task>/       the same tasks' adapters of another set
//                                (another training recipe), e.g. "usual"
//   lora-init/                   the adapters' shared initialisation (A as
//                                every set's training started, B zero)
//   tasks/<task>/test.jsonl      {"prompt": ..., "answer": ...} per line
// Score = exact match of greedy decoding (checked teacher-forced, see
// Model::greedy_matches); a bundle's relative score for a task is its score
// divided by the task's own adapter's score.
#pragma once

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "hydraopt/merge.h"
#include "hydraopt/model.h"

namespace hydraopt {

struct TaskExamples {
  std::string name;
  std::vector<std::pair<std::string, std::string>> examples;  ///< (prompt, answer)
};

/// Reads `<dir>/test.jsonl` (at most `limit` lines when limit > 0).
TaskExamples load_task(const std::filesystem::path& dir, int limit = 0, const std::string& file = "test.jsonl");

/// `hydraopt calibrate`: for each adapter, runs the model over its task's
/// calibration examples (DATA/<task>/calib.jsonl: prompt, answer and eos,
/// teacher-forced) with that adapter applied, and writes OUT/<task>.safetensors,
/// the second moments of every linear module's inputs (hydraopt/calibration.h).
/// Every file goes to a scratch directory in OUT first and is renamed into
/// place at the end, so an error leaves none.
struct CalibrateOptions {
  std::filesystem::path model, data, out;
  std::vector<std::string> adapters;  ///< PEFT directories (or NAME=DIR)
  int examples = 64;                  ///< at most this many per task
  int64_t max_rank = 256;             ///< eigenpairs kept per site, at most
  int threads = 0;
};
void calibrate(const CalibrateOptions& o);

/// Fraction of examples whose greedy answer is exactly right.
double task_score(const Model& model, const TaskExamples& task, const Deltas* deltas, int threads = 0);

/// 1 - (Levenshtein distance) / (the longer length), over UTF-8 code points
/// (a byte that is not part of valid UTF-8 counts as one character); 1 for
/// two empty strings. The benchmark's smoother second metric.
double edit_similarity(const std::string& a, const std::string& b);

struct TaskScores {
  double exact = 0;       ///< fraction of examples whose greedy answer is exactly right (= task_score)
  double similarity = 0;  ///< mean edit_similarity of the greedy output and the answer
};

/// Both scores of the free-running greedy output (Model::greedy_outputs_batch,
/// at most 2 |answer| + 8 new tokens per example).
TaskScores task_scores(const Model& model, const TaskExamples& task, const Deltas* deltas, int threads = 0);

/// A method at a budget. In stored numbers (kParams; every factor bf16):
/// budget 0 means 1/N (one adapter's storage) and -1 the storage fraction
/// of the hydra layout (per module one shared r x in body and an out x r
/// head per task, r the module's largest rank; at most 1): the method is
/// run at the hydra method's storage, it is not the hydra method; ignored
/// by single-adapter methods. In bytes (kBytes): a fraction of a bf16
/// copy's bytes, factors stored as integers where the method chooses.
struct DemoPoint {
  std::string method;
  double budget = 0;
  BudgetUnit unit = BudgetUnit::kParams;
  /// Merged with the tasks' calibration statistics (merge --calibration).
  bool calibrated = false;
  /// The plot's series: the method, with " [bytes]" for byte budgets and
  /// " [cal]" when calibrated.
  std::string series() const {
    return method + (unit == BudgetUnit::kBytes ? " [bytes]" : "") + (calibrated ? " [cal]" : "");
  }
};

/// A point as `demo --points` takes it: METHOD@F (a fraction of the
/// parameters), METHOD@1/N, METHOD@hydra (the hydra layout's storage) or
/// METHOD@bytes:F (a fraction of a bf16 copy's bytes); METHOD+cal@... for
/// a calibrated merge. Throws Error on anything else, or on a method
/// methods() does not list.
DemoPoint parse_demo_point(const std::string& text);

/// The adapter sets in `assets`: "fast" (assets/adapters) first, then each
/// assets/adapters-<name> directory, sorted.
std::vector<std::string> adapter_sets(const std::filesystem::path& assets);

/// Where a set sits between the two regimes (printed beside its table):
/// how much its tasks' subspaces overlap and how far training moved A.
struct SetProfile {
  std::string name;
  /// inspect()'s similarities, averaged over the modules.
  double similarity_a = 0, similarity_b = 0;
  /// Mean over tasks of ||A - A_init||_F / ||A_init||_F (all modules
  /// together), A_init from assets/lora-init; NaN without it.
  double a_drift = 0;
};

/// The profile of the adapters in `set` (a directory of PEFT adapters);
/// `init` an adapter directory holding their initial A, or empty.
SetProfile set_profile(const std::string& name, const AdapterSet& set, const std::filesystem::path& init);

struct BenchmarkOptions {
  std::filesystem::path assets = "assets";
  /// The adapter set (adapter_sets()).
  std::string set = "fast";
  /// Points to evaluate. Every bundle is stored in bf16, so a point's
  /// storage in bytes is its fraction of a bf16 copy (the plot's x axis).
  std::vector<DemoPoint> points = {
      // hydraopt at every baseline's storage (1/N: the merges; the hydra
      // layout's: hydra-avg, jd-full), at 0.52 (the published operating
      // point) and at 0.25 and 0.75.
      {"hydraopt", 0.0},   {"hydraopt", 0.25},  {"hydraopt", -1.0}, {"hydraopt", 0.52}, {"hydraopt", 0.75},
      {"jd-full", -1.0},
      {"hydra-avg", 1.0},  {"ta", 1.0},         {"ties", 1.0},      {"dare-ties", 1.0}, {"linear", 1.0},
      {"knots-ties", 1.0},
      // Byte budgets where the quantization baseline's formats land (int2
      // groups of 128, int2 groups of 32, int3 groups of 128, int4 groups of
      // 64: 2.125 to 4.25 bits), each method at the same ones, and 12.5%.
      {"hydraopt", 0.125, BudgetUnit::kBytes},  {"hydraopt", 0.133, BudgetUnit::kBytes},
      {"hydraopt", 0.157, BudgetUnit::kBytes},  {"hydraopt", 0.196, BudgetUnit::kBytes},
      {"hydraopt", 0.266, BudgetUnit::kBytes},
      {"quant", 0.133, BudgetUnit::kBytes},     {"quant", 0.157, BudgetUnit::kBytes},
      {"quant", 0.196, BudgetUnit::kBytes},     {"quant", 0.266, BudgetUnit::kBytes}};
  /// MergeOptions::weights of every merge ("balanced", "module", ...).
  std::string weights = "balanced";
  /// Calibrated points: MergeOptions::shrinkage, and the examples per task
  /// the statistics come from (tasks/<task>/calib.jsonl, with each task's
  /// own adapter; written to a scratch directory by calibrate()).
  double shrinkage = 0.3;
  std::string calibration_plan = "calibrated";  ///< MergeOptions::calibration_plan
  int calibration_rounds = 0;                    ///< MergeOptions::calibration_rounds
  int calibration_examples = 64;
  int limit = 0;  ///< test examples per task (0: all)
  int threads = 0;
  /// Also the edit similarity of the free-running greedy outputs. It decodes
  /// every wrong answer to its end (Jacobi passes without a KV cache), so
  /// scoring costs about 5x more: 75-80 s per point here, against 16.5 s
  /// for exact match alone. Off: the similarity fields are NaN.
  bool similarity = false;
  /// Out of distribution (issue 19): with K > 0, every point's adapter of
  /// each task also runs on the first K test prompts of every other task,
  /// and its greedy outputs are compared with the task's own adapter's
  /// (BenchmarkPoint::ood_agreement). It costs each point about 14 s per
  /// unit of K on the shipped benchmark here (K = 8: ~115 s, with a compile
  /// beside it), and the own adapters' outputs as much once.
  int ood = 0;
  std::function<void(const std::string&)> log;  ///< progress lines
};

struct BenchmarkPoint {
  std::string series;                 ///< DemoPoint::series()
  MergeReport merge;                  ///< storage and reconstruction error
  std::vector<double> scores;         ///< per task, exact match 0..1
  std::vector<double> relative;       ///< per task, score / own adapter's score
  double mean_relative = 0, min_relative = 0;
  /// The same for the edit similarity of the greedy outputs.
  std::vector<double> similarity, relative_similarity;
  double mean_relative_similarity = 0, min_relative_similarity = 0;
  /// BenchmarkOptions::ood > 0: per task, the share of the other tasks'
  /// prompts on which the merged adapter's greedy output (up to its end
  /// of sequence or the length limit) equals the task's own adapter's.
  std::vector<double> ood_agreement;
  double mean_ood_agreement = NAN;
};

struct BenchmarkResult {
  SetProfile profile;
  std::string weights;  ///< BenchmarkOptions::weights
  std::vector<std::string> tasks;
  std::vector<double> base, individual;  ///< per task scores
  std::vector<double> base_similarity, individual_similarity;  ///< per task edit similarities
  std::vector<BenchmarkPoint> points;
  std::string json() const;   ///< DESIGN §5 JSON (plus per-task scores)
  std::string table() const;  ///< Markdown: base and adapter scores, one row per point
  /// Bytes (fraction of a bf16 copy) vs mean relative task score, one line
  /// per series (DemoPoint::series).
  std::string svg() const;
};

BenchmarkResult run_benchmark(const BenchmarkOptions& options);

/// Writes `dir`/demo.json, demo.md and demo.svg (each atomically; creates
/// `dir` if needed).
void write_benchmark(const std::filesystem::path& dir, const BenchmarkResult& result);

/// The online benchmark (`hydraopt demo --online`, src/runtime/online.cc):
/// the adapters arrive one at a time in a fixed shuffled order under a
/// storage cap of `cap_adapters` adapters' parameters; after every `every`
/// arrivals (and the last) each way of keeping them is scored on the tasks
/// seen so far: "add-none" (`merge --method hydra` of the first, then
/// `add --refit none`: storage grows), "add-refit" (`add --refit all` to the
/// cap each time), "merge" (everything seen, merged at the cap) and
/// "k-merge" (at most K = cap_adapters merged adapters, each new one merged
/// into its most similar slot by task arithmetic) and "add-none-K"
/// (`merge --method hydra` of the first K = cap_adapters, then `add --refit
/// none`: storage grows).
struct OnlineOptions {
  std::filesystem::path assets = "assets";
  std::string set = "fast";  ///< the adapter set (adapter_sets())
  int cap_adapters = 16;   ///< the cap, in adapters' worth of parameters (K-Merge's K)
  int every = 5;           ///< score after every this many arrivals
  int arrivals = 0;        ///< how many adapters arrive (a prefix of the order; 0: all)
  uint64_t seed = 20;      ///< the arrival order
  std::string method = "hydraopt";  ///< the method of the merges and refits
  int limit = 0;           ///< test examples per task (0: all)
  int threads = 0;
  std::function<void(const std::string&)> log;
};

struct OnlinePoint {
  size_t arrivals = 0;
  double storage = 0;        ///< stored parameters, in adapters' worth
  double mean_relative = 0;  ///< over the tasks seen so far
};

struct OnlineVariant {
  std::string name;
  std::vector<OnlinePoint> points;
};

struct OnlineResult {
  int cap_adapters = 0;
  int64_t adapter_params = 0;      ///< one adapter's parameters (the mean)
  std::vector<std::string> order;  ///< arrival order
  std::vector<OnlineVariant> variants;
  std::string json() const;
  std::string table() const;  ///< Markdown, one row per scoring
  std::string svg() const;    ///< mean relative score over arrivals, one line per variant
};

OnlineResult run_online(const OnlineOptions& options);
/// Writes `dir`/online.json, online.md and online.svg.
void write_online(const std::filesystem::path& dir, const OnlineResult& result);

}  // namespace hydraopt
