// The report of `hydraopt add` / `hydraopt remove` (include/hydraopt/edit.h).
#include <nlohmann/json.hpp>

#include "hydraopt/edit.h"
#include "io/atomic_file.h"

namespace hydraopt {

std::string edit_report_json(const EditReport& r) {
  using nlohmann::ordered_json;
  ordered_json tasks = ordered_json::array();
  for (const auto& t : r.tasks) {
    tasks.push_back({{"name", t.name},
                     {"status", t.status},
                     {"rel_error", t.rel_error ? ordered_json(*t.rel_error) : ordered_json(nullptr)},
                     {"reconstructed", t.reconstructed}});
  }
  ordered_json j = {{"op", r.op},
                    {"refit", r.refit},
                    {"storage",
                     {{"params", r.params}, {"original_params", r.original_params}, {"fraction", r.fraction}, {"bytes", r.bytes}}},
                    {"tasks", tasks},
                    {"removed", r.removed},
                    {"warnings", r.warnings},
                    {"seconds", r.seconds}};
  return j.dump(2) + "\n";
}

void write_edit_report(const std::filesystem::path& path, const EditReport& r) {
  io::write_file_atomic(path, edit_report_json(r));
}

}  // namespace hydraopt
