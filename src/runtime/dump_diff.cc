// Layer-by-layer comparison of two forward-step dumps: matching step files and tensors by name,
// and measuring each tensor's largest error against the reference's scale.
#include "runtime/dump_diff.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <limits>
#include <map>
#include <set>
#include <system_error>

#include "core/file.h"
#include "formats/safetensors.h"

namespace kite {
namespace {

// The step number of "step_<n>.safetensors", or -1 for any other name.
int64_t step_number(const std::string& file_name) {
  const std::string prefix = "step_", suffix = ".safetensors";
  if (file_name.size() <= prefix.size() + suffix.size() || !file_name.starts_with(prefix) ||
      !file_name.ends_with(suffix)) {
    return -1;
  }
  const char* begin = file_name.data() + prefix.size();
  const char* end = file_name.data() + file_name.size() - suffix.size();
  int64_t number = -1;
  const auto [rest, error] = std::from_chars(begin, end, number);
  return error == std::errc() && rest == end ? number : -1;
}

// step number -> file name, for the dump files of a directory.
Result<std::map<int64_t, std::string>> step_files(const std::string& directory) {
  std::map<int64_t, std::string> files;
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator(directory, error)) {
    const std::string name = entry.path().filename().string();
    const int64_t number = step_number(name);
    if (number >= 0 && entry.is_regular_file()) files[number] = name;
  }
  if (error) return io_error("cannot list " + directory + ": " + error.message());
  if (files.empty()) {
    return not_found(directory + " has no step_<n>.safetensors files (make a dump with KITE_DUMP=" +
                     directory + ")");
  }
  return files;
}

Shape without_unit_dimensions(const Shape& shape) {
  Shape result;
  for (int64_t dimension : shape) {
    if (dimension != 1) result.push_back(dimension);
  }
  return result;
}

std::vector<int64_t> coordinates(int64_t flat_index, const Shape& shape) {
  std::vector<int64_t> index(shape.size(), 0);
  for (size_t d = shape.size(); d-- > 0;) {
    if (shape[d] == 0) break;
    index[d] = flat_index % shape[d];
    flat_index /= shape[d];
  }
  return index;
}

TensorDiff compare(const std::string& name, const TensorView& reference,
                   const TensorView& candidate, const DiffTolerance& tolerance) {
  TensorDiff diff;
  diff.name = name;
  diff.reference_dtype = reference.dtype;
  diff.candidate_dtype = candidate.dtype;
  diff.shape = candidate.shape;
  if (without_unit_dimensions(reference.shape) != without_unit_dimensions(candidate.shape)) {
    diff.problem = "shape " + shape_to_string(reference.shape) + " in the reference, " +
                   shape_to_string(candidate.shape) + " in the candidate";
    diff.agrees = false;
    return diff;
  }
  Result<std::vector<float>> expected = to_float32(reference);
  Result<std::vector<float>> actual = to_float32(candidate);
  if (!expected.is_ok() || !actual.is_ok()) {
    diff.problem = (expected.is_ok() ? actual : expected).status().message();
    diff.agrees = false;
    return diff;
  }

  for (float value : *expected) {
    if (std::isfinite(value))
      diff.reference_scale = std::max(diff.reference_scale, double(std::abs(value)));
  }
  const double bound = tolerance.atol + tolerance.rtol * diff.reference_scale;
  int64_t worst = -1;
  for (size_t i = 0; i < expected->size(); ++i) {
    const double a = (*actual)[i], b = (*expected)[i];
    double error = 0;
    if (a == b || (std::isnan(a) && std::isnan(b))) {
      error = 0;
    } else if (std::isnan(a) || std::isnan(b)) {
      error = std::numeric_limits<double>::infinity();
    } else {
      error = std::abs(a - b);  // +inf when only one side is infinite
    }
    if (error > bound) ++diff.elements_beyond_tolerance;
    if (worst < 0 || error > diff.max_abs_error) {
      diff.max_abs_error = error;
      worst = int64_t(i);
    }
  }
  diff.max_scaled_error =
      diff.reference_scale > 0 ? diff.max_abs_error / diff.reference_scale : diff.max_abs_error;
  if (worst >= 0) diff.worst_index = coordinates(worst, candidate.shape);
  diff.agrees = diff.elements_beyond_tolerance == 0;
  return diff;
}

}  // namespace

