// hydraopt command-line tool: a thin front-end over the library.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cstdio>
#include <iostream>

#include "hydraopt/adapter.h"
#include "hydraopt/error.h"
#include "hydraopt/inspect.h"
#include "hydraopt/synth.h"

namespace {

// One line, no newlines inside, so scripts can grep it.
std::string one_line(std::string s) {
  for (char& c : s) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"hydraopt: store many LoRA adapters of one model in a fraction of the space"};
  app.set_version_flag("--version", std::string("hydraopt ") + HYDRAOPT_VERSION);
  app.require_subcommand(1);

  hydraopt::LoadOptions load;
  auto add_load_flags = [&](CLI::App* cmd) {
    cmd->add_flag("--skip-unmergeable", load.skip_unmergeable,
                  "skip DoRA magnitudes, embeddings, biases and modules_to_save tensors with a warning");
  };

  // inspect
  std::vector<std::string> inputs;
  bool json = false;
  auto* inspect = app.add_subcommand("inspect", "summarise adapters and how much structure they share");
  inspect->add_option("adapters", inputs, "PEFT adapter directories (or NAME=DIR)")->required();
  inspect->add_flag("--json", json, "machine-readable output");
  add_load_flags(inspect);

  // synth
  std::string out_dir;
  hydraopt::SynthOptions synth;
  auto* synth_cmd = app.add_subcommand("synth", "write synthetic PEFT adapters trained from one base");
  synth_cmd->add_option("out_dir", out_dir, "output directory")->required();
  synth_cmd->add_option("--preset", synth.preset, "tiny | llama-1b | llama-7b")
      ->check(CLI::IsMember({"tiny", "llama-1b", "llama-7b"}))
      ->capture_default_str();
  synth_cmd->add_option("--tasks", synth.tasks, "number of adapters (default: the preset's)")
      ->check(CLI::Range(1, 100000));
  synth_cmd->add_option("--seed", synth.seed, "random seed")->capture_default_str();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  try {
    if (*inspect) {
      auto set = hydraopt::AdapterSet::open(inputs, load);
      auto x = hydraopt::inspect(set);
      std::cout << (json ? hydraopt::inspection_json(x) : hydraopt::inspection_table(x));
    } else if (*synth_cmd) {
      auto dirs = hydraopt::synth_write(out_dir, synth);
      std::cerr << fmt::format("wrote {} adapter(s) ({} preset) to {}\n", dirs.size(), synth.preset, out_dir);
    }
  } catch (const hydraopt::Error& e) {
    std::cerr << "hydraopt: error: " << one_line(e.what()) << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "hydraopt: internal error: " << one_line(e.what()) << "\n";
    return 2;
  }
  return 0;
}
