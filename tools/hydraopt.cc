// hydraopt command-line tool: a thin front-end over the library.
#include <malloc.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <filesystem>
#include <fmt/format.h>
#include <iostream>
#include <nlohmann/json.hpp>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <tuple>

#include "hydraopt/adapter.h"
#include "hydraopt/benchmark.h"
#include "hydraopt/bundle.h"
#include "hydraopt/dist.h"
#include "hydraopt/edit.h"
#include "hydraopt/error.h"
#include "hydraopt/gguf.h"
#include "hydraopt/inspect.h"
#include "hydraopt/merge.h"
#include "hydraopt/synth.h"

namespace fs = std::filesystem;

namespace {

// One line, no newlines inside, so scripts can grep it.
std::string one_line(std::string s) {
  for (char& c : s) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return s;
}

std::optional<hydraopt::DType> parse_dtype(const std::string& s) {
  if (s.empty()) return std::nullopt;
  return hydraopt::parse_storage_dtype(s, "--dtype");
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    size_t end = s.find(',', start);
    if (end == std::string::npos) end = s.size();
    if (end > start) out.push_back(s.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

// Checks that `path` can be created, before any long computation.
void check_writable(const std::string& path) {
  if (path.empty()) return;
  fs::path dir = fs::absolute(path).parent_path();
  if (!fs::is_directory(dir)) throw hydraopt::Error(path, "", "output directory does not exist");
  if (::access(dir.c_str(), W_OK) != 0) throw hydraopt::Error(path, "", "output directory is not writable");
  if (fs::is_directory(path)) throw hydraopt::Error(path, "", "is a directory");
}

// Creates the output directory `dir` and checks that `file` can be written
// in it, before any long computation.
void prepare_output_dir(const std::string& dir, const std::string& file) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (!fs::is_directory(dir)) throw hydraopt::Error(dir, "", "cannot create output directory");
  check_writable((fs::path(dir) / file).string());
}

// "[12/64] fitting modules" on a terminal, nothing otherwise.
std::function<void(size_t, size_t)> progress_for(const char* what) {
  if (!::isatty(2)) return nullptr;
  return [what](size_t done, size_t total) {
    std::cerr << fmt::format("\r[{}/{}] {}", done, total, what) << (done == total ? "\r\033[K" : "") << std::flush;
  };
}

std::string edit_summary(const hydraopt::EditReport& r) {
  size_t added = 0;
  for (auto& t : r.tasks) added += t.status == "added";
  std::string s = fmt::format("{} (refit {}): {} tasks", r.op, r.refit, r.tasks.size());
  if (r.op == "add") s += fmt::format(", {} added", added);
  else s += fmt::format(", {} removed", r.removed.size());
  s += fmt::format(", storage {:.3f} ({} of {} params, {} bytes), {:.2f} s", r.fraction, r.params, r.original_params,
                   r.bytes, r.seconds);
  for (auto& t : r.tasks) {
    if (t.status == "added" && t.rel_error) s += fmt::format("\n  added {:<24} rel. error {:.4g}", t.name, *t.rel_error);
  }
  return s;
}

std::string summary(const hydraopt::MergeReport& r) {
  const hydraopt::TaskError* worst = &r.tasks[0];
  for (auto& t : r.tasks) {
    if (t.rel_error > worst->rel_error) worst = &t;
  }
  const std::string metric = r.mean_frobenius_rel_error
                                 ? fmt::format("calibrated rel. error {:.4g}, Frobenius {:.4g}", r.mean_rel_error,
                                               *r.mean_frobenius_rel_error)
                                 : fmt::format("rel. error {:.4g}", r.mean_rel_error);
  return fmt::format(
      "{}: storage {:.3f} of the params ({} of {}), {} bytes ({:.3f} of a bf16 copy, {:.3f} of the inputs), "
      "mean {} (worst {} {:.4g}), {:.2f} s",
      r.method, r.fraction, r.params, r.original_params, r.bytes, r.bf16_fraction, r.byte_fraction, metric,
      worst->name, worst->rel_error, r.seconds);
}

// The ggml type of every LoRA tensor of a GGUF export: one line each, or
// a table of how many lora_a / lora_b tensors went out in which type.
void print_gguf_types(const std::vector<hydraopt::GgufTensorChoice>& choices, bool each) {
  std::cout << "ggml types (llama.cpp's own where the stored integers map exactly, else the float dtype):\n";
  if (each) {
    auto line = [](auto&& task, auto&& tensor, auto&& type, auto&& stored, auto&& reason) {
      return fmt::format("  {:<16} {:<34} {:<5} {:<14} {}\n", task, tensor, type, stored, reason);
    };
    std::cout << line("task", "tensor", "type", "stored", "why floats");
    for (auto& c : choices) std::cout << line(c.task, c.tensor, c.type, c.stored, c.reason);
    return;
  }
  auto line = [](auto&& count, auto&& tensor, auto&& type, auto&& stored, auto&& reason) {
    return fmt::format("  {:>7}  {:<6} {:<5} {:<14} {}\n", count, tensor, type, stored, reason);
  };
  std::map<std::tuple<std::string, std::string, std::string, std::string>, size_t> groups;
  for (auto& c : choices) {
    const std::string side = c.tensor.substr(c.tensor.rfind('.') + 1);  // lora_a or lora_b
    ++groups[{side, c.type, c.stored, c.reason}];
  }
  std::cout << line("tensors", "tensor", "type", "stored", "why floats");
  for (auto& [key, n] : groups) {
    auto& [side, type, stored, reason] = key;
    std::cout << line(n, side, type, stored, reason);
  }
}

}  // namespace

int main(int argc, char** argv) {
  // A merge allocates and frees module-sized buffers (tens of MB) again and
  // again. glibc's defaults hand each back to the kernel, and the next
  // module faults it in afresh: 20% of a hydra-point merge's CPU time went
  // to system time. Keep them in the heap: peak RSS is what it was.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 512 << 20);
  namespace dist = hydraopt::dist;
  dist::Environment mpi(argc, argv);  // MPI builds: one process per rank under mpirun
  const bool root = dist::rank() == 0;  // prints; under MPI, writes the bundle
  CLI::App app{"hydraopt: store many LoRA adapters of one model in a fraction of the space"};
  app.set_version_flag("--version", std::string("hydraopt ") + HYDRAOPT_VERSION);
  app.require_subcommand(1);

  hydraopt::LoadOptions load;
  auto add_load_flags = [&](CLI::App* cmd) {
    cmd->add_flag("--skip-unmergeable", load.skip_unmergeable,
                  "skip DoRA magnitudes, embeddings, biases and modules_to_save tensors with a warning");
  };

  // Options shared by merge and sweep.
  hydraopt::MergeOptions mo;
  std::string dtype;
  std::map<std::string, std::string> param_flags;
  auto add_merge_flags = [&](CLI::App* cmd) {
    cmd->add_option("--share", mo.share, "which factor may be shared: A, B or auto")->capture_default_str();
    cmd->add_option("--weights", mo.weights, "task weights: balanced, module (each module balanced on its own), uniform or a JSON file {task: weight}")
        ->capture_default_str();
    cmd->add_option("--groups", mo.groups_file, "JSON file [[task, ...], ...] grouping tasks for shared parts");
    cmd->add_option("--calibration", mo.calibration,
                    "directory of calibration statistics (<task>.safetensors, from `hydraopt calibrate`): fit the "
                    "errors on the inputs the tasks feed each module");
    cmd->add_option("--shrinkage", mo.shrinkage,
                    "with --calibration: the inputs' second moment shrunk towards the identity by this share, in [0, 1]")
        ->capture_default_str();
    cmd->add_option("--calibration-plan", mo.calibration_plan,
                    "with --calibration: choose the plan in the calibrated metric, or in the Frobenius one "
                    "(the data-free plan, then fitted calibrated)")
        ->capture_default_str();
    cmd->add_option("--calibration-rounds", mo.calibration_rounds,
                    "with --calibration: rounds of re-solving the shared bodies and the heads in each task's own "
                    "metric after the fit")
        ->capture_default_str()
        ->check(CLI::NonNegativeNumber);
    cmd->add_option("--threads", mo.threads, "worker threads (0: all cores)")->capture_default_str();
    cmd->add_option("--dtype", dtype, "stored dtype f32|f16|bf16 (default: the inputs' widest)");
    // A flag per parameter any method takes (the registry's); a flag the
    // chosen method does not take is an error from the library.
    std::set<std::string> added;
    for (const auto& m : hydraopt::methods()) {
      for (const auto& p : m.params) {
        if (!added.insert(p.name).second) continue;
        std::string flag = "--" + p.name;
        std::replace(flag.begin() + 2, flag.end(), '_', '-');
        cmd->add_option(flag, param_flags[p.name], p.help + " (" + p.range + "; see `hydraopt methods`)");
      }
    }
    add_load_flags(cmd);
  };

  std::vector<std::string> inputs;

  auto* inspect = app.add_subcommand("inspect", "summarise adapters and how much structure they share");
  bool json = false;
  inspect->add_option("adapters", inputs, "PEFT adapter directories (or NAME=DIR)")->required();
  inspect->add_flag("--json", json, "machine-readable output");
  add_load_flags(inspect);

  auto* merge = app.add_subcommand("merge", "merge adapters into one bundle within a storage budget");
  std::string bundle_out, report_out;
  double budget = 0, budget_bf16 = 0;
  int64_t budget_bytes = 0;
  merge->add_option("adapters", inputs, "PEFT adapter directories (or NAME=DIR)")->required();
  merge->add_option("--method", mo.method, "merge method (see `hydraopt methods`)")->capture_default_str();
  auto* budget_opt = merge->add_option("--budget", budget, "storage as a fraction of the original LoRA parameters (default 0.5)");
  auto* bytes_opt = merge->add_option("--budget-bytes", budget_bytes,
                                      "storage budget in bytes of tensor data; factors may be stored as integers");
  auto* bf16_opt = merge->add_option("--budget-bf16", budget_bf16,
                                     "storage budget in bytes, as a fraction of a bf16 copy of the adapters; "
                                     "factors may be stored as integers");
  budget_opt->excludes(bytes_opt);
  budget_opt->excludes(bf16_opt);
  bytes_opt->excludes(bf16_opt);
  merge->add_option("--plan", mo.plan_file, "use this plan (a report or bundle's plan) instead of planning");
  merge->add_option("-o,--output", bundle_out, "output bundle (.safetensors)")->required();
  merge->add_option("--report", report_out, "also write the report JSON here");
  add_merge_flags(merge);

  auto* sweep = app.add_subcommand("sweep", "compare methods across storage budgets");
  std::string methods_list, budgets_list = "0.05,0.1,0.2,0.3,0.4,0.52,0.6,0.8,1", out_dir;
  sweep->add_option("adapters", inputs, "PEFT adapter directories (or NAME=DIR)")->required();
  sweep->add_option("--methods", methods_list, "comma-separated methods (default: all)");
  std::string bf16_list;
  auto* budgets_opt = sweep->add_option("--budgets", budgets_list, "comma-separated storage fractions (of the parameters)")
                          ->capture_default_str();
  auto* bf16_list_opt = sweep->add_option(
      "--budgets-bf16", bf16_list,
      "comma-separated byte budgets as fractions of a bf16 copy of the adapters (factors may be stored as integers)");
  budgets_opt->excludes(bf16_list_opt);
  sweep->add_option("--out", out_dir, "output directory for sweep.json, sweep.md, sweep.svg")->required();
  add_merge_flags(sweep);

  auto* exp = app.add_subcommand("export", "write tasks of a bundle as standard PEFT adapter directories");
  std::string bundle_in, task, export_dir;
  bool all = false;
  exp->add_option("bundle", bundle_in, "bundle written by `hydraopt merge`")->required();
  auto* task_opt = exp->add_option("--task", task, "the task to export");
  auto* all_opt = exp->add_flag("--all", all, "export every task as DIR/<task>/");
  task_opt->excludes(all_opt);
  exp->add_option("-o,--output", export_dir, "output directory (with --format gguf and --task: the .gguf file)")->required();
  exp->add_option("--dtype", dtype, "dtype of the exported tensors (default: the bundle's)");
  // llama.cpp export (issue 6): --format gguf writes FILE.gguf (or DIR/<task>.gguf with --all).
  std::string export_format = "peft", base_model;
  exp->add_option("--format", export_format, "peft (directories) or gguf (llama.cpp LoRA files)")
      ->capture_default_str();
  exp->add_option("--base-model", base_model, "gguf: the base model directory (its config.json)");
  bool list_tensors = false, float_tensors = false;
  exp->add_flag("--list-tensors", list_tensors,
                "gguf: list every tensor's ggml type (default: a summary table)");
  exp->add_flag("--float-tensors", float_tensors,
                "gguf: write integer-stored factors in the float dtype too, not llama.cpp's Q8_0/Q4_0/Q4_1 "
                "(ggml rounds activations to 8 bits against those)");

  auto* export_model = app.add_subcommand("export-model", "write a LLaMA model directory as a llama.cpp GGUF model");
  std::string model_dir, model_out;
  export_model->add_option("model", model_dir, "model directory (config.json + model.safetensors)")->required();
  export_model->add_option("-o,--output", model_out, "output .gguf file")->required();
  export_model->add_option("--dtype", dtype, "dtype of the matrices f32|f16|bf16 (default f32; norms stay f32)");

  auto* verify = app.add_subcommand("verify", "check a bundle's integrity and, given its source adapters, its errors");
  std::vector<std::string> verify_sources;
  verify->add_option("bundle", bundle_in, "bundle written by `hydraopt merge`")->required();
  verify->add_option("adapters", verify_sources, "the source adapters (as given to merge) to check and recompute errors");
  verify->add_flag("--json", json, "machine-readable output");
  add_load_flags(verify);

  // Bundles that grow and shrink (issue 20): the work is src/engine/edit.cc.
  hydraopt::EditOptions eo;
  std::string refit;
  std::vector<CLI::Option*> edit_budget, edit_bytes;
  auto add_edit_flags = [&](CLI::App* cmd, const char* refits) {
    cmd->add_option("-o,--output", bundle_out, "output bundle (.safetensors; may be the input)")->required();
    cmd->add_option("--refit", refit, refits);
    auto* b = cmd->add_option("--budget", budget,
                              "refit to this storage fraction of the original LoRA parameters (float factors)");
    auto* bb = cmd->add_option("--budget-bytes", budget_bytes,
                               "refit to this many bytes of tensor data (factors may be stored as integers, "
                               "which add and remove do not edit yet)");
    b->excludes(bb);
    edit_budget.push_back(b);
    edit_bytes.push_back(bb);
    cmd->add_option("--report", report_out, "also write the report JSON here");
    cmd->add_option("--threads", eo.threads, "worker threads (0: all cores)")->capture_default_str();
  };
  auto* add_cmd = app.add_subcommand("add", "add adapters to a bundle without merging everything again");
  add_cmd->add_option("bundle", bundle_in, "bundle to add to")->required();
  add_cmd->add_option("adapters", inputs, "PEFT adapter directories (or NAME=DIR)")->required();
  add_edit_flags(add_cmd,
                 "none (default without a budget): stored factors unchanged, the new tasks' own appended; "
                 "touched: re-plan the modules the new adapters have; all (default with a budget): re-plan "
                 "every module, the stored tasks' reconstructions as their targets");
  add_load_flags(add_cmd);
  auto* remove_cmd = app.add_subcommand("remove", "remove tasks from a bundle");
  std::vector<std::string> remove_names;
  remove_cmd->add_option("bundle", bundle_in, "bundle to remove from")->required();
  remove_cmd->add_option("--task", remove_names, "task(s) to remove")->required();
  add_edit_flags(remove_cmd,
                 "none (default): the remaining tasks' factors kept byte for byte; all: re-plan the freed "
                 "space for the remaining tasks (their reconstructions as targets)");

  auto* methods_cmd = app.add_subcommand("methods", "list the merge methods and their parameters");

  auto* calibrate_cmd = app.add_subcommand(
      "calibrate", "write each task's calibration statistics (the inputs its adapter's modules see) for merge --calibration");
  hydraopt::CalibrateOptions calib;
  std::string calib_model, calib_data, calib_out;
  calibrate_cmd->add_option("model", calib_model, "model directory (config.json, model.safetensors; LLaMA family)")
      ->required();
  calibrate_cmd->add_option("adapters", calib.adapters, "PEFT adapter directories (or NAME=DIR)")->required();
  calibrate_cmd->add_option("--data", calib_data, "directory of <task>/calib.jsonl example files")->required();
  calibrate_cmd->add_option("-o,--out", calib_out, "output directory (one <task>.safetensors per task)")->required();
  calibrate_cmd->add_option("--examples", calib.examples, "examples per task, at most")->capture_default_str();
  calibrate_cmd->add_option("--max-rank", calib.max_rank, "eigenpairs kept per input site, at most")
      ->capture_default_str();
  calibrate_cmd->add_option("--threads", calib.threads, "worker threads (0: all cores)");

  auto* demo = app.add_subcommand("demo", "task benchmark on the shipped tiny LLaMA and its 40 adapters");
  hydraopt::BenchmarkOptions bench;
  std::string assets = "assets";
  demo->add_option("--assets", assets, "assets directory (model/, adapters/, tasks/)")->capture_default_str();
  std::string demo_set = "fast";
  demo->add_option("--set", demo_set,
                   "adapter set: fast (assets/adapters), NAME (assets/adapters-NAME), or all (each in OUT/NAME/)")
      ->capture_default_str();
  demo->add_option("--weights", bench.weights, "task weights of every merge (as merge --weights)")
      ->capture_default_str();
  std::vector<std::string> demo_points;
  demo->add_option("--points", demo_points,
                   "the points to evaluate instead of the default ones: METHOD@F (fraction of the parameters), "
                   "METHOD@1/N, METHOD@hydra or METHOD@bytes:F (fraction of a bf16 copy's bytes), comma-separated; "
                   "METHOD+cal@... merges with calibration statistics (tasks/*/calib.jsonl)")
      ->delimiter(',');
  demo->add_option("--limit", bench.limit, "test examples per task (0: all)")->capture_default_str();
  demo->add_option("--shrinkage", bench.shrinkage, "calibrated points (METHOD+cal@...): merge --shrinkage")
      ->capture_default_str();
  demo->add_option("--calibration-plan", bench.calibration_plan, "calibrated points: merge --calibration-plan")
      ->capture_default_str();
  demo->add_option("--calibration-rounds", bench.calibration_rounds, "calibrated points: merge --calibration-rounds")
      ->capture_default_str();
  bool demo_calibrated = false;
  demo->add_flag("--calibrated", demo_calibrated,
                 "also every hydraopt point calibrated (hydraopt+cal@..., statistics from tasks/*/calib.jsonl) "
                 "and calibrated RegMean (regmean+cal@1/N): a second curve, about 2 minutes more (8 min in all here)");
  demo->add_flag("--similarity", bench.similarity,
                 "also the edit similarity of the free-running greedy outputs (about 5x the scoring time)");
  demo->add_option("--ood", bench.ood,
                   "out of distribution: also compare each point's adapters with the originals on the first K test "
                   "prompts of every other task (agreement of greedy outputs)")
      ->check(CLI::Range(0, 1000));
  demo->add_option("--threads", bench.threads, "worker threads (0: all cores)");
  demo->add_flag("--json", json, "machine-readable output");
  hydraopt::OnlineOptions online;
  bool online_run = false;
  demo->add_flag("--online", online_run,
                 "the online benchmark instead: adapters arriving one at a time under a storage cap (add, refit, "
                 "merge, K-Merge, add after a hydra merge of the first --online-cap); writes online.{json,md,svg}");
  demo->add_option("--online-cap", online.cap_adapters, "--online: the storage cap, in adapters")->capture_default_str();
  demo->add_option("--online-every", online.every, "--online: score after every N arrivals")->capture_default_str();
  demo->add_option("--online-seed", online.seed, "--online: seed of the arrival order")->capture_default_str();
  demo->add_option("--online-arrivals", online.arrivals,
                   "--online: how many adapters arrive, the first of the order (0: all)")
      ->capture_default_str();
  std::string demo_out = "out/demo";
  demo->add_option("--out", demo_out, "directory for demo.json, demo.md and demo.svg")->capture_default_str();

  auto* synth_cmd = app.add_subcommand("synth", "write synthetic PEFT adapters trained from one base");
  hydraopt::SynthOptions synth;
  synth_cmd->add_option("out_dir", out_dir, "output directory")->required();
  synth_cmd->add_option("--preset", synth.preset, "tiny | small | llama-1b | llama-1b-shared | llama-7b")
      ->check(CLI::IsMember({"tiny", "small", "llama-1b", "llama-1b-shared", "llama-7b"}))
      ->capture_default_str();
  synth_cmd->add_option("--rank", synth.rank, "LoRA rank (default: the preset's; alpha / r is kept)")
      ->check(CLI::Range(1, 4096));
  synth_cmd->add_option("--tasks", synth.tasks, "number of adapters (default: the preset's)")
      ->check(CLI::Range(1, 100000));
  synth_cmd->add_option("--seed", synth.seed, "random seed")->capture_default_str();
  synth_cmd->add_option("--drift", synth.drift, "mean relative drift of A along shared directions (default: the preset's)")
      ->check(CLI::Range(0.0, 100.0));
  synth_cmd->add_option("--noise", synth.noise, "relative isotropic drift of A (default: the preset's)")
      ->check(CLI::Range(0.0, 100.0));
  synth_cmd->add_option("--head-noise", synth.head_noise, "within-cluster spread of B heads (default: the preset's)")
      ->check(CLI::Range(0.0, 100.0));
  synth_cmd->add_option("--statistics", synth.statistics,
                        "also write synthetic calibration statistics there (<task>.safetensors; for merge --calibration)");
  synth_cmd->add_option("--statistics-rank", synth.statistics_rank, "eigenpairs per input site in those statistics")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();

  std::exception_ptr usage;
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError&) {
    usage = std::current_exception();
  }
  // Ranks normally share their arguments (mpirun -np K); one prints usage
  // errors and --help, and no rank goes on without the others.
  if (const int first = dist::first_failed(usage != nullptr); first >= 0) {
    if (!usage) return 1;
    try {
      std::rethrow_exception(usage);
    } catch (const CLI::ParseError& e) {
      return first == dist::rank() ? app.exit(e) : e.get_exit_code();
    }
  }

