// Entry point of the `kite` binary: parses the command line and runs one subcommand.
// Exit status: 0 on success, 2 for usage errors (bad flags or values), 1 for every other error.
#include <cstdio>
#include <exception>
#include <new>
#include <string>
#include <vector>

#include "tools/command.h"
#include "tools/version.h"

namespace {

int exit_code_for(const kite::Status& status) {
  return status.code() == kite::StatusCode::kInvalidArgument ? 2 : 1;
}

int run_kite(int argc, char** argv) {
  CLI::App kite{"Kite: an LLM inference engine", "kite"};
  kite.require_subcommand(0, 1);
  bool show_version = false;
  kite.add_flag("--version", show_version, "Print the version and the backends built in");

  std::vector<kite::tools::Command> commands = {
      kite::tools::add_convert_command(kite),
      kite::tools::add_tokenize_command(kite),
      kite::tools::add_build_command(kite),
      kite::tools::add_run_command(kite),
      kite::tools::add_eval_command(kite),
      kite::tools::add_debug_command(kite),
      kite::tools::add_bench_command(kite),
      kite::tools::add_serve_command(kite),
  };

  try {
    kite.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    // CLI11 has its own exit codes (105 for a bad value, ...); Kite's contract is 2 for usage
    // errors and 0 for --help.
    return kite.exit(error) == 0 ? 0 : 2;
  }
  if (show_version) {
    std::printf("%s\n", kite::tools::version_string().c_str());
    return 0;
  }
  for (const auto& command : commands) {
    if (!command.app->parsed()) continue;
    const kite::Status status = command.run();
    if (status.is_ok()) return 0;
    std::fprintf(stderr, "kite %s: error: %s\n", command.app->get_name().c_str(),
                 status.message().c_str());
    return exit_code_for(status);
  }
  std::fprintf(stderr, "%s", kite.help().c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  // User errors come back as Status values; an exception here is a bug, reported without a crash.
  try {
    return run_kite(argc, argv);
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "kite: error: out of memory\n");
  } catch (const std::exception& error) {
    std::fprintf(stderr, "kite: internal error: %s\n", error.what());
  }
  return 1;
}
