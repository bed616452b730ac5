// Layer-by-layer dump diffs (src/runtime/dump_diff.h, `kite debug diff_dumps`): dumps of a tiny
// model made with KITE_DUMP, against the same model and against one with a perturbed weight in a
// middle layer, and hand-made files for the tolerance rule and every kind of mismatch.
#include "runtime/dump_diff.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <map>
#include <random>

#include "core/file.h"
#include "formats/safetensors.h"
#include "kernels/backend_factory.h"
#include "model/llama.h"
#include "test_util.h"
#include "tiny_llama.h"

namespace kite {
namespace {

// Runs a 6-token prefill and one decode step with KITE_DUMP=<directory>: step_0 and step_1.
// `fold`: with the norm scales folded into the weights, as CUDA engines store them.
void dump_two_steps(const ModelConfig& config, const std::map<std::string, Tensor>& weights,
                    const std::string& directory, bool fold = false) {
  auto backend = std::move(make_backend(BackendKind::kCpu).value());
  const WeightLookup lookup = [&](const std::string& name) -> Result<TensorView> {
    return weights.at(name).view();
  };
  LlamaWeights loaded =
      load_llama_weights(*backend, config, fold ? test::folded_lookup(lookup) : lookup, "test", {},
                         fold)
          .value();
  LlamaModel model(*backend, config, std::move(loaded));
  KvCacheView cache;
  cache.dtype = DType::kF32;
  cache.num_layers = config.num_hidden_layers;
  cache.num_kv_heads = config.num_key_value_heads;
  cache.head_dim = config.head_dim;
  cache.block_size = 4;
  cache.num_blocks = 2;
  DeviceBuffer buffer =
      backend->allocate(size_t(cache.num_layers * cache.layer_elements()) * sizeof(float)).value();
  cache.data = buffer.data();

  ASSERT_EQ(::setenv("KITE_DUMP", directory.c_str(), 1), 0);
  const std::vector<int32_t> prompt = {3, 14, 15, 9, 26, 5};
  StepInput prefill;
  prefill.token_ids = prompt;
  for (int32_t position = 0; position < 6; ++position) {
    prefill.positions.push_back(position);
    prefill.slot_mapping.push_back(position);  // blocks 0 and 1, in order
  }
  prefill.query_start = {0, 6};
  prefill.context_length = {6};
  prefill.block_table = {0, 1};
  prefill.max_blocks_per_sequence = 2;
  prefill.logit_rows = {5};
  const Result<std::vector<float>> first = model.forward(prefill, cache);
  StepInput decode = prefill;
  decode.token_ids = {35};
  decode.positions = {6};
  decode.slot_mapping = {6};
  decode.query_start = {0, 1};
  decode.context_length = {7};
  decode.logit_rows = {0};
  const Result<std::vector<float>> second = model.forward(decode, cache);
  ::unsetenv("KITE_DUMP");
  ASSERT_TRUE(first.is_ok()) << first.status().message();
  ASSERT_TRUE(second.is_ok()) << second.status().message();
  ASSERT_TRUE(path_exists(directory + "/step_0.safetensors"));
  ASSERT_TRUE(path_exists(directory + "/step_1.safetensors"));
}

class ModelDumps : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const ModelConfig config = test::tiny_llama_config(3);
    std::map<std::string, Tensor> weights = test::random_llama_weights(config, 5);
    reference_ = new std::string(test::temp_dir() + "/reference");
    same_ = new std::string(test::temp_dir() + "/same");
    perturbed_ = new std::string(test::temp_dir() + "/perturbed");
    folded_ = new std::string(test::temp_dir() + "/folded");
    dump_two_steps(config, weights, *reference_);
    dump_two_steps(config, weights, *same_);
    dump_two_steps(config, weights, *folded_, /*fold=*/true);
    // One weight of the middle layer's gate projection: layers.1.gate_up is the first
    // intermediate it changes.
    weights.at("model.layers.1.mlp.gate_proj.weight").data_as<float>()[40] += 0.5f;
    dump_two_steps(config, weights, *perturbed_);
  }
  static std::string* reference_;
  static std::string* same_;
  static std::string* perturbed_;
  static std::string* folded_;
};
std::string* ModelDumps::reference_ = nullptr;
std::string* ModelDumps::same_ = nullptr;
std::string* ModelDumps::perturbed_ = nullptr;
std::string* ModelDumps::folded_ = nullptr;

size_t index_of(const StepDiff& step, const std::string& name) {
  for (size_t i = 0; i < step.tensors.size(); ++i) {
    if (step.tensors[i].name == name) return i;
  }
  ADD_FAILURE() << "no tensor " << name;
  return 0;
}

