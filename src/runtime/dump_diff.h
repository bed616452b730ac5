// Comparing two layer-by-layer dumps of forward steps (KITE_DUMP=<dir> writes
// <dir>/step_<n>.safetensors, one tensor per named intermediate, in the order the forward pass
// makes them), to find the first intermediate where a candidate run departs from a reference.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"

namespace kite {

// A tensor agrees when max |candidate - reference| <= atol + rtol * max |reference|: errors are
// measured against the tensor's scale, not element by element, so that values near zero do not
// dominate (the bar of the Hugging Face golden tests).
struct DiffTolerance {
  double atol = 1e-6;
  double rtol = 1e-4;
};

struct TensorDiff {
  std::string name;
  DType reference_dtype = DType::kF32;
  DType candidate_dtype = DType::kF32;
  Shape shape;  // the candidate's
  // Why the values could not be compared (shapes differ, a dtype that is not floating); empty
  // when they were. A tensor that could not be compared disagrees.
  std::string problem;
  double max_abs_error = 0;          // +inf when a NaN or infinity sits where the other has a value
  double reference_scale = 0;        // max |reference| over its finite values
  double max_scaled_error = 0;       // max_abs_error / reference_scale (max_abs_error when 0)
  std::vector<int64_t> worst_index;  // coordinates (in `shape`) of the largest error
  int64_t elements_beyond_tolerance = 0;
  bool agrees = true;
};

struct StepDiff {
  std::string step;            // the file name, "step_0.safetensors"
  std::string reference_path;  // the two files compared
  std::string candidate_path;
  // The tensors both files hold, in the candidate's forward order (the order of their data).
  std::vector<TensorDiff> tensors;
  std::vector<std::string> only_in_reference;  // names, in the reference's order
  std::vector<std::string> only_in_candidate;
};

struct DumpDiff {
  std::vector<StepDiff> steps;  // in step order
  std::vector<std::string> steps_only_in_reference;
  std::vector<std::string> steps_only_in_candidate;

  // The first tensor that disagrees, steps in order and tensors in forward order; {-1, -1} when
  // every tensor agrees.
  struct Position {
    int64_t step = -1;
    int64_t tensor = -1;
  };
  Position first_disagreement() const;
};

// Compares every tensor the two files share. Tensor shapes may differ in dimensions of size 1
// ([1, T, H] against [T, H]); floating dtypes are compared as float32 whatever they are.
Result<StepDiff> diff_dump_files(const std::string& reference_path,
                                 const std::string& candidate_path, const DiffTolerance& tolerance);

// `reference` and `candidate` are dump directories (their step_<n>.safetensors files, matched by
// name) or single files; a file against a directory is compared with the directory's file of the
// same name. Errors: a path that does not exist, a directory without step files, no step file in
// both, a file that is not valid safetensors, a step whose files share no tensor.
Result<DumpDiff> diff_dumps(const std::string& reference, const std::string& candidate,
                            const DiffTolerance& tolerance);

}  // namespace kite
