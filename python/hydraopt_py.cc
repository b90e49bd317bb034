// Python bindings (pybind11): the extension `hydraopt._hydraopt`, re-exported
// by the package python/hydraopt/ (`import hydraopt`; type stubs in
// python/hydraopt/_hydraopt.pyi: keep them in step).
//
// A thin layer over the public API, plus reading a bundle's factors
// (src/io/bundle.h). What crosses into Python is copied: factors become
// C-contiguous float64 numpy arrays (the values as the bundle stores them,
// i.e. already rounded to its dtype), logits float32; reports, plans and
// inspections are plain dicts and lists (the JSON the CLI writes, parsed).
// Every hydraopt::Error surfaces as hydraopt.Error (a ValueError) with the
// library's one-line message. The GIL is released around merge, inspect,
// export and forward passes.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>

#include <Eigen/Core>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

#include "hydraopt/adapter.h"
#include "hydraopt/bundle.h"
#include "hydraopt/edit.h"
#include "hydraopt/error.h"
#include "hydraopt/inspect.h"
#include "hydraopt/merge.h"
#include "hydraopt/model.h"

namespace py = pybind11;
using namespace pybind11::literals;
namespace fs = std::filesystem;

namespace {

template <typename Scalar>
py::array_t<Scalar> to_numpy(const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& m) {
  py::array_t<Scalar> a({static_cast<py::ssize_t>(m.rows()), static_cast<py::ssize_t>(m.cols())});
  auto v = a.template mutable_unchecked<2>();
  for (Eigen::Index i = 0; i < m.rows(); ++i) {
    for (Eigen::Index j = 0; j < m.cols(); ++j) v(i, j) = m(i, j);
  }
  return a;
}

py::object json_loads(const std::string& text) {
  return py::module_::import("json").attr("loads")(text);
}

// str, bytes-free os.PathLike -> the string the library takes.
std::string path_string(const py::handle& p) {
  return py::str(py::module_::import("os").attr("fspath")(p)).cast<std::string>();
}

hydraopt::BudgetUnit parse_unit(const std::string& s) {
  if (s == "params") return hydraopt::BudgetUnit::kParams;
  if (s == "bytes") return hydraopt::BudgetUnit::kBytes;
  throw hydraopt::Error("unit must be 'params' or 'bytes' (fractions of a bf16 copy's bytes), not '" + s + "'");
}

std::optional<hydraopt::DType> parse_dtype(const std::optional<std::string>& s) {
  if (!s) return std::nullopt;
  return hydraopt::parse_storage_dtype(*s, "dtype");
}

hydraopt::LoadOptions load_options(bool skip_unmergeable) {
  hydraopt::LoadOptions o;
  o.skip_unmergeable = skip_unmergeable;
  // Called with the GIL held: adapters are opened before any release.
  // A warning filter of "error" turns the warning into an exception.
  o.warn = [](const std::string& msg) {
    if (PyErr_WarnEx(PyExc_UserWarning, msg.c_str(), 1) != 0) throw py::error_already_set();
  };
  return o;
}

// Adapter objects are taken as they are; anything else is a path or NAME=DIR.
hydraopt::AdapterSet adapter_set(const py::iterable& items, bool skip_unmergeable) {
  if (py::isinstance<py::str>(items)) {
    throw hydraopt::Error("adapters must be a list of paths (or Adapter objects), not one string");
  }
  std::vector<hydraopt::Adapter> adapters;
  for (const py::handle& item : items) {
    if (py::isinstance<hydraopt::Adapter>(item)) {
      adapters.push_back(item.cast<hydraopt::Adapter>());
    } else {
      adapters.push_back(
          hydraopt::Adapter::open(path_string(item), load_options(skip_unmergeable)));
    }
  }
  return hydraopt::AdapterSet(std::move(adapters));
}

// A directory removed when the last bundle using it goes away.
struct TempDir {
  fs::path path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "hydraopt-py-XXXXXX").string();
    if (!mkdtemp(tmpl.data()))
      throw hydraopt::Error(tmpl, "", "cannot create a temporary directory");
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

struct PyBundle {
  hydraopt::Bundle data;
  std::optional<std::string> report_json;
  std::shared_ptr<TempDir> owner;  ///< set when the bundle is a temporary file
};

PyBundle open_bundle(const fs::path& path) { return {hydraopt::Bundle::open(path), std::nullopt, nullptr}; }

hydraopt::EditOptions edit_options(const std::optional<std::string>& refit, std::optional<double> budget,
                                   std::optional<int64_t> budget_bytes, int threads) {
  hydraopt::EditOptions o;
  o.refit = refit;
  o.budget = budget;
  o.budget_bytes = budget_bytes;
  o.threads = threads;
  return o;
}

// Where a call that makes a bundle writes it: `output`, or a temporary
// file that `b` owns.
fs::path bundle_output(const py::object& output, PyBundle* b) {
  if (!output.is_none()) return path_string(output);
  b->owner = std::make_shared<TempDir>();
  return b->owner->path / "bundle.safetensors";
}

// add()/remove(): `edit` writes the edited bundle to the path it is given:
// `output`, or a temporary file the returned Bundle owns.
template <typename Edit>
PyBundle edited(const py::object& output, Edit&& edit) {
  PyBundle b;
  const fs::path path = bundle_output(output, &b);
  py::gil_scoped_release unlocked;
  b.report_json = hydraopt::edit_report_json(edit(path));
  b.data = hydraopt::Bundle::open(path);
  return b;
}

py::dict module_factors(const PyBundle& b, const std::string& module) {
  const hydraopt::BundleModule bm = b.data.module(b.data.module_index(module));
  py::list heads, cores, bodies;
  for (const auto& h : bm.heads()) heads.append(to_numpy(h));
  for (const auto& c : bm.cores()) cores.append(to_numpy(c));
  for (const auto& r : bm.bodies()) bodies.append(to_numpy(r));
  return py::dict("name"_a = bm.name(), "in"_a = bm.in(), "out"_a = bm.out(), "structure"_a = bm.structure(),
                  "heads"_a = heads, "cores"_a = cores, "bodies"_a = bodies, "head_of"_a = bm.head_of(),
                  "core_of"_a = bm.core_of(), "body_of"_a = bm.body_of(), "scale"_a = bm.scale(),
                  "diagonal_cores"_a = bm.diagonal_cores());
}

}  // namespace