  int status = 0;
  std::string error;
  try {
    if (dist::size() > 1 && !*merge) {
      throw hydraopt::Error("only merge runs on several MPI ranks: start " + app.get_subcommands()[0]->get_name() +
                            " without mpirun (or with -np 1)");
    }
    if (!root) load.warn = [](const std::string&) {};  // rank 0 warns for all
    for (auto& [k, v] : param_flags) {
      if (!v.empty()) mo.params[k] = v;
    }
    if (*inspect) {
      auto set = hydraopt::AdapterSet::open(inputs, load);
      auto x = hydraopt::inspect(set);
      std::cout << (json ? hydraopt::inspection_json(x) : hydraopt::inspection_table(x));
    } else if (*merge) {
      if (*budget_opt) mo.budget = budget;
      if (*bytes_opt) mo.budget_bytes = budget_bytes;
      if (*bf16_opt) {
        mo.budget = budget_bf16;
        mo.unit = hydraopt::BudgetUnit::kBytes;
      }
      mo.dtype = parse_dtype(dtype);
      if (root) mo.progress = progress_for("modules");
      std::optional<hydraopt::AdapterSet> set;
      dist::checked([&] {  // the outputs are rank 0's; every rank reads the inputs
        if (root) {
          check_writable(bundle_out);
          check_writable(report_out);
        }
        set.emplace(hydraopt::AdapterSet::open(inputs, load));
      });
      auto report = hydraopt::merge(*set, mo, bundle_out);
      if (root) {
        if (!report_out.empty()) hydraopt::write_report(report_out, report);
        for (const auto& w : report.warnings) std::cerr << "hydraopt: warning: " << w << "\n";
        std::cout << summary(report) << " -> " << bundle_out << "\n";
      }
    } else if (*add_cmd || *remove_cmd) {
      if (!refit.empty()) eo.refit = refit;
      for (auto* opt : edit_budget) {
        if (opt->count()) eo.budget = budget;
      }
      for (auto* opt : edit_bytes) {
        if (opt->count()) eo.budget_bytes = budget_bytes;
      }
      check_writable(bundle_out);
      check_writable(report_out);
      hydraopt::EditReport r;
      if (*add_cmd) {
        auto set = hydraopt::AdapterSet::open(inputs, load);
        r = hydraopt::add_adapters(bundle_in, set, eo, bundle_out);
      } else {
        r = hydraopt::remove_tasks(bundle_in, remove_names, eo, bundle_out);
      }
      if (!report_out.empty()) hydraopt::write_edit_report(report_out, r);
      for (auto& w : r.warnings) std::cerr << "hydraopt: warning: " << one_line(w) << "\n";
      std::cout << edit_summary(r) << "\n -> " << bundle_out << "\n";
    } else if (*sweep) {
      std::vector<std::string> names = split(methods_list);
      if (names.empty()) {
        for (auto& m : hydraopt::methods()) names.push_back(m.name);
      }
      std::vector<double> budgets;
      if (*bf16_list_opt) mo.unit = hydraopt::BudgetUnit::kBytes;
      const std::string flag = *bf16_list_opt ? "--budgets-bf16" : "--budgets";
      for (auto& b : split(*bf16_list_opt ? bf16_list : budgets_list)) {
        try {
          budgets.push_back(std::stod(b));
        } catch (...) {
          throw hydraopt::Error(flag + ": '" + b + "' is not a number");
        }
      }
      mo.dtype = parse_dtype(dtype);
      mo.progress = progress_for("modules");
      prepare_output_dir(out_dir, "sweep.json");
      auto set = hydraopt::AdapterSet::open(inputs, load);
      auto reports = hydraopt::sweep(set, names, budgets, mo);
      const std::string md =
          hydraopt::write_sweep(out_dir, reports, fmt::format("{} adapters: storage vs error", set.size()));
      std::cout << md << "\nwrote " << out_dir << "/sweep.json, sweep.md, sweep.svg\n";
    } else if (*exp) {
      if (task.empty() && !all) throw hydraopt::Error("export needs --task NAME or --all");
      std::vector<hydraopt::GgufTensorChoice> gguf_choices;
      if (export_format == "gguf") {
        if (base_model.empty()) {
          throw hydraopt::Error("export --format gguf needs --base-model DIR: the base model's config.json gives "
                                "the architecture and head counts llama.cpp's tensors depend on");
        }
        gguf_choices =
            hydraopt::Bundle::open(bundle_in).export_gguf(all ? "" : task, base_model, export_dir, parse_dtype(dtype),
                                                          !float_tensors);
      } else if (export_format == "peft") {
        if (!base_model.empty()) throw hydraopt::Error("--base-model is only used with --format gguf");
        if (list_tensors || float_tensors)
          throw hydraopt::Error("--list-tensors and --float-tensors are only used with --format gguf");
        hydraopt::Bundle::open(bundle_in).export_peft(all ? "" : task, export_dir, parse_dtype(dtype));
      } else {
        throw hydraopt::Error("--format must be peft or gguf, not '" + export_format + "'");
      }
      std::cout << "wrote " << (all ? "every task" : task) << " to " << export_dir << "\n";
      if (!gguf_choices.empty()) print_gguf_types(gguf_choices, list_tensors);
    } else if (*export_model) {
      hydraopt::export_model_gguf(model_dir, model_out, parse_dtype(dtype));
      std::cout << "wrote " << model_out << "\n";
    } else if (*verify) {
      auto v = hydraopt::verify_bundle(bundle_in, verify_sources, load);
      if (json) {
        nlohmann::ordered_json j = {{"ok", v.problems.empty()},
                                    {"problems", v.problems},
                                    {"modules", v.modules},
                                    {"modules_checksummed", v.modules_checksummed},
                                    {"sources_checked", v.sources_checked}};
        if (v.sources_checked) {
          j["mean_rel_error"] = v.mean_rel_error;
          j["tasks"] = nlohmann::ordered_json::array();
          for (auto& t : v.tasks) j["tasks"].push_back({{"name", t.name}, {"rel_error", t.rel_error}});
        }
        std::cout << j.dump(2) << "\n";
      } else {
        std::cout << fmt::format("{}: {} modules, {} with checksums{}\n", bundle_in, v.modules, v.modules_checksummed,
                                 v.problems.empty() ? ", all match" : "");
        for (auto& t : v.tasks) std::cout << fmt::format("  {:<24} rel. error {:.6g}\n", t.name, t.rel_error);
        if (v.sources_checked) std::cout << fmt::format("  mean rel. error {:.6g}\n", v.mean_rel_error);
      }
      if (!v.problems.empty()) {
        for (size_t k = 0; k + 1 < v.problems.size(); ++k) std::cerr << "hydraopt: error: " << one_line(v.problems[k]) << "\n";
        throw hydraopt::Error(v.problems.back());
      }
    } else if (*demo) {
      if (online_run) {
        if (demo_set == "all") throw hydraopt::Error("demo --online takes one --set, not all");
        if (bench.weights != "balanced" || !demo_points.empty()) {
          throw hydraopt::Error("demo --online does not take --weights or --points");
        }
        online.assets = assets;
        online.set = demo_set;
        online.limit = bench.limit;
        online.threads = bench.threads;
        prepare_output_dir(demo_out, "online.json");
        online.log = [](const std::string& line) { std::cerr << line << "\n"; };
        auto result = hydraopt::run_online(online);
        hydraopt::write_online(demo_out, result);
        std::cout << (json ? result.json() : result.table());
        std::cerr << "wrote " << (std::filesystem::path(demo_out) / "online.{json,md,svg}").string() << "\n";
        return 0;
      }
      bench.assets = assets;
      bench.log = [](const std::string& line) { std::cerr << line << "\n"; };
      if (!demo_points.empty()) {
        bench.points.clear();
        for (const auto& p : demo_points) bench.points.push_back(hydraopt::parse_demo_point(p));
      }
      if (demo_calibrated) {
        const auto given = bench.points;
        for (auto p : given) {
          if (hydraopt::find_method(p.method)->kind != hydraopt::MethodKind::kPlanner || p.calibrated) continue;
          p.calibrated = true;
          bench.points.push_back(p);
        }
        bench.points.push_back(hydraopt::parse_demo_point("regmean+cal@1/N"));
      }
      // One set: its results in OUT; all: each set's in OUT/<set>/.
      const bool all_sets = demo_set == "all";
      const std::vector<std::string> sets = all_sets ? hydraopt::adapter_sets(assets) : std::vector{demo_set};
      if (sets.empty()) throw hydraopt::Error(assets, "", "no adapter sets (adapters/ or adapters-NAME/)");
      prepare_output_dir(demo_out, "demo.json");
      if (all_sets && json) std::cout << "[";  // one JSON document per set
      for (const std::string& set : sets) {
        bench.set = set;
        if (all_sets) std::cerr << "adapter set " << set << "\n";
        const std::filesystem::path dir = all_sets ? std::filesystem::path(demo_out) / set : std::filesystem::path(demo_out);
        auto result = hydraopt::run_benchmark(bench);
        hydraopt::write_benchmark(dir, result);
        if (all_sets && json && set != sets.front()) std::cout << ",";
        std::cout << (json ? result.json() : result.table()) << (all_sets && !json ? "\n" : "");
        std::cerr << "wrote " << (dir / "demo.{json,md,svg}").string() << "\n";
      }
      if (all_sets && json) std::cout << "]\n";
    } else if (*calibrate_cmd) {
      calib.model = calib_model;
      calib.data = calib_data;
      calib.out = calib_out;
      hydraopt::calibrate(calib);
      std::cout << "calibrate: " << calib.adapters.size() << " tasks -> " << calib_out << "\n";
    } else if (*methods_cmd) {
      for (const auto& m : hydraopt::methods()) {
        std::cout << fmt::format("{:<16} {:<9} {}\n", m.name, m.single_adapter ? "single" : "per-task", m.summary);
        std::string ps;
        for (auto& p : m.params) ps += fmt::format("{}{}={} ({})", ps.empty() ? "" : ", ", p.name, p.default_value, p.range);
        std::cout << fmt::format("{:<16} {:<9} params: {}\n{:<16} {:<9} ref: {}\n", "", "",
                                 ps.empty() ? "none" : ps, "", "", m.reference);
      }
    } else if (*synth_cmd) {
      auto dirs = hydraopt::synth_write(out_dir, synth);
      std::cerr << fmt::format("wrote {} adapter(s) ({} preset) to {}\n", dirs.size(), synth.preset, out_dir);
    }
  } catch (const dist::PeerFailed&) {
    status = 1;  // the rank that failed says why
  } catch (const hydraopt::Error& e) {
    status = 1;
    error = "hydraopt: error: " + one_line(e.what());
  } catch (const std::exception& e) {
    status = 2;
    error = "hydraopt: internal error: " + one_line(e.what());
  }
  // Every rank gets here; one prints the error, and all fail if one did.
  const int failed = dist::first_failed(!error.empty());
  if (failed == dist::rank()) std::cerr << error << "\n";
  return failed >= 0 && status == 0 ? 1 : status;
}