TEST_F(ModelDumps, IdenticalRunsAgreeInForwardOrder) {
  const DumpDiff diff = diff_dumps(*reference_, *same_, {}).value();
  ASSERT_EQ(diff.steps.size(), 2u);
  EXPECT_EQ(diff.steps[0].step, "step_0.safetensors");
  EXPECT_EQ(diff.steps[1].step, "step_1.safetensors");
  EXPECT_EQ(diff.first_disagreement().step, -1);
  for (const StepDiff& step : diff.steps) {
    EXPECT_TRUE(step.only_in_reference.empty());
    EXPECT_TRUE(step.only_in_candidate.empty());
    for (const TensorDiff& tensor : step.tensors) {
      EXPECT_TRUE(tensor.agrees) << tensor.name;
      EXPECT_EQ(tensor.max_abs_error, 0.0) << tensor.name;
      EXPECT_GT(tensor.reference_scale, 0.0) << tensor.name;
    }
  }
  // Forward order, not alphabetical: the embedding first, the layers in turn, logits last.
  const StepDiff& step = diff.steps[0];
  EXPECT_EQ(step.tensors.front().name, "embedding");
  EXPECT_EQ(step.tensors.back().name, "logits");
  EXPECT_LT(index_of(step, "layers.0.output"), index_of(step, "layers.1.input_norm"));
  EXPECT_LT(index_of(step, "layers.1.gate_up"), index_of(step, "layers.1.down_proj"));
  EXPECT_LT(index_of(step, "layers.2.output"), index_of(step, "final_norm"));

  const test::CommandResult run =
      test::run_kite("debug diff_dumps --reference " + *reference_ + " --candidate " + *same_);
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("tensors of 2 steps agree"), std::string::npos) << run.output;
}

// A model with the norm scales folded into its weights dumps every intermediate of the unfolded
// form, the norms as the checkpoint has them: the same names, the same values up to the folded
// products' float32 rounding.
TEST_F(ModelDumps, FoldedModelDumpsTheUnfoldedIntermediates) {
  const DumpDiff diff = diff_dumps(*reference_, *folded_, {}).value();
  ASSERT_EQ(diff.steps.size(), 2u);
  EXPECT_EQ(diff.first_disagreement().step, -1);
  for (const StepDiff& step : diff.steps) {
    EXPECT_TRUE(step.only_in_reference.empty()) << step.only_in_reference.front();
    EXPECT_TRUE(step.only_in_candidate.empty()) << step.only_in_candidate.front();
    for (const TensorDiff& tensor : step.tensors) {
      EXPECT_TRUE(tensor.agrees) << tensor.name;
      EXPECT_LT(tensor.max_scaled_error, 1e-5) << tensor.name;
    }
    index_of(step, "layers.1.input_norm");
    index_of(step, "layers.1.post_attention_norm");
    index_of(step, "layers.1.down_proj");
  }
}

TEST_F(ModelDumps, NameTheFirstPerturbedTensor) {
  const DumpDiff diff = diff_dumps(*reference_, *perturbed_, {}).value();
  const DumpDiff::Position first = diff.first_disagreement();
  ASSERT_EQ(first.step, 0);
  const StepDiff& step = diff.steps[0];
  EXPECT_EQ(step.tensors[size_t(first.tensor)].name, "layers.1.gate_up");
  EXPECT_GT(step.tensors[size_t(first.tensor)].max_abs_error, 1e-3);
  // Everything before it agrees exactly; everything downstream departs.
  for (size_t i = 0; i < size_t(first.tensor); ++i) {
    EXPECT_EQ(step.tensors[i].max_abs_error, 0.0) << step.tensors[i].name;
  }
  EXPECT_FALSE(step.tensors[index_of(step, "logits")].agrees);
  EXPECT_FALSE(step.tensors[index_of(step, "layers.2.output")].agrees);

  const test::CommandResult run =
      test::run_kite("debug diff_dumps --reference " + *reference_ + " --candidate " + *perturbed_);
  EXPECT_EQ(run.exit_code, 1) << run.output;
  EXPECT_NE(run.output.find("first disagreement: layers.1.gate_up in step_0.safetensors"),
            std::string::npos)
      << run.output;
  // A loose enough tolerance accepts the change.
  const test::CommandResult loose = test::run_kite("debug diff_dumps --rtol 10 --reference " +
                                                   *reference_ + " --candidate " + *perturbed_);
  EXPECT_EQ(loose.exit_code, 0) << loose.output;
}