PYBIND11_MODULE(_hydraopt, m) {
  m.doc() = "The C++ extension of the hydraopt package: use it as `import hydraopt`.";
  m.attr("__version__") = HYDRAOPT_VERSION;
  py::register_exception<hydraopt::Error>(m, "Error", PyExc_ValueError);

  py::class_<hydraopt::Adapter>(m, "Adapter",
                                "A PEFT LoRA adapter directory (factors read on demand).")
      .def(py::init([](const py::object& spec, bool skip_unmergeable) {
             return hydraopt::Adapter::open(path_string(spec), load_options(skip_unmergeable));
           }),
           "spec"_a, "skip_unmergeable"_a = false,
           "spec: a directory, or 'NAME=DIRECTORY' to name the task.")
      .def_property_readonly("name", &hydraopt::Adapter::name)
      .def_property_readonly("dir", [](const hydraopt::Adapter& a) { return a.dir().string(); })
      .def_property_readonly("base_model", &hydraopt::Adapter::base_model)
      .def_property_readonly("rank", &hydraopt::Adapter::rank)
      .def_property_readonly("alpha", &hydraopt::Adapter::alpha)
      .def_property_readonly("use_rslora", &hydraopt::Adapter::use_rslora)
      .def_property_readonly("fan_in_fan_out", &hydraopt::Adapter::fan_in_fan_out)
      .def_property_readonly(
          "dtype", [](const hydraopt::Adapter& a) { return std::string(dtype_name(a.dtype())); })
      .def_property_readonly("target_modules", &hydraopt::Adapter::target_modules)
      .def_property_readonly("params", &hydraopt::Adapter::params)
      .def_property_readonly(
          "modules",
          [](const hydraopt::Adapter& a) {
            py::list out;
            for (const auto& x : a.modules()) {
              out.append(py::dict("name"_a = x.name, "in"_a = x.in, "out"_a = x.out,
                                  "rank"_a = x.rank, "alpha"_a = x.alpha, "scale"_a = x.scale,
                                  "dtype"_a = std::string(dtype_name(x.dtype))));
            }
            return out;
          },
          "Per module: name, in, out, rank, alpha, scale (PEFT scaling), dtype.")
      .def(
          "load",
          [](const hydraopt::Adapter& a, const std::string& module) {
            auto l = a.load(module);
            return py::dict("A"_a = to_numpy(l.A), "B"_a = to_numpy(l.B), "scale"_a = l.scale);
          },
          "module"_a,
          "{'A': r x in, 'B': out x r (float64 copies), 'scale': s}; the update is s * B @ A.")
      .def("__repr__", [](const hydraopt::Adapter& a) {
        return "<hydraopt.Adapter '" + a.name() + "' r=" + std::to_string(a.rank()) + ", " +
               std::to_string(a.modules().size()) + " modules>";
      });

  py::class_<PyBundle>(
      m, "Bundle",
      "A hydraopt bundle: shared and per-task factors of many adapters in one safetensors file.")
      .def(py::init([](const py::object& path) { return open_bundle(path_string(path)); }),
           "path"_a)
      .def_property_readonly(
          "path", [](const PyBundle& b) { return b.data.path().string(); },
          "The bundle file (a temporary one, removed with this object, unless merge() "
          "was given output=).")
      .def_property_readonly("tasks",
                             [](const PyBundle& b) { return b.data.tasks(); })
      .def_property_readonly("modules",
                             [](const PyBundle& b) {
                               std::vector<std::string> names;
                               for (size_t m = 0; m < b.data.module_count(); ++m) names.push_back(b.data.module(m).name());
                               return names;
                             })
      .def_property_readonly("method", [](const PyBundle& b) { return b.data.method(); })
      .def_property_readonly("base_model", [](const PyBundle& b) { return b.data.base_model(); })
      .def_property_readonly(
          "dtype", [](const PyBundle& b) { return std::string(dtype_name(b.data.dtype())); })
      .def_property_readonly(
          "params", [](const PyBundle& b) { return b.data.params(); },
          "Stored numbers (sum of the sizes of every stored tensor).")
      .def_property_readonly("original_params",
                             [](const PyBundle& b) { return b.data.original_params(); })
      .def_property_readonly(
          "report",
          [](const PyBundle& b) -> py::object {
            if (!b.report_json) return py::none();
            return json_loads(*b.report_json);
          },
          "merge()'s report as a dict (as `hydraopt merge --report` writes it), or add()'s / remove()'s "
          "(as `hydraopt add --report`); None for a bundle read from a file.")
      .def_property_readonly(
          "plan",
          [](const PyBundle& b) {
            py::list out;
            for (size_t m = 0; m < b.data.module_count(); ++m) out.append(json_loads(b.data.module(m).plan_json()));
            return out;
          },
          "Per module: name, in, out, structure, family, rank, groups, params.")
      .def("factors", &module_factors, "module"_a,
           "One module's stored factors: heads (out x k), cores, bodies (k' x in) as float64 numpy "
           "copies, "
           "and head_of / core_of / body_of / scale per task. Task i's update is scale[i] * "
           "heads[head_of[i]] @ C @ bodies[body_of[i]] with C = cores[core_of[i]] (a diagonal when "
           "diagonal_cores; the identity when core_of[i] < 0).")
      .def(
          "update",
          [](const PyBundle& b, const std::string& task, const std::string& module) {
            const hydraopt::FactoredUpdate u =
                b.data.module(b.data.module_index(module)).task_update(b.data.task_index(task));
            Eigen::MatrixXd dw = u.left * u.right;
            return to_numpy(dw);
          },
          "task"_a, "module"_a,
          "Task's reconstructed update on the module, dense out x in float64 (scaling included).")
      .def(
          "export",
          [](const PyBundle& b, const py::object& dir, const std::optional<std::string>& task,
             const std::optional<std::string>& dtype) {
            const std::string out = path_string(dir);
            const auto dt = parse_dtype(dtype);
            py::gil_scoped_release unlocked;
            b.data.export_peft(task.value_or(""), out, dt);
          },
          "dir"_a, "task"_a = py::none(), "dtype"_a = py::none(),
          "Writes one task (or every task, as dir/<task>/, when task is None) as PEFT adapter "
          "directories.")
      .def(
          "task_adapter",
          [](const PyBundle& b, const std::string& task) {
            const hydraopt::Bundle::PeftAdapter a = b.data.task_adapter(task);
            py::dict state;
            for (const auto& [name, m] : a.tensors) state[py::str(name)] = to_numpy(m);
            return py::make_tuple(state, json_loads(a.config_json));
          },
          "task"_a,
          "The task as a PEFT adapter without writing files: (state_dict, config), where state_dict maps\n"
          "'base_model.model.<module>.lora_A.weight' (k x in) and '...lora_B.weight' (out x k) to float64\n"
          "numpy arrays and config is adapter_config.json as a dict (lora_alpha / alpha_pattern keep each\n"
          "scale exact), as export() would write them.")
      .def(
          "add",
          [](const PyBundle& b, const py::iterable& adapters, const py::object& output,
             const std::optional<std::string>& refit, std::optional<double> budget,
             std::optional<int64_t> budget_bytes, int threads, bool skip_unmergeable) {
            const auto o = edit_options(refit, budget, budget_bytes, threads);
            auto set = adapter_set(adapters, skip_unmergeable);
            return edited(output, [&](const fs::path& out) { return hydraopt::add_adapters(b.data.path(), set, o, out); });
          },
          "adapters"_a, "output"_a = py::none(), "refit"_a = py::none(), "budget"_a = py::none(),
          "budget_bytes"_a = py::none(), "threads"_a = 0, "skip_unmergeable"_a = false,
          "A new Bundle with `adapters` added, as `hydraopt add` (this one is unchanged). refit: 'none'\n"
          "(default without a budget: stored factors unchanged, the new tasks' own appended), 'touched' or\n"
          "'all' (default with a budget: re-planned with the stored tasks' reconstructions as targets).\n"
          "budget: a fraction of the parameters, float factors (as merge); budget_bytes: bytes, where\n"
          "integer factors may be chosen (add and remove do not edit those yet).\n"
          "Its report (a dict) gives each task's status and error. output: where to write it (default: a\n"
          "temporary file owned by the returned Bundle).")
      .def(
          "remove",
          [](const PyBundle& b, const std::vector<std::string>& tasks, const py::object& output,
             const std::optional<std::string>& refit, std::optional<double> budget,
             std::optional<int64_t> budget_bytes, int threads) {
            const auto o = edit_options(refit, budget, budget_bytes, threads);
            return edited(output, [&](const fs::path& out) { return hydraopt::remove_tasks(b.data.path(), tasks, o, out); });
          },
          "tasks"_a, "output"_a = py::none(), "refit"_a = py::none(), "budget"_a = py::none(),
          "budget_bytes"_a = py::none(), "threads"_a = 0,
          "A new Bundle without `tasks` (names), as `hydraopt remove`: with refit 'none' (default) the\n"
          "remaining tasks' factors stay byte for byte; 'all' re-plans the freed space for them.")
      .def("__repr__", [](const PyBundle& b) {
        return "<hydraopt.Bundle " + b.data.method() + ", " + std::to_string(b.data.tasks().size()) +
               " tasks, " + std::to_string(b.data.module_count()) + " modules, " +
               std::to_string(b.data.params()) + " params>";
      });

  m.def(
      "sweep",
      [](const py::iterable& adapters, const std::optional<std::vector<std::string>>& methods,
         const std::vector<double>& budgets, const std::string& share, const std::string& weights,
         const std::optional<std::string>& groups, int threads, const std::optional<std::string>& dtype,
         const std::optional<py::dict>& params, bool skip_unmergeable, const std::string& unit,
         const std::optional<std::string>& calibration, double shrinkage, int calibration_rounds) {
        hydraopt::MergeOptions o;
        o.unit = parse_unit(unit);
        o.calibration = calibration.value_or("");
        o.shrinkage = shrinkage;
        o.calibration_rounds = calibration_rounds;
        o.share = share;
        o.weights = weights;
        o.groups_file = groups.value_or("");
        o.threads = threads;
        o.dtype = parse_dtype(dtype);
        if (params) {
          for (const auto& [k, v] : *params) o.params[py::str(k)] = py::str(v);
        }
        std::vector<std::string> names;
        if (methods) {
          names = *methods;
        } else {
          for (const auto& x : hydraopt::methods()) names.push_back(x.name);
        }
        auto set = adapter_set(adapters, skip_unmergeable);
        std::vector<std::string> reports;
        {
          py::gil_scoped_release unlocked;
          for (const auto& r : hydraopt::sweep(set, names, budgets, o)) reports.push_back(hydraopt::report_json(r, true));
        }
        py::list out;
        for (const auto& r : reports) out.append(json_loads(r));
        return out;
      },
      "adapters"_a, "methods"_a = py::none(),
      "budgets"_a = std::vector<double>{0.05, 0.1, 0.2, 0.3, 0.4, 0.52, 0.6, 0.8, 1.0}, "share"_a = "auto",
      "weights"_a = "balanced", "groups"_a = py::none(), "threads"_a = 0, "dtype"_a = py::none(),
      "params"_a = py::none(), "skip_unmergeable"_a = false, "unit"_a = "params", "calibration"_a = py::none(),
      "shrinkage"_a = 0.3, "calibration_rounds"_a = 0,
      "Evaluates every (method, budget) without writing bundles, as `hydraopt sweep`: a list of\n"
      "report dicts (as merge()'s report), per method in the budgets' order. unit: 'params'\n"
      "(budgets are fractions of the parameters) or 'bytes' (of a bf16 copy's bytes; factors may\n"
      "be stored as integers). methods: names from\n"
      "methods() (default: all); a method whose storage does not follow the budget gives one\n"
      "report at its own storage. params: given to every method, so name only parameters all of\n"
      "them take. calibration, shrinkage, calibration_rounds: as merge().");

  m.def(
      "merge",
      [](const py::iterable& adapters, std::optional<double> budget, const std::string& method,
         std::optional<int64_t> budget_bytes, const std::string& share, const std::string& weights,
         const std::optional<std::string>& groups, const std::optional<std::string>& plan,
         int threads, const std::optional<std::string>& dtype,
         const std::optional<py::dict>& params, const py::object& output, bool skip_unmergeable,
         const std::string& unit, const std::optional<std::string>& calibration, double shrinkage,
         const std::string& calibration_plan, int calibration_rounds) {
        hydraopt::MergeOptions o;
        o.calibration_rounds = calibration_rounds;
        o.unit = parse_unit(unit);
        o.calibration = calibration.value_or("");
        o.shrinkage = shrinkage;
        o.calibration_plan = calibration_plan;
        o.method = method;
        o.budget = budget;
        o.budget_bytes = budget_bytes;
        o.share = share;
        o.weights = weights;
        o.groups_file = groups.value_or("");
        o.plan_file = plan.value_or("");
        o.threads = threads;
        o.dtype = parse_dtype(dtype);
        if (params) {
          for (const auto& [k, v] : *params) o.params[py::str(k)] = py::str(v);
        }
        auto set = adapter_set(adapters, skip_unmergeable);
        PyBundle b;
        const fs::path path = bundle_output(output, &b);
        {
          py::gil_scoped_release unlocked;
          auto report = hydraopt::merge(set, o, path);
          b.report_json = hydraopt::report_json(report, true);
          b.data = hydraopt::Bundle::open(path);
        }
        return b;
      },
      "adapters"_a, "budget"_a = py::none(), "method"_a = "hydraopt", "budget_bytes"_a = py::none(),
      "share"_a = "auto", "weights"_a = "balanced", "groups"_a = py::none(), "plan"_a = py::none(),
      "threads"_a = 0, "dtype"_a = py::none(), "params"_a = py::none(), "output"_a = py::none(),
      "skip_unmergeable"_a = false, "unit"_a = "params", "calibration"_a = py::none(), "shrinkage"_a = 0.3,
      "calibration_plan"_a = "calibrated", "calibration_rounds"_a = 0,
      "Merges adapters (paths, 'NAME=DIR' strings or Adapter objects) into a Bundle, as `hydraopt "
      "merge`.\n"
      "budget: fraction of the original LoRA parameter count (unit='params') or of the bytes of a\n"
      "bf16 copy of the adapters (unit='bytes': factors may be stored as integers, as with\n"
      "budget_bytes); weights: 'balanced', 'module' (each module of each task balanced on its own),\n"
      "'uniform' or a JSON file, as --weights; params: method parameters by name\n"
      "(see methods()); output: where to write the bundle (default: a temporary file owned by the\n"
      "returned Bundle); calibration: a directory of statistics files (`hydraopt calibrate`), as\n"
      "--calibration, with shrinkage, calibration_plan and calibration_rounds as --shrinkage,\n"
      "--calibration-plan and --calibration-rounds.\n"
      "Raises hydraopt.Error on bad input.");

  m.def(
      "inspect",
      [](const py::iterable& adapters, bool skip_unmergeable) {
        auto set = adapter_set(adapters, skip_unmergeable);
        std::string text;
        {
          py::gil_scoped_release unlocked;
          text = hydraopt::inspection_json(hydraopt::inspect(set));
        }
        return json_loads(text);
      },
      "adapters"_a, "skip_unmergeable"_a = false,
      "`hydraopt inspect --json` as a dict: tasks and modules.");

  m.def(
      "export",
      [](const py::object& bundle, const py::object& dir, const std::optional<std::string>& task,
         const std::optional<std::string>& dtype) {
        const std::string in = path_string(bundle), out = path_string(dir);
        const auto dt = parse_dtype(dtype);
        py::gil_scoped_release unlocked;
        hydraopt::Bundle::open(in).export_peft(task.value_or(""), out, dt);
      },
      "bundle"_a, "dir"_a, "task"_a = py::none(), "dtype"_a = py::none(),
      "`hydraopt export`: one task (or all, as dir/<task>/) of a bundle file as PEFT adapters.");

  m.def(
      "methods",
      [] {
        py::list out;
        for (const auto& x : hydraopt::methods()) {
          py::list params;
          for (const auto& p : x.params) {
            params.append(
                py::dict("name"_a = p.name, "default"_a = p.default_value, "help"_a = p.help,
                         "type"_a = p.type, "range"_a = p.range));
          }
          out.append(py::dict("name"_a = x.name, "single_adapter"_a = x.single_adapter,
                              "uses_budget"_a = x.uses_budget, "summary"_a = x.summary,
                              "reference"_a = x.reference, "params"_a = params));
        }
        return out;
      },
      "The method registry, as `hydraopt methods` lists it.");

  py::class_<hydraopt::Model>(m, "Model",
                              "The tiny LLaMA forward pass (config.json + model.safetensors).")
      .def(py::init([](const py::object& dir) { return hydraopt::Model::open(path_string(dir)); }),
           "dir"_a)
      .def_property_readonly(
          "config",
          [](const hydraopt::Model& x) {
            const auto& c = x.config();
            return py::dict("hidden"_a = c.hidden, "intermediate"_a = c.intermediate,
                            "layers"_a = c.layers, "heads"_a = c.heads, "kv_heads"_a = c.kv_heads,
                            "head_dim"_a = c.head_dim, "vocab"_a = c.vocab);
          })
      .def(
          "forward",
          [](const hydraopt::Model& x, const std::vector<int>& tokens,
             const hydraopt::Adapter* adapter, const PyBundle* bundle,
             const std::optional<std::string>& task) {
            if (adapter && bundle)
              throw hydraopt::Error("forward takes an adapter or a bundle, not both");
            if (bundle && !task) throw hydraopt::Error("forward with a bundle needs task=");
            Eigen::MatrixXf logits;
            {
              py::gil_scoped_release unlocked;
              std::optional<hydraopt::Deltas> d;
              if (adapter) d = hydraopt::deltas_from_adapter(*adapter);
              if (bundle) d = hydraopt::deltas_from_bundle(bundle->data.path(), *task);
              logits = x.forward(tokens, d ? &*d : nullptr);
            }
            return to_numpy(logits);
          },
          "tokens"_a, "adapter"_a = py::none(), "bundle"_a = py::none(), "task"_a = py::none(),
          "Logits (T x vocab, float32) for token ids, with an adapter's or a bundle task's updates "
          "applied "
          "as low-rank terms (W x + L (R x)).")
      .def("encode_prompt", &hydraopt::Model::encode_prompt, "prompt"_a,
           "bos + UTF-8 bytes + sep.");
}
