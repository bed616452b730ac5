// The `kite` binary's subcommands. Each command file adds its CLI11 subcommand and returns the
// function that runs it; main() picks the one the user named and turns its Status into an exit
// code.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>

#include "core/status.h"

namespace kite::tools {

struct Command {
  CLI::App* app = nullptr;
  std::function<Status()> run;
};

Command add_bench_command(CLI::App& kite);
Command add_build_command(CLI::App& kite);
Command add_convert_command(CLI::App& kite);
Command add_debug_command(CLI::App& kite);
Command add_eval_command(CLI::App& kite);
Command add_run_command(CLI::App& kite);
Command add_serve_command(CLI::App& kite);
Command add_tokenize_command(CLI::App& kite);

}  // namespace kite::tools