TEST_F(ModelDumps, FileAgainstDirectoryAndMissingSteps) {
  // One file against the directory's file of the same name.
  const DumpDiff one = diff_dumps(*reference_ + "/step_1.safetensors", *perturbed_, {}).value();
  ASSERT_EQ(one.steps.size(), 1u);
  EXPECT_EQ(one.steps[0].candidate_path, *perturbed_ + "/step_1.safetensors");
  EXPECT_NE(one.first_disagreement().step, -1);

  // A step only one side has is reported, the others compared.
  const std::string partial = test::temp_dir();
  ASSERT_TRUE(
      write_file(partial + "/step_0.safetensors", read_file(*same_ + "/step_0.safetensors").value())
          .is_ok());
  const DumpDiff diff = diff_dumps(*reference_, partial, {}).value();
  ASSERT_EQ(diff.steps.size(), 1u);
  EXPECT_EQ(diff.steps_only_in_reference, (std::vector<std::string>{"step_1.safetensors"}));
  EXPECT_EQ(diff.first_disagreement().step, -1);
  const test::CommandResult run =
      test::run_kite("debug diff_dumps --reference " + *reference_ + " --candidate " + partial);
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("steps only in the reference (not compared): step_1.safetensors"),
            std::string::npos)
      << run.output;
}

// ---- hand-made dump files ----
Tensor f32(const Shape& shape, const std::vector<float>& values) {
  Tensor tensor(DType::kF32, shape);
  EXPECT_EQ(size_t(tensor.numel()), values.size());
  std::copy(values.begin(), values.end(), tensor.data_as<float>());
  return tensor;
}

std::string write_dump(const std::vector<std::pair<std::string, Tensor>>& tensors) {
  const std::string path = test::temp_dir() + "/step_0.safetensors";
  EXPECT_TRUE(write_safetensors(path, tensors).is_ok());
  return path;
}

TEST(DumpDiff, ErrorsAreMeasuredAgainstTheReferenceScale) {
  const std::string reference = write_dump({{"x", f32({2, 2}, {100.0f, -1.0f, 0.0f, 2.0f})}});
  // 5e-3 off on a tensor of scale 100: 5e-5 of the scale, within the default rtol 1e-4.
  const std::string candidate = write_dump({{"x", f32({2, 2}, {100.0f, -1.0f, 5e-3f, 2.0f})}});
  const StepDiff agree = diff_dump_files(reference, candidate, {}).value();
  ASSERT_EQ(agree.tensors.size(), 1u);
  const TensorDiff& x = agree.tensors[0];
  EXPECT_TRUE(x.agrees);
  EXPECT_NEAR(x.max_abs_error, 5e-3, 1e-9);
  EXPECT_DOUBLE_EQ(x.reference_scale, 100.0);
  EXPECT_NEAR(x.max_scaled_error, 5e-5, 1e-9);
  EXPECT_EQ(x.worst_index, (std::vector<int64_t>{1, 0}));

  const StepDiff strict = diff_dump_files(reference, candidate, {.atol = 0, .rtol = 1e-5}).value();
  EXPECT_FALSE(strict.tensors[0].agrees);
  EXPECT_EQ(strict.tensors[0].elements_beyond_tolerance, 1);
}

TEST(DumpDiff, NanAndInfinityDisagreeUnlessBothSidesHaveThem) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float infinity = std::numeric_limits<float>::infinity();
  const std::string reference = write_dump({{"x", f32({3}, {1.0f, nan, infinity})}});
  EXPECT_TRUE(diff_dump_files(reference, reference, {}).value().tensors[0].agrees);
  const std::string candidate = write_dump({{"x", f32({3}, {nan, nan, infinity})}});
  const TensorDiff x = diff_dump_files(reference, candidate, {}).value().tensors[0];
  EXPECT_FALSE(x.agrees);
  EXPECT_TRUE(std::isinf(x.max_abs_error));
  EXPECT_EQ(x.worst_index, (std::vector<int64_t>{0}));
  EXPECT_DOUBLE_EQ(x.reference_scale, 1.0);  // finite values only
}