DumpDiff::Position DumpDiff::first_disagreement() const {
  for (size_t s = 0; s < steps.size(); ++s) {
    for (size_t t = 0; t < steps[s].tensors.size(); ++t) {
      if (!steps[s].tensors[t].agrees) return {int64_t(s), int64_t(t)};
    }
  }
  return {};
}

Result<StepDiff> diff_dump_files(const std::string& reference_path,
                                 const std::string& candidate_path,
                                 const DiffTolerance& tolerance) {
  KITE_ASSIGN_OR_RETURN(const SafetensorsFile reference, SafetensorsFile::open(reference_path));
  KITE_ASSIGN_OR_RETURN(const SafetensorsFile candidate, SafetensorsFile::open(candidate_path));
  StepDiff step;
  step.step = std::filesystem::path(candidate_path).filename().string();
  step.reference_path = reference_path;
  step.candidate_path = candidate_path;
  // names() lists tensors in the order of their data, which is the order the forward pass wrote
  // them in a Kite dump.
  for (const std::string& name : candidate.names()) {
    if (!reference.contains(name)) {
      step.only_in_candidate.push_back(name);
      continue;
    }
    step.tensors.push_back(
        compare(name, reference.tensor(name).value(), candidate.tensor(name).value(), tolerance));
  }
  for (const std::string& name : reference.names()) {
    if (!candidate.contains(name)) step.only_in_reference.push_back(name);
  }
  if (step.tensors.empty()) {
    return not_found(reference_path + " and " + candidate_path +
                     " have no tensor name in common: are both dumps of the same model, with the "
                     "names of docs/debugging.md?");
  }
  return step;
}

Result<DumpDiff> diff_dumps(const std::string& reference, const std::string& candidate,
                            const DiffTolerance& tolerance) {
  if (!path_exists(reference)) return not_found("--reference " + reference + " does not exist");
  if (!path_exists(candidate)) return not_found("--candidate " + candidate + " does not exist");
  if (!(tolerance.atol >= 0) || !(tolerance.rtol >= 0)) {
    return invalid_argument("--atol and --rtol must not be negative");
  }
  DumpDiff diff;
  // Pairs of files to compare, in step order.
  std::vector<std::pair<std::string, std::string>> pairs;
  const bool reference_is_directory = is_directory(reference);
  const bool candidate_is_directory = is_directory(candidate);
  if (reference_is_directory && candidate_is_directory) {
    KITE_ASSIGN_OR_RETURN(const auto reference_files, step_files(reference));
    KITE_ASSIGN_OR_RETURN(const auto candidate_files, step_files(candidate));
    for (const auto& [number, name] : reference_files) {
      if (candidate_files.count(number)) {
        pairs.emplace_back(reference + "/" + name, candidate + "/" + name);
      } else {
        diff.steps_only_in_reference.push_back(name);
      }
    }
    for (const auto& [number, name] : candidate_files) {
      if (!reference_files.count(number)) diff.steps_only_in_candidate.push_back(name);
    }
    if (pairs.empty()) {
      return not_found("no step file is in both " + reference + " and " + candidate +
                       ": the reference has " + reference_files.begin()->second + ".." +
                       reference_files.rbegin()->second + ", the candidate " +
                       candidate_files.begin()->second + ".." + candidate_files.rbegin()->second);
    }
  } else if (reference_is_directory || candidate_is_directory) {
    const std::string& file = reference_is_directory ? candidate : reference;
    const std::string& directory = reference_is_directory ? reference : candidate;
    const std::string counterpart =
        directory + "/" + std::filesystem::path(file).filename().string();
    if (!path_exists(counterpart)) {
      return not_found(counterpart +
                       " does not exist: give two files, two dump directories, or a "
                       "file and a directory holding a file of the same name");
    }
    pairs.emplace_back(reference_is_directory ? counterpart : reference,
                       reference_is_directory ? candidate : counterpart);
  } else {
    pairs.emplace_back(reference, candidate);
  }
  for (const auto& [reference_path, candidate_path] : pairs) {
    KITE_ASSIGN_OR_RETURN(StepDiff step,
                          diff_dump_files(reference_path, candidate_path, tolerance));
    diff.steps.push_back(std::move(step));
  }
  return diff;
}

}  // namespace kite
