// hydraopt-lab: pretrain a tiny byte-level LLaMA, train PEFT LoRA adapters on
// it, evaluate them, and print logits for cross-checking. See lab/README.md.
#include <torch/torch.h>

#include <CLI/CLI.hpp>
#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <numbers>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data.h"
#include "hydraopt/dist.h"
#include "model.h"

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace lab {
namespace {

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string dir_name(const fs::path& p) {
  fs::path q = p;
  if (q.filename().empty()) q = q.parent_path();
  return q.filename().string();
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + p.string());
  std::stringstream ss;
  ss << in.rdbuf();
  // lines joined with '\n' (CRLF tolerated, no trailing newline)
  std::string s = ss.str();
  std::erase(s, '\r');
  while (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

torch::Tensor masked_loss(const Model& m, const Batch& b) {
  torch::Tensor logits = m.forward(b.inputs);
  return torch::nn::functional::cross_entropy(
      logits.reshape({-1, logits.size(-1)}), b.targets.reshape({-1}),
      torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100));
}

void set_lr(torch::optim::Optimizer& opt, double lr) {
  for (auto& g : opt.param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);
}

// Linear warmup over `warmup` steps, then cosine from 1 to `floor` at `total`.
double schedule(int64_t step, int64_t warmup, int64_t total, double floor = 0.1) {
  if (step < warmup) return static_cast<double>(step + 1) / static_cast<double>(warmup);
  const double span = static_cast<double>(std::max<int64_t>(1, total - warmup));
  const double p = std::min(1.0, static_cast<double>(step - warmup) / span);
  return floor + (1.0 - floor) * 0.5 * (1.0 + std::cos(std::numbers::pi * p));
}

// ------------------------------------------------------------------ pretrain

struct PretrainArgs {
  std::string data = "assets/tasks", out;
  double minutes = 10, lr = 3e-3, weight_decay = 0.01, task_frac = 0.3, checkpoint_minutes = 15;
  int64_t steps = 0, batch = 64, warmup = 50, log_every = 50, seed = 0;
  Config cfg;
};

int run_pretrain(const PretrainArgs& a) {
  Config cfg = a.cfg;
  cfg.check();
  const fs::path data(a.data);
  const std::string text = read_text(data / "pretrain.txt");
  std::vector<Example> tasks;
  std::vector<fs::path> task_dirs;
  for (const auto& e : fs::directory_iterator(data))
    if (e.is_directory() && fs::exists(e.path() / "train.jsonl")) task_dirs.push_back(e.path());
  std::sort(task_dirs.begin(), task_dirs.end());
  for (const auto& d : task_dirs) {
    auto v = keep_fitting(read_jsonl(d / "train.jsonl"), cfg.max_positions, (d / "train.jsonl").string());
    tasks.insert(tasks.end(), v.begin(), v.end());
  }
  std::cerr << "pretrain: " << text.size() << " bytes of text, " << tasks.size() << " task examples from "
            << task_dirs.size() << " tasks (train.jsonl only), task fraction " << a.task_frac << "\n";

  Model m = Model::random(cfg, static_cast<uint64_t>(a.seed));
  std::cerr << "pretrain: " << count_params(m.base_parameters()) << " parameters\n";
  std::vector<torch::Tensor> decay, no_decay;
  for (const auto& t : m.base_parameters()) (t.dim() >= 2 ? decay : no_decay).push_back(t);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(
                                 torch::optim::AdamWOptions(a.lr).betas({0.9, 0.95}).weight_decay(a.weight_decay)));
  groups.emplace_back(no_decay, std::make_unique<torch::optim::AdamWOptions>(
                                    torch::optim::AdamWOptions(a.lr).betas({0.9, 0.95}).weight_decay(0.0)));
  torch::optim::AdamW opt(groups);

  std::mt19937_64 rng(static_cast<uint64_t>(a.seed) * 0x9E3779B97F4A7C15ull + 1);
  const double budget = a.minutes * 60.0;
  int64_t total = a.steps > 0 ? a.steps : std::numeric_limits<int64_t>::max();
  const auto t0 = Clock::now();
  auto last_ckpt = t0;
  double loss_sum = 0;
  int64_t loss_n = 0, step = 0;
  json log = json::array();
  for (; step < total; ++step) {
    if (a.steps <= 0 && step > 0 && seconds_since(t0) >= budget) break;
    const double lr = a.lr * schedule(step, a.warmup, total == std::numeric_limits<int64_t>::max() ? a.warmup : total);
    set_lr(opt, lr);
    Batch b = pretrain_batch(text, tasks, a.batch, cfg.max_positions, a.task_frac, rng);
    opt.zero_grad();
    torch::Tensor loss = masked_loss(m, b);
    loss.backward();
    torch::nn::utils::clip_grad_norm_(m.base_parameters(), 1.0);
    opt.step();
    loss_sum += loss.item<double>();
    ++loss_n;
    if (a.steps <= 0 && step + 1 == 20) {
      const double per = seconds_since(t0) / 20.0;
      total = std::max<int64_t>(20, static_cast<int64_t>(budget / per));
      std::cerr << "pretrain: " << per << " s/step over the first 20 steps -> planning " << total << " steps\n";
    }
    if ((step + 1) % a.log_every == 0 || step == 0) {
      const double el = seconds_since(t0);
      const double avg = loss_sum / static_cast<double>(loss_n);
      std::fprintf(stderr, "step %6lld  loss %.4f  lr %.2e  %.1fs  %.2f steps/s\n", static_cast<long long>(step + 1),
                   avg, lr, el, (step + 1) / el);
      log.push_back({{"step", step + 1}, {"loss", avg}, {"lr", lr}, {"seconds", el}});
      loss_sum = 0;
      loss_n = 0;
    }
    if (a.checkpoint_minutes > 0 && seconds_since(last_ckpt) > a.checkpoint_minutes * 60) {
      m.save(a.out);
      last_ckpt = Clock::now();
      std::cerr << "pretrain: checkpoint written to " << a.out << "\n";
    }
  }
  const double el = seconds_since(t0);
  if (loss_n > 0) {
    const double avg = loss_sum / static_cast<double>(loss_n);
    std::fprintf(stderr, "step %6lld  loss %.4f  (final, %.1fs)\n", static_cast<long long>(step), avg, el);
    log.push_back({{"step", step}, {"loss", avg}, {"seconds", el}});
  }
  m.save(a.out);
  json summary = {{"steps", step},
                  {"seconds", el},
                  {"steps_per_second", step / el},
                  {"batch", a.batch},
                  {"seq_len", cfg.max_positions},
                  {"params", count_params(m.base_parameters())},
                  {"log", log}};
  std::ofstream(fs::path(a.out) / "pretrain_log.json") << summary.dump(1) << "\n";
  std::cout << json{{"out", a.out}, {"steps", step}, {"seconds", el}, {"steps_per_second", step / el},
                    {"final_loss", log.empty() ? json(nullptr) : log.back()["loss"]}}
                   .dump()
            << "\n";
  return 0;
}

// ------------------------------------------------------------------ lora

struct LoraArgs {
  std::string model, task, out;
  int64_t steps = 300, batch = 24, rank = 8, warmup = 10, log_every = 25, seed_a = 1234, seed = 0;
  double lr = 2e-3, alpha = 16, weight_decay = 0.0;
  bool save_bf16 = false;
};

int run_lora(const LoraArgs& a) {
  Model m = Model::load(a.model);
  const fs::path task(a.task);
  auto train = keep_fitting(read_jsonl(task / "train.jsonl"), m.cfg.max_positions, (task / "train.jsonl").string());
  m.add_lora(a.rank, a.alpha, static_cast<uint64_t>(a.seed_a));
  torch::manual_seed(static_cast<uint64_t>(a.seed));
  std::mt19937_64 rng(static_cast<uint64_t>(a.seed) * 0x9E3779B97F4A7C15ull + 2);
  auto params = m.lora_parameters();
  torch::optim::AdamW opt(params, torch::optim::AdamWOptions(a.lr).weight_decay(a.weight_decay));
  std::cerr << "lora: " << dir_name(task) << ", " << train.size() << " train examples, "
            << count_params(params) << " LoRA parameters\n";
  const auto t0 = Clock::now();
  double loss_sum = 0, last = 0, first = -1;
  int64_t loss_n = 0;
  for (int64_t step = 0; step < a.steps; ++step) {
    const double lr = a.lr * schedule(step, a.warmup, a.steps);
    set_lr(opt, lr);
    Batch b = task_batch(train, a.batch, rng);
    opt.zero_grad();
    torch::Tensor loss = masked_loss(m, b);
    loss.backward();
    torch::nn::utils::clip_grad_norm_(params, 1.0);
    opt.step();
    const double l = loss.item<double>();
    if (first < 0) first = l;
    loss_sum += l;
    ++loss_n;
    if ((step + 1) % a.log_every == 0 || step == 0 || step + 1 == a.steps) {
      const double el = seconds_since(t0);
      last = loss_sum / static_cast<double>(loss_n);
      std::fprintf(stderr, "step %5lld  loss %.4f  lr %.2e  %.1fs  %.2f steps/s\n", static_cast<long long>(step + 1),
                   last, lr, el, (step + 1) / el);
      loss_sum = 0;
      loss_n = 0;
    }
  }
  const double el = seconds_since(t0);
  m.save_lora(a.out, a.save_bf16 ? hydraopt::DType::BF16 : hydraopt::DType::F32);
  std::cout << json{{"task", dir_name(task)}, {"out", a.out}, {"steps", a.steps}, {"first_loss", first},
                    {"final_loss", last}, {"seconds", el}, {"steps_per_second", a.steps / el}}
                   .dump()
            << "\n";
  return 0;
}

// ------------------------------------------------------------------ eval

// Greedy decoding for prompts of equal length with a KV cache. Returns the
// new tokens of each prompt (EOS excluded): stops at EOS, after `max_new`
// tokens, or when the sequence would pass max_position_embeddings.
std::vector<std::vector<int64_t>> generate(const Model& m, const std::vector<std::vector<int64_t>>& prompts,
                                           int64_t max_new) {
  const int64_t B = static_cast<int64_t>(prompts.size()), P = static_cast<int64_t>(prompts[0].size());
  torch::Tensor tok = torch::empty({B, P}, torch::kInt64);
  for (int64_t i = 0; i < B; ++i)
    for (int64_t t = 0; t < P; ++t) tok[i][t] = prompts[i][t];
  std::vector<std::vector<int64_t>> out(B);
  std::vector<bool> done(B, false);
  const int64_t limit = std::min(max_new, m.cfg.max_positions - P);
  if (limit <= 0) return out;
  KVCache cache;
  torch::Tensor logits = m.forward(tok, &cache);
  torch::Tensor next = logits.select(1, P - 1).argmax(-1);
  for (int64_t k = 0; k < limit; ++k) {
    auto na = next.accessor<int64_t, 1>();
    bool all = true;
    for (int64_t i = 0; i < B; ++i) {
      if (done[i]) continue;
      if (na[i] == kEos) {
        done[i] = true;
      } else {
        out[i].push_back(na[i]);
        all = false;
      }
    }
    if (all || k + 1 == limit) break;
    logits = m.forward(next.view({B, 1}), &cache);
    next = logits.select(1, 0).argmax(-1);
  }
  return out;
}

struct EvalArgs {
  std::string model, adapter, task, split = "test";
  int64_t limit = 0, max_new = 30, batch = 64, show = 0;
};

int run_eval(const EvalArgs& a) {
  torch::NoGradGuard ng;
  Model m = Model::load(a.model);
  if (!a.adapter.empty()) m.load_lora(a.adapter);
  const fs::path task(a.task);
  auto data = read_jsonl(task / (a.split + ".jsonl"));
  if (a.limit > 0 && static_cast<int64_t>(data.size()) > a.limit) data.resize(a.limit);
  // group by prompt length so that each batch needs no padding
  std::map<size_t, std::vector<size_t>> by_len;
  std::vector<std::vector<int64_t>> prompts(data.size());
  for (size_t i = 0; i < data.size(); ++i) {
    prompts[i] = encode_prompt(data[i].prompt);
    by_len[prompts[i].size()].push_back(i);
  }
  std::vector<std::string> outputs(data.size());
  const auto t0 = Clock::now();
  for (const auto& [len, idx] : by_len) {
    for (size_t s = 0; s < idx.size(); s += static_cast<size_t>(a.batch)) {
      std::vector<size_t> part(idx.begin() + s, idx.begin() + std::min(idx.size(), s + a.batch));
      std::vector<std::vector<int64_t>> ps;
      for (size_t i : part) ps.push_back(prompts[i]);
      auto gen = generate(m, ps, a.max_new);
      for (size_t j = 0; j < part.size(); ++j) {
        std::string s;
        for (int64_t t : gen[j]) {
          if (t < 256) s.push_back(static_cast<char>(t));
          else s += "<" + std::to_string(t) + ">";  // a special token never matches
        }
        outputs[part[j]] = s;
      }
    }
  }
  int64_t correct = 0;
  for (size_t i = 0; i < data.size(); ++i) {
    const bool ok = outputs[i] == data[i].answer;
    correct += ok;
    if (static_cast<int64_t>(i) < a.show) {
      auto q = [](const std::string& s) { return json(s).dump(-1, ' ', false, json::error_handler_t::replace); };
      std::cerr << (ok ? "[ok]  " : "[bad] ") << q(data[i].prompt) << " -> " << q(outputs[i]) << "  (want "
                << q(data[i].answer) << ")\n";
    }
  }
  const int64_t n = static_cast<int64_t>(data.size());
  std::cout << json{{"task", dir_name(task)},
                    {"adapter", a.adapter.empty() ? json(nullptr) : json(a.adapter)},
                    {"split", a.split},
                    {"accuracy", n ? static_cast<double>(correct) / static_cast<double>(n) : 0.0},
                    {"correct", correct},
                    {"n", n},
                    {"seconds", seconds_since(t0)}}
                   .dump()
            << "\n";
  return 0;
}

// ------------------------------------------------------------------ logits

struct LogitsArgs {
  std::string model, adapter, text;
  bool all_positions = false;
};

int run_logits(const LogitsArgs& a) {
  torch::NoGradGuard ng;
  Model m = Model::load(a.model);
  if (!a.adapter.empty()) m.load_lora(a.adapter);
  std::vector<int64_t> toks = {kBos};
  for (unsigned char c : a.text) toks.push_back(c);
  if (static_cast<int64_t>(toks.size()) > m.cfg.max_positions) throw std::runtime_error("text too long");
  torch::Tensor t = torch::tensor(toks, torch::kInt64).view({1, -1});
  torch::Tensor logits = m.forward(t)[0].contiguous();  // [T, V]
  auto row = [&](int64_t p) {
    std::vector<double> v(logits.size(1));
    auto acc = logits.accessor<float, 2>();
    for (int64_t j = 0; j < logits.size(1); ++j) v[j] = acc[p][j];
    return v;
  };
  json out = {{"text", a.text}, {"tokens", toks}, {"adapter", a.adapter.empty() ? json(nullptr) : json(a.adapter)}};
  if (a.all_positions) {
    json all = json::array();
    for (int64_t p = 0; p < logits.size(0); ++p) all.push_back(row(p));
    out["logits"] = all;
  } else {
    out["logits"] = row(logits.size(0) - 1);
  }
  std::cout << out.dump() << "\n";
  return 0;
}

// Runtime settings that must be in the environment before OpenBLAS and
// libgomp are loaded (that is, before main), so we set them and re-execute
// ourselves once:
//  - OpenBLAS 0.3.21 (Debian 12) does not know recent Xeons (e.g. family 6
//    model 207) and falls back to its generic "Prescott" kernels, which run
//    sgemm 4-6x slower than its AVX-512 ones: we set OPENBLAS_CORETYPE.
//  - libgomp threads spin while waiting; on a machine shared with other jobs
//    that halves our speed: we set OMP_WAIT_POLICY=PASSIVE.
// Variables the user has set are left alone.
void prepare_environment(char** argv) {
  if (std::getenv("HYDRAOPT_LAB_REEXEC")) {
    if (const char* note = std::getenv("HYDRAOPT_LAB_NOTE")) std::cerr << "hydraopt-lab: note: " << note << "\n";
    unsetenv("HYDRAOPT_LAB_REEXEC");
    unsetenv("HYDRAOPT_LAB_NOTE");
    return;
  }
  bool changed = false;
  if (!std::getenv("OMP_WAIT_POLICY")) {
    setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    changed = true;
  }
  const std::string want = hydraopt::dist::blas_core_for_this_cpu();
  if (!want.empty()) {
    setenv("OPENBLAS_CORETYPE", want.c_str(), 1);
    setenv("HYDRAOPT_LAB_NOTE", ("OpenBLAS did not recognise this CPU; using OPENBLAS_CORETYPE=" + want).c_str(), 1);
    changed = true;
  }
  if (!changed) return;
  setenv("HYDRAOPT_LAB_REEXEC", "1", 1);
  execv("/proc/self/exe", argv);
  unsetenv("HYDRAOPT_LAB_REEXEC");  // exec failed: carry on as we are
  unsetenv("HYDRAOPT_LAB_NOTE");
}

void set_threads(int n) {
  torch::set_num_threads(n);
  using SetThreads = void (*)(int);
  if (auto f = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) f(n);
}

}  // namespace
}  // namespace lab