TEST(DumpDiff, ShapesDtypesAndMissingTensors) {
  Tensor bf16(DType::kBF16, {2});
  bf16.data_as<uint16_t>()[0] = 0x3f80;  // 1.0
  bf16.data_as<uint16_t>()[1] = 0x4000;  // 2.0
  Tensor ids(DType::kI32, {2});
  const std::string reference = write_dump({{"a", f32({1, 2, 3}, {1, 2, 3, 4, 5, 6})},
                                            {"b", f32({2, 3}, {1, 2, 3, 4, 5, 6})},
                                            {"c", f32({2}, {1, 2})},
                                            {"d", f32({2}, {1, 2})},
                                            {"only_reference", f32({1}, {1})}});
  const std::string candidate = write_dump({{"a", f32({2, 3}, {1, 2, 3, 4, 5, 6})},
                                            {"b", f32({3, 2}, {1, 2, 3, 4, 5, 6})},
                                            {"c", std::move(bf16)},
                                            {"d", std::move(ids)},
                                            {"only_candidate", f32({1}, {1})}});
  const StepDiff step = diff_dump_files(reference, candidate, {}).value();
  ASSERT_EQ(step.tensors.size(), 4u);
  // [1, 2, 3] and [2, 3] hold the same values.
  EXPECT_TRUE(step.tensors[0].agrees);
  EXPECT_FALSE(step.tensors[1].agrees);
  EXPECT_EQ(step.tensors[1].problem, "shape [2, 3] in the reference, [3, 2] in the candidate");
  // Floating dtypes are compared by value.
  EXPECT_TRUE(step.tensors[2].agrees);
  EXPECT_EQ(step.tensors[2].candidate_dtype, DType::kBF16);
  EXPECT_FALSE(step.tensors[3].agrees);
  EXPECT_NE(step.tensors[3].problem.find("int32"), std::string::npos) << step.tensors[3].problem;
  EXPECT_EQ(step.only_in_reference, (std::vector<std::string>{"only_reference"}));
  EXPECT_EQ(step.only_in_candidate, (std::vector<std::string>{"only_candidate"}));

  const test::CommandResult run =
      test::run_kite("debug diff_dumps --reference " + reference + " --candidate " + candidate);
  EXPECT_EQ(run.exit_code, 1) << run.output;
  EXPECT_NE(run.output.find("first disagreement: b in step_0.safetensors (shape [2, 3] in the "
                            "reference, [3, 2] in the candidate)"),
            std::string::npos)
      << run.output;
  EXPECT_NE(run.output.find("only in the reference (not compared): only_reference"),
            std::string::npos)
      << run.output;
}

TEST(DumpDiff, RefuseWhatCannotBeCompared) {
  const std::string empty_directory = test::temp_dir();
  const std::string dump = write_dump({{"x", f32({1}, {1})}});
  const std::string other = write_dump({{"y", f32({1}, {1})}});
  const std::string not_safetensors = test::temp_dir() + "/step_0.safetensors";
  ASSERT_TRUE(write_file(not_safetensors, "not a dump").is_ok());
  struct Case {
    std::string reference, candidate, message;
  };
  for (const Case& c : std::vector<Case>{
           {empty_directory + "/missing", dump, "does not exist"},
           {dump, empty_directory + "/missing", "does not exist"},
           {empty_directory, empty_directory, "no step_<n>.safetensors files"},
           {dump, other, "no tensor name in common"},
           {dump, not_safetensors, "not plausible"},
           {dump, empty_directory, "does not exist"},
       }) {
    const Result<DumpDiff> diff = diff_dumps(c.reference, c.candidate, {});
    ASSERT_FALSE(diff.is_ok()) << c.reference << " " << c.candidate;
    EXPECT_NE(diff.status().message().find(c.message), std::string::npos)
        << diff.status().message();
    const test::CommandResult run = test::run_kite("debug diff_dumps --reference " + c.reference +
                                                   " --candidate " + c.candidate);
    EXPECT_EQ(run.exit_code, 1) << run.output;
    EXPECT_EQ(std::count(run.output.begin(), run.output.end(), '\n'), 1) << run.output;
  }
  const std::string steps_1 = test::temp_dir();
  ASSERT_TRUE(write_file(steps_1 + "/step_1.safetensors", read_file(dump).value()).is_ok());
  const std::string steps_0 = std::filesystem::path(dump).parent_path().string();
  const Result<DumpDiff> disjoint = diff_dumps(steps_0, steps_1, {});
  ASSERT_FALSE(disjoint.is_ok());
  EXPECT_NE(disjoint.status().message().find("no step file is in both"), std::string::npos)
      << disjoint.status().message();
  EXPECT_EQ(
      test::run_kite("debug diff_dumps --reference " + dump + " --candidate " + dump + " --atol -1")
          .exit_code,
      2);
  // `kite debug` alone names its tools.
  const test::CommandResult bare = test::run_kite("debug");
  EXPECT_EQ(bare.exit_code, 2);
  EXPECT_NE(bare.output.find("kite debug diff_dumps"), std::string::npos) << bare.output;
}

}  // namespace
}  // namespace kite
