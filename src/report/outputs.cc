// Report and sweep files.
#include <nlohmann/json.hpp>

#include "hydraopt/merge.h"
#include "io/atomic_file.h"
#include "report/sweep_report.h"

namespace hydraopt {

std::string report_json(const MergeReport& r, bool with_plan) {
  using nlohmann::ordered_json;
  ordered_json j = {{"method", r.method},
                    {"budget", r.budget},
                    {"budget_unit", r.unit == BudgetUnit::kBytes ? "bf16_bytes" : "params"},
                    {"storage",
                     {{"params", r.params},
                      {"original_params", r.original_params},
                      {"fraction", r.fraction},
                      {"bytes", r.bytes},
                      {"original_bytes", r.original_bytes},
                      {"byte_fraction", r.byte_fraction},
                      {"bf16_fraction", r.bf16_fraction}}},
                    {"mean_rel_error", r.mean_rel_error}};
  // Calibrated merges: rel_error is in the calibrated metric, and the
  // Frobenius errors come beside it.
  if (r.mean_frobenius_rel_error) j["mean_frobenius_rel_error"] = *r.mean_frobenius_rel_error;
  j["tasks"] = ordered_json::array();
  for (auto& t : r.tasks) {
    ordered_json task = {{"name", t.name}, {"rel_error", t.rel_error}};
    if (t.frobenius_rel_error) task["frobenius_rel_error"] = *t.frobenius_rel_error;
    j["tasks"].push_back(task);
  }
  if (!r.warnings.empty()) j["warnings"] = r.warnings;
  j["seconds"] = r.seconds;
  j["parameters"] = r.params_used;
  if (with_plan) j["plan"] = ordered_json::parse(r.plan_json);
  return j.dump(2) + "\n";
}

void write_report(const std::filesystem::path& path, const MergeReport& r) {
  io::write_file_atomic(path, report_json(r));
}

std::string write_sweep(const std::filesystem::path& dir, const std::vector<MergeReport>& reports,
                        const std::string& title) {
  std::string all = "[\n";
  for (size_t i = 0; i < reports.size(); ++i) {
    std::string one = report_json(reports[i], false);
    one.pop_back();  // the newline
    all += one + (i + 1 < reports.size() ? ",\n" : "\n");
  }
  all += "]\n";
  const std::string md = sweep_markdown(reports);
  io::write_file_atomic(dir / "sweep.json", all);
  io::write_file_atomic(dir / "sweep.md", md);
  io::write_file_atomic(dir / "sweep.svg", sweep_svg(reports, title));
  return md;
}

}  // namespace hydraopt
