// Beam search: the beam_width most likely continuations kept at every step, as Hugging Face
// transformers' generate(num_beams=...) keeps them (its vectorised _beam_search), so that the same
// model gives the same beams. BeamSearch is the selection alone (pure host logic, unit-tested on
// hand-made log-probabilities); beam_search() runs it on an engine, the beams sharing their KV
// cache blocks (a block is copied only when a beam writes into a block another beam still holds).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "core/status.h"
#include "runtime/sampling.h"

namespace kite {

class Engine;
struct GenerationStats;

struct BeamSearchOptions {
  int64_t beam_width = 1;
  // A finished beam's score is its summed log-probability / (generated tokens ^ length_penalty):
  // above 0 favours longer outputs, below 0 shorter ones.
  float length_penalty = 1.0f;
  // Stop as soon as beam_width beams have finished (transformers' early_stopping=True); otherwise
  // stop once no running beam can beat the worst finished one at its current length.
  bool early_stopping = false;
};

// Checks beam_width >= 1 and a finite length_penalty (messages name the option).
Status validate_beam_search_options(const BeamSearchOptions& options);

struct BeamHypothesis {
  std::vector<int32_t> output_ids;  // generated tokens (the end id included when it stopped there)
  float cum_log_prob = 0;           // the sum of their log-probabilities
  float score = 0;                  // cum_log_prob / output_ids.size() ^ length_penalty
  FinishReason finish_reason = FinishReason::kNotFinished;
  size_t text_length = std::string::npos;  // where a stop text cut the decoded output
};

// Whether a beam whose output (generated tokens) is `output` has finished, and why: `output` is
// running()[parent] with one more token.
using BeamStopCheck = std::function<StopCheck(int64_t parent, std::span<const int32_t> output)>;

class BeamSearch {
 public:
  // `num_end_ids` sets how many candidates a step keeps: (1 + num_end_ids) x beam_width, at least
  // 2 x beam_width, so that beam_width beams can run on when the best candidates end.
  BeamSearch(const BeamSearchOptions& options, int64_t max_new_tokens, int64_t num_end_ids);

  int64_t beam_width() const { return width_; }
  // The running beams' outputs, all of one length (empty before the first step). Before the first
  // step every beam is the prompt alone, and only the first counts (the others score -1e9).
  const std::vector<std::vector<int32_t>>& running() const { return running_; }
  // One step: `log_probs` holds beam_width rows of `vocab` log-probabilities (log softmax of the
  // logits, banned tokens -inf), row b for running beam b. Returns, for each new running beam, the
  // running beam it extends; running() then holds the extended outputs.
  std::vector<int64_t> step(std::span<const float> log_probs, int64_t vocab,
                            const BeamStopCheck& stops);
  bool done() const { return done_; }
  // The finished beams, best score first (at most beam_width).
  std::vector<BeamHypothesis> results() const;

 private:
  struct Slot {
    BeamHypothesis hypothesis;
    bool finished = false;
  };

  int64_t width_;
  int64_t candidates_;  // kept per step
  float length_penalty_;
  bool early_stopping_;
  int64_t max_new_tokens_;
  int64_t generated_ = 0;
  bool improvement_possible_ = true;
  bool done_ = false;
  std::vector<std::vector<int32_t>> running_;
  std::vector<float> running_scores_;
  std::vector<Slot> slots_;  // the beam_width best finished beams so far (score -1e9: none yet)
};

// Beam search for one prompt on an engine: the prompt is computed once, then the beam_width beams
// step together (one logit row each). `stop` gives max_output_len, the end ids and stop texts;
// stop texts are looked for as each beam's output grows (a StopTextScanner per running beam), not
// in its whole decoded output at every step.
// Checks the request against the engine's limits first (beam_width within max_batch_size).
Result<std::vector<BeamHypothesis>> beam_search(Engine& engine, std::span<const int32_t> prompt,
                                                const BeamSearchOptions& options,
                                                const StopConditions& stop,
                                                GenerationStats* stats = nullptr);

}  // namespace kite
