// `kite debug`: tools for finding where a run goes wrong. `kite debug diff_dumps` compares two
// layer-by-layer dumps (KITE_DUMP, docs/debugging.md) and names the first intermediate that
// disagrees.
#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "runtime/dump_diff.h"
#include "tools/command.h"

namespace kite::tools {
namespace {

struct DiffDumpsFlags {
  std::string reference;
  std::string candidate;
  DiffTolerance tolerance;
};

std::string index_to_string(const std::vector<int64_t>& index) {
  std::string text = "[";
  for (size_t i = 0; i < index.size(); ++i) {
    if (i > 0) text += ", ";
    text += std::to_string(index[i]);
  }
  return text + "]";
}

std::string join(const std::vector<std::string>& names) {
  std::string text;
  for (const std::string& name : names) text += (text.empty() ? "" : ", ") + name;
  return text;
}

void print_step(const StepDiff& step) {
  std::printf("%s: reference %s, candidate %s\n", step.step.c_str(), step.reference_path.c_str(),
              step.candidate_path.c_str());
  int name_width = int(std::string("tensor").size());
  for (const TensorDiff& tensor : step.tensors)
    name_width = std::max(name_width, int(tensor.name.size()));
  std::printf("  %-*s  %-16s  %12s  %12s\n", name_width, "tensor", "shape", "max abs err",
              "scaled err");
  for (const TensorDiff& tensor : step.tensors) {
    std::string note;
    if (!tensor.problem.empty()) {
      note = "  DIFFERS: " + tensor.problem;
      std::printf("  %-*s  %-16s  %12s  %12s%s\n", name_width, tensor.name.c_str(),
                  shape_to_string(tensor.shape).c_str(), "-", "-", note.c_str());
      continue;
    }
    if (!tensor.agrees) {
      note = "  DIFFERS: " + std::to_string(tensor.elements_beyond_tolerance) + " of " +
             std::to_string(shape_numel(tensor.shape)) +
             " values beyond tolerance, the largest error at " +
             index_to_string(tensor.worst_index);
    }
    if (tensor.reference_dtype != tensor.candidate_dtype) {
      note += std::string(note.empty() ? "  (" : " (") + "reference " +
              std::string(dtype_safetensors_name(tensor.reference_dtype)) + ", candidate " +
              std::string(dtype_safetensors_name(tensor.candidate_dtype)) + ")";
    }
    std::printf("  %-*s  %-16s  %12.3e  %12.3e%s\n", name_width, tensor.name.c_str(),
                shape_to_string(tensor.shape).c_str(), tensor.max_abs_error,
                tensor.max_scaled_error, note.c_str());
  }
  if (!step.only_in_reference.empty()) {
    std::printf("  only in the reference (not compared): %s\n",
                join(step.only_in_reference).c_str());
  }
  if (!step.only_in_candidate.empty()) {
    std::printf("  only in the candidate (not compared): %s\n",
                join(step.only_in_candidate).c_str());
  }
}

Status run_diff_dumps(const DiffDumpsFlags& flags) {
  if (flags.reference.empty() || flags.candidate.empty()) {
    return invalid_argument("--reference and --candidate are required");
  }
  if (!(flags.tolerance.atol >= 0) || !(flags.tolerance.rtol >= 0)) {
    return invalid_argument("--atol and --rtol must not be negative");
  }
  KITE_ASSIGN_OR_RETURN(const DumpDiff diff,
                        diff_dumps(flags.reference, flags.candidate, flags.tolerance));
  size_t tensors = 0;
  for (const StepDiff& step : diff.steps) {
    print_step(step);
    tensors += step.tensors.size();
  }
  if (!diff.steps_only_in_reference.empty()) {
    std::printf("steps only in the reference (not compared): %s\n",
                join(diff.steps_only_in_reference).c_str());
  }
  if (!diff.steps_only_in_candidate.empty()) {
    std::printf("steps only in the candidate (not compared): %s\n",
                join(diff.steps_only_in_candidate).c_str());
  }
  char tolerance[96];
  std::snprintf(tolerance, sizeof(tolerance), "tolerance %.1e + %.1e x max |reference|",
                flags.tolerance.atol, flags.tolerance.rtol);
  const DumpDiff::Position first = diff.first_disagreement();
  if (first.step < 0) {
    std::printf("all %zu tensors of %zu step%s agree (%s)\n", tensors, diff.steps.size(),
                diff.steps.size() == 1 ? "" : "s", tolerance);
    return Status::ok();
  }
  std::fflush(stdout);
  const StepDiff& step = diff.steps[size_t(first.step)];
  const TensorDiff& tensor = step.tensors[size_t(first.tensor)];
  std::string detail;
  if (!tensor.problem.empty()) {
    detail = tensor.problem;
  } else {
    char numbers[256];
    std::snprintf(numbers, sizeof(numbers),
                  "max abs error %.3e at %s, %.3e of the reference scale %.3e; %s",
                  tensor.max_abs_error, index_to_string(tensor.worst_index).c_str(),
                  tensor.max_scaled_error, tensor.reference_scale, tolerance);
    detail = numbers;
  }
  return out_of_range("first disagreement: " + tensor.name + " in " + step.step + " (" + detail +
                      ")");
}

}  // namespace

Command add_debug_command(CLI::App& kite) {
  CLI::App* debug = kite.add_subcommand("debug", "Tools for finding where a run goes wrong");
  debug->require_subcommand(0, 1);

  auto diff = std::make_shared<DiffDumpsFlags>();
  CLI::App* diff_app = debug->add_subcommand(
      "diff_dumps", "Compare two KITE_DUMP dumps and name the first tensor that disagrees");
  diff_app->add_option("--reference", diff->reference,
                       "Reference dump: a KITE_DUMP directory or one step_<n>.safetensors");
  diff_app->add_option("--candidate", diff->candidate, "Dump to check, directory or file");
  diff_app->add_option("--atol", diff->tolerance.atol, "Absolute tolerance (1e-6)");
  diff_app->add_option("--rtol", diff->tolerance.rtol,
                       "Tolerance relative to the largest |value| of the reference tensor (1e-4)");

  return Command{debug, [diff, diff_app]() -> Status {
                   if (diff_app->parsed()) return run_diff_dumps(*diff);
                   return invalid_argument("name a debug tool: kite debug diff_dumps");
                 }};
}

}  // namespace kite::tools
