#include "io/option_files.h"

#include "core/quant.h"

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "hydraopt/error.h"
#include "io/json_fields.h"

namespace hydraopt::io {

using nlohmann::json;

namespace {

json read_json_file(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path, "", std::string("cannot open ") + what);
  try {
    return json::parse(in);
  } catch (const std::exception& e) {
    throw Error(path, "", std::string(what) + " is not valid JSON: " + e.what());
  }
}

// A plan entry's "rank" / "groups": an integer in 0..hi, or `fallback` when absent.
int64_t plan_int(const json& e, const char* key, int64_t fallback, int64_t hi, const std::string& file) {
  auto it = e.find(key);
  return it == e.end() ? fallback : int_field(*it, 0, hi, file, "", std::string("plan entry ") + key);
}

}  // namespace

namespace {

std::map<std::string, PlanEntry> plan_from_json(const json& j, const std::string& path) {
  const json* list = &j;
  if (j.is_object()) {
    if (j.contains("plan")) list = &j["plan"];
    else if (j.contains("modules")) list = &j["modules"];
  }
  if (!list->is_array()) throw Error(path, "", "plan file must hold a list of modules (or a report's \"plan\")");
  std::map<std::string, PlanEntry> by_name;
  try {
    for (auto& e : *list) {
      if (!e.is_object()) throw Error(path, "", "plan entries must be objects");
      auto fam = family_from_name(e.at("family").get<std::string>());
      if (!fam) throw Error(path, "", "unknown structure family " + e.at("family").dump());
      const std::string name = e.at("name").get<std::string>();
      PlanEntry entry{{*fam, plan_int(e, "rank", 0, int64_t{1} << 40, path),
                       static_cast<int>(plan_int(e, "groups", 0, 1 << 24, path))},
                      {}};
      if (const auto pr = e.find("precision"); pr != e.end()) {
        if (!pr->is_object()) throw Error(path, name, "precision is not an object of roles");
        for (const auto& [key, format] : pr->items()) {
          const std::optional<Role> role = role_named(key);
          if (!role) throw Error(path, name, "precision names an unknown role '" + key + "' (head, body or core)");
          if (!format.is_string()) throw Error(path, name, "precision of " + key + " is not a string");
          entry.precision.of(*role) = parse_quant_format(format.get<std::string>(), path + ": " + name + ": precision");
        }
      }
      by_name[name] = entry;
    }
  } catch (const json::exception& ex) {
    throw Error(path, "", std::string("malformed plan entry: ") + ex.what());
  }
  return by_name;
}

}  // namespace

std::map<std::string, PlanEntry> read_plan_file(const std::string& path) {
  return plan_from_json(read_json_file(path, "plan file"), path);
}

std::map<std::string, PlanEntry> parse_plan(const std::string& text, const std::string& label) {
  const json j = json::parse(text, nullptr, false);
  if (j.is_discarded()) throw Error(label, "", "plan is not valid JSON");
  return plan_from_json(j, label);
}

std::vector<int> read_groups_file(const std::string& path, const std::vector<std::string>& tasks, int* groups) {
  json j = read_json_file(path, "groups file");
  if (!j.is_array()) throw Error(path, "", "groups file must be a list of lists of task names");
  std::map<std::string, int> label;
  int g = 0;
  for (auto& group : j) {
    if (!group.is_array() || group.empty()) throw Error(path, "", "each group must be a non-empty list");
    for (auto& name : group) {
      if (!name.is_string()) throw Error(path, "", "task names must be strings");
      if (!label.emplace(name.get<std::string>(), g).second) {
        throw Error(path, "", "task '" + name.get<std::string>() + "' is in two groups");
      }
    }
    ++g;
  }
  std::vector<int> out;
  for (auto& t : tasks) {
    auto it = label.find(t);
    if (it == label.end()) throw Error(path, "", "task '" + t + "' is in no group");
    out.push_back(it->second);
  }
  if (label.size() != tasks.size()) throw Error(path, "", "groups name tasks that are not being merged");
  *groups = g;
  return out;
}

std::vector<double> read_weights_file(const std::string& path, const std::vector<std::string>& tasks) {
  json j = read_json_file(path, "weights file (or use balanced / uniform)");
  if (!j.is_object()) throw Error(path, "", "weights file must be an object {\"task\": weight}");
  std::vector<double> out;
  for (auto& t : tasks) {
    auto it = j.find(t);
    if (it == j.end() || !it->is_number() || it->get<double>() < 0 || !std::isfinite(it->get<double>())) {
      throw Error(path, "", "needs a non-negative weight for task '" + t + "'");
    }
    out.push_back(it->get<double>());
  }
  if (j.size() != tasks.size()) throw Error(path, "", "weights file names tasks that are not being merged");
  return out;
}

}  // namespace hydraopt::io