int main(int argc, char** argv) {
  using namespace lab;
  prepare_environment(argv);
  CLI::App app{"hydraopt-lab: tiny byte-level LLaMA + PEFT LoRA adapters in libtorch"};
  app.require_subcommand(1);
  int threads = 2;
  app.add_option("--threads", threads, "threads for torch and OpenBLAS")->capture_default_str();

  PretrainArgs pa;
  auto* pre = app.add_subcommand("pretrain", "pretrain the base model");
  pre->add_option("--data", pa.data, "task directory (pretrain.txt + */train.jsonl)")->capture_default_str();
  pre->add_option("--out", pa.out, "output model directory")->required();
  pre->add_option("--minutes", pa.minutes, "time budget")->capture_default_str();
  pre->add_option("--steps", pa.steps, "fixed number of steps (overrides --minutes)")->capture_default_str();
  pre->add_option("--batch", pa.batch)->capture_default_str();
  pre->add_option("--lr", pa.lr)->capture_default_str();
  pre->add_option("--weight-decay", pa.weight_decay)->capture_default_str();
  pre->add_option("--warmup", pa.warmup)->capture_default_str();
  pre->add_option("--task-frac", pa.task_frac, "fraction of rows that are task examples")->capture_default_str();
  pre->add_option("--log-every", pa.log_every)->capture_default_str();
  pre->add_option("--checkpoint-minutes", pa.checkpoint_minutes, "save every M minutes (0: only at the end)")
      ->capture_default_str();
  pre->add_option("--seed", pa.seed)->capture_default_str();
  pre->add_option("--hidden", pa.cfg.hidden)->capture_default_str();
  pre->add_option("--intermediate", pa.cfg.intermediate)->capture_default_str();
  pre->add_option("--layers", pa.cfg.layers)->capture_default_str();
  pre->add_option("--heads", pa.cfg.heads)->capture_default_str();
  pre->add_option("--kv-heads", pa.cfg.kv_heads)->capture_default_str();
  pre->add_option("--head-dim", pa.cfg.head_dim)->capture_default_str();
  pre->add_option("--max-positions", pa.cfg.max_positions, "also the training sequence length")
      ->capture_default_str();
  pre->add_option("--rope-theta", pa.cfg.rope_theta)->capture_default_str();
  pre->add_option("--rms-eps", pa.cfg.rms_eps)->capture_default_str();

  LoraArgs la;
  auto* lo = app.add_subcommand("lora", "train one LoRA adapter on a task");
  lo->add_option("--model", la.model)->required();
  lo->add_option("--task", la.task, "task directory with train.jsonl")->required();
  lo->add_option("--out", la.out, "output PEFT adapter directory")->required();
  lo->add_option("--steps", la.steps)->capture_default_str();
  lo->add_option("--batch", la.batch)->capture_default_str();
  lo->add_option("--lr", la.lr)->capture_default_str();
  lo->add_option("--warmup", la.warmup)->capture_default_str();
  lo->add_option("--weight-decay", la.weight_decay)->capture_default_str();
  lo->add_option("--rank", la.rank)->capture_default_str();
  lo->add_option("--alpha", la.alpha)->capture_default_str();
  lo->add_option("--seed-a", la.seed_a, "seed of the A init, shared by all tasks")->capture_default_str();
  lo->add_option("--seed", la.seed, "seed of the batch sampling")->capture_default_str();
  lo->add_flag("--bf16", la.save_bf16, "store the trained factors in bf16 (rounded to nearest) instead of f32");
  lo->add_option("--log-every", la.log_every)->capture_default_str();

  EvalArgs ea;
  auto* ev = app.add_subcommand("eval", "exact-match accuracy of greedy decoding");
  ev->add_option("--model", ea.model)->required();
  ev->add_option("--adapter", ea.adapter, "PEFT adapter directory");
  ev->add_option("--task", ea.task)->required();
  ev->add_option("--split", ea.split, "test or train")->capture_default_str();
  ev->add_option("--limit", ea.limit, "first N examples (0: all)")->capture_default_str();
  ev->add_option("--max-new", ea.max_new)->capture_default_str();
  ev->add_option("--batch", ea.batch, "decoding batch size")->capture_default_str();
  ev->add_option("--show", ea.show, "print the first N predictions on stderr")->capture_default_str();

  LogitsArgs ga;
  auto* lg = app.add_subcommand("logits", "logits of the last position for BOS + text bytes, as JSON");
  lg->add_option("--model", ga.model)->required();
  lg->add_option("--adapter", ga.adapter, "PEFT adapter directory");
  lg->add_option("--text", ga.text)->required();
  lg->add_flag("--all-positions", ga.all_positions, "print every position's logits (T x V)");

  CLI11_PARSE(app, argc, argv);
  try {
    set_threads(threads);
    if (*pre) return run_pretrain(pa);
    if (*lo) return run_lora(la);
    if (*ev) return run_eval(ea);
    if (*lg) return run_logits(ga);
  } catch (const std::exception& e) {
    std::cerr << "hydraopt-lab: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
