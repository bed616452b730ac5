// Beam search (beam_search.h): the selection, step by step as transformers' _beam_search computes
// it in float32, and its driver over an engine's KV cache.
#include "runtime/beam_search.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <unordered_map>
#include <utility>

#include "runtime/engine.h"
#include "runtime/stop_text.h"

namespace kite {
namespace {

// transformers marks a beam that must not be chosen by adding this to its score.
constexpr float kExcluded = -1.0e9f;

// Indices of the `count` largest values, largest first (the lower index first among equals).
std::vector<int64_t> top_indices(std::span<const float> values, int64_t count) {
  std::vector<int64_t> order(values.size());
  std::iota(order.begin(), order.end(), int64_t{0});
  count = std::min<int64_t>(count, int64_t(order.size()));
  std::partial_sort(order.begin(), order.begin() + count, order.end(), [&](int64_t a, int64_t b) {
    return values[size_t(a)] > values[size_t(b)] ||
           (values[size_t(a)] == values[size_t(b)] && a < b);
  });
  order.resize(size_t(count));
  return order;
}

// length ^ penalty as transformers divides by it: a Python float, applied to float32 scores.
float length_divisor(int64_t length, float penalty) {
  return float(std::pow(double(length), double(penalty)));
}

}  // namespace

Status validate_beam_search_options(const BeamSearchOptions& options) {
  if (options.beam_width < 1) return invalid_argument("--num_beams must be >= 1");
  if (!std::isfinite(options.length_penalty)) {
    return invalid_argument("--length_penalty must be a finite number");
  }
  return Status::ok();
}

BeamSearch::BeamSearch(const BeamSearchOptions& options, int64_t max_new_tokens,
                       int64_t num_end_ids)
    : width_(options.beam_width),
      candidates_(std::max<int64_t>(2, 1 + num_end_ids) * options.beam_width),
      length_penalty_(options.length_penalty),
      early_stopping_(options.early_stopping),
      max_new_tokens_(max_new_tokens),
      running_(size_t(options.beam_width)),
      running_scores_(size_t(options.beam_width), kExcluded),
      slots_(size_t(options.beam_width)) {
  KITE_CHECK(width_ >= 1 && max_new_tokens_ >= 1);
  running_scores_[0] = 0.0f;
  for (Slot& slot : slots_) slot.hypothesis.score = kExcluded;
}

std::vector<int64_t> BeamSearch::step(std::span<const float> log_probs, int64_t vocab,
                                      const BeamStopCheck& stops) {
  KITE_CHECK(!done_ && vocab > 0 && int64_t(log_probs.size()) == width_ * vocab);
  // Every continuation of every running beam, scored by its summed log-probability.
  std::vector<float> accumulated(log_probs.size());
  for (int64_t beam = 0; beam < width_; ++beam) {
    for (int64_t token = 0; token < vocab; ++token) {
      const size_t i = size_t(beam * vocab + token);
      accumulated[i] = log_probs[i] + running_scores_[size_t(beam)];
    }
  }
  const std::vector<int64_t> top = top_indices(accumulated, candidates_);
  const int64_t kept = int64_t(top.size());
  const int64_t generated = generated_ + 1;  // output length of every candidate

  struct Candidate {
    int64_t parent;
    int32_t token;
    float log_prob;  // summed
    StopCheck stop;
  };
  std::vector<Candidate> candidates;
  std::vector<float> running_values(static_cast<size_t>(kept));
  bool all_stop = true;
  for (int64_t k = 0; k < kept; ++k) {
    const int64_t index = top[size_t(k)];
    Candidate candidate{index / vocab, int32_t(index % vocab), accumulated[size_t(index)], {}};
    std::vector<int32_t> output = running_[size_t(candidate.parent)];
    output.push_back(candidate.token);
    candidate.stop = stops(candidate.parent, output);
    if (candidate.stop.reason == FinishReason::kNotFinished && generated >= max_new_tokens_) {
      candidate.stop.reason = FinishReason::kLength;
    }
    const bool stopped = candidate.stop.reason != FinishReason::kNotFinished;
    all_stop = all_stop && stopped;
    running_values[size_t(k)] = candidate.log_prob + (stopped ? kExcluded : 0.0f);
    candidates.push_back(candidate);
  }

  // The next running beams: the best candidates that did not stop (stopped ones only fill in,
  // excluded, when too few did not).
  const std::vector<int64_t> next = top_indices(running_values, width_);
  std::vector<std::vector<int32_t>> running;
  std::vector<float> scores;
  std::vector<int64_t> parents;
  for (int64_t k : next) {
    const Candidate& candidate = candidates[size_t(k)];
    running.push_back(running_[size_t(candidate.parent)]);
    running.back().push_back(candidate.token);
    scores.push_back(running_values[size_t(k)]);
    parents.push_back(candidate.parent);
  }

  // Finished beams: candidates among the best beam_width that stopped, scored with the length
  // penalty, compete with the finished beams so far for the beam_width places.
  const bool all_finished =
      std::ranges::all_of(slots_, [](const Slot& slot) { return slot.finished; });
  const float divisor = length_divisor(generated, length_penalty_);
  std::vector<float> merged_scores;
  for (const Slot& slot : slots_) merged_scores.push_back(slot.hypothesis.score);
  std::vector<bool> just_finished(static_cast<size_t>(kept));
  for (int64_t k = 0; k < kept; ++k) {
    const Candidate& candidate = candidates[size_t(k)];
    just_finished[size_t(k)] = candidate.stop.reason != FinishReason::kNotFinished && k < width_;
    float score = candidate.log_prob / divisor;
    if (all_finished && early_stopping_) score += kExcluded;
    if (!improvement_possible_) score += kExcluded;
    if (!just_finished[size_t(k)]) score += kExcluded;
    merged_scores.push_back(score);
  }
  std::vector<Slot> slots;
  for (int64_t m : top_indices(merged_scores, width_)) {
    if (m < width_) {
      slots.push_back(slots_[size_t(m)]);
      continue;
    }
    const int64_t k = m - width_;
    const Candidate& candidate = candidates[size_t(k)];
    Slot slot;
    slot.finished = just_finished[size_t(k)];
    slot.hypothesis.output_ids = running_[size_t(candidate.parent)];
    slot.hypothesis.output_ids.push_back(candidate.token);
    slot.hypothesis.cum_log_prob = candidate.log_prob;
    slot.hypothesis.score = merged_scores[size_t(m)];
    slot.hypothesis.finish_reason = candidate.stop.reason;
    slot.hypothesis.text_length = candidate.stop.text_length;
    slots.push_back(std::move(slot));
  }

  running_ = std::move(running);
  running_scores_ = std::move(scores);
  slots_ = std::move(slots);
  generated_ = generated;

  // Can a running beam still beat the worst finished one? Its best hope: its summed
  // log-probability so far at its current length (log-probabilities only fall as beams grow).
  const float best_running = running_scores_.front() / length_divisor(generated_, length_penalty_);
  float worst_finished = slots_.front().hypothesis.score;
  for (const Slot& slot : slots_) worst_finished = std::min(worst_finished, slot.hypothesis.score);
  improvement_possible_ =
      improvement_possible_ && std::ranges::any_of(slots_, [&](const Slot& slot) {
        return best_running > (slot.finished ? worst_finished : kExcluded);
      });
  const bool now_all_finished =
      std::ranges::all_of(slots_, [](const Slot& slot) { return slot.finished; });
  done_ = !improvement_possible_ || (now_all_finished && early_stopping_) || all_stop;
  return parents;
}

std::vector<BeamHypothesis> BeamSearch::results() const {
  std::vector<BeamHypothesis> results;
  for (const Slot& slot : slots_) {
    if (slot.finished) results.push_back(slot.hypothesis);
  }
  std::stable_sort(
      results.begin(), results.end(),
      [](const BeamHypothesis& a, const BeamHypothesis& b) { return a.score > b.score; });
  return results;
}

namespace {

// The beams' KV cache blocks: reference counted, since beams that share a prefix share its
// blocks; all go back to the cache however the search ends.
class BeamBlocks {
 public:
  explicit BeamBlocks(KvCache& cache) : cache_(cache) {}
  BeamBlocks(const BeamBlocks&) = delete;
  BeamBlocks& operator=(const BeamBlocks&) = delete;
  ~BeamBlocks() {
    for (const auto& [block, count] : references_) cache_.free_blocks({block});
  }

  Result<int32_t> allocate() {
    Result<std::vector<int32_t>> blocks = cache_.allocate_blocks(1);
    if (!blocks.is_ok()) {
      return out_of_range(
          "the KV cache has no free block left for the beams; lower --num_beams or "
          "--max_output_len, or give the cache more memory");
    }
    references_[blocks->front()] = 1;
    return blocks->front();
  }
  void hold(const std::vector<int32_t>& table) {
    for (int32_t block : table) ++references_.at(block);
  }
  void release(const std::vector<int32_t>& table) {
    for (int32_t block : table) release(block);
  }
  void release(int32_t block) {
    if (--references_.at(block) == 0) {
      references_.erase(block);
      cache_.free_blocks({block});
    }
  }
  int32_t references(int32_t block) const { return references_.at(block); }

 private:
  KvCache& cache_;
  std::unordered_map<int32_t, int32_t> references_;
};

// One step of `sequences` (the tokens at positions [first, first + tokens.size()) computed, logits
// for the last) and the log softmax of each logit row.
struct StepSequence {
  std::span<const int32_t> tokens;
  const std::vector<int32_t>* blocks;
  size_t first;
  size_t end() const { return first + tokens.size(); }
};

Result<std::vector<float>> run_step(Engine& engine, std::span<const StepSequence> sequences) {
  const int64_t block_size = engine.kv_cache().view().block_size;
  StepInput step;
  step.query_start.push_back(0);
  int32_t longest = 0;
  for (const StepSequence& sequence : sequences) {
    for (size_t position = sequence.first; position < sequence.end(); ++position) {
      step.token_ids.push_back(sequence.tokens[position - sequence.first]);
      step.positions.push_back(int32_t(position));
      step.slot_mapping.push_back((*sequence.blocks)[position / size_t(block_size)] *
                                      int32_t(block_size) +
                                  int32_t(position % size_t(block_size)));
    }
    step.query_start.push_back(int32_t(step.token_ids.size()));
    step.context_length.push_back(int32_t(sequence.end()));
    step.logit_rows.push_back(int32_t(step.token_ids.size()) - 1);
    longest = std::max(longest, int32_t(sequence.end()));
  }
  step.max_blocks_per_sequence = engine.config().limits.block_table_width(longest);
  for (const StepSequence& sequence : sequences) {
    const size_t used = (sequence.end() + size_t(block_size) - 1) / size_t(block_size);
    step.block_table.insert(step.block_table.end(), sequence.blocks->begin(),
                            sequence.blocks->begin() + ptrdiff_t(used));
    step.block_table.resize(step.block_table.size() + size_t(step.max_blocks_per_sequence) - used,
                            0);
  }
  KITE_ASSIGN_OR_RETURN(std::vector<float> logits,
                        engine.model().forward(step, engine.kv_cache().view()));
  // log softmax per row, in double as torch's float32 kernel accumulates in wider registers.
  const size_t vocab = logits.size() / sequences.size();
  for (size_t row = 0; row < sequences.size(); ++row) {
    log_softmax(std::span<float>(logits.data() + row * vocab, vocab));
  }
  return logits;
}

}  // namespace

Result<std::vector<BeamHypothesis>> beam_search(Engine& engine, std::span<const int32_t> prompt,
                                                const BeamSearchOptions& options,
                                                const StopConditions& stop,
                                                GenerationStats* stats) {
  KITE_RETURN_IF_ERROR(validate_beam_search_options(options));
  GenerationRequest request;
  request.prompts.emplace_back(prompt.begin(), prompt.end());
  request.sampling.temperature = 0.0f;
  request.stop = stop;
  KITE_RETURN_IF_ERROR(check_generation_request(engine, request));
  const BuildLimits& limits = engine.config().limits;
  if (options.beam_width > limits.beam_width_limit()) {
    return out_of_range("--num_beams " + std::to_string(options.beam_width) +
                        " exceeds the engine's max_beam_width " +
                        std::to_string(limits.beam_width_limit()) +
                        " (kite build --max_beam_width, at most --max_batch_size)");
  }
  KvCache& cache = engine.kv_cache();
  const int64_t block_size = cache.view().block_size;
  const int64_t vocab = engine.config().model.vocab_size;
  const int64_t width = options.beam_width;
  auto clock = [] { return std::chrono::steady_clock::now(); };
  BeamBlocks blocks(cache);

  // The prompt, once, in chunks of at most max_num_tokens; its last logit row seeds every beam.
  const std::vector<int32_t>& prompt_tokens = request.prompts.front();
  std::vector<int32_t> prompt_table;
  for (int64_t i = 0; i < (int64_t(prompt.size()) + block_size - 1) / block_size; ++i) {
    KITE_ASSIGN_OR_RETURN(const int32_t block, blocks.allocate());
    prompt_table.push_back(block);
  }
  std::vector<float> log_probs;
  const auto prefill_started = clock();
  for (size_t first = 0; first < prompt.size(); first += size_t(limits.max_num_tokens)) {
    const size_t end = std::min(prompt.size(), first + size_t(limits.max_num_tokens));
    const StepSequence chunk{std::span(prompt_tokens).subspan(first, end - first), &prompt_table,
                             first};
    KITE_ASSIGN_OR_RETURN(log_probs, run_step(engine, std::span(&chunk, 1)));
  }
  if (stats) {
    stats->prefill_seconds += std::chrono::duration<double>(clock() - prefill_started).count();
  }
  // Before the first step every beam is the prompt (only the first one scores).
  std::vector<float> rows;
  for (int64_t beam = 0; beam < width; ++beam)
    rows.insert(rows.end(), log_probs.begin(), log_probs.end());
  std::vector<std::vector<int32_t>> tables(size_t(width), prompt_table);
  for (int64_t beam = 1; beam < width; ++beam) blocks.hold(prompt_table);

  BeamSearch search(options, stop.max_output_len, int64_t(stop.end_ids.size()));
  // With stop texts, each running beam's output text grows in a scanner of its own; a candidate is
  // checked on a copy of its parent's with the candidate's token.
  std::vector<StopTextScanner> scanners;
  if (!stop.stop_texts.empty()) {
    for (int64_t beam = 0; beam < width; ++beam) {
      scanners.emplace_back(engine.tokenizer(), stop.stop_texts);
    }
  }
  const BeamStopCheck stops = [&](int64_t parent, std::span<const int32_t> output) {
    if (scanners.empty()) return check_stop(stop, output, {});
    StopTextScanner scanner = scanners[size_t(parent)];
    scanner.push(output.back());
    return check_stop(stop, output, scanner.tail(), scanner.tail_offset());
  };
  Backend& backend = engine.backend();
  while (true) {
    const std::vector<int64_t> parents = search.step(rows, vocab, stops);
    if (search.done()) break;
    if (!scanners.empty()) {
      std::vector<StopTextScanner> next;
      for (size_t beam = 0; beam < parents.size(); ++beam) {
        next.push_back(scanners[size_t(parents[beam])]);
        next.back().push(search.running()[beam].back());
      }
      scanners = std::move(next);
    }
    const auto started = clock();
    // Each beam takes its parent's table; the block its new token goes to must be its own.
    std::vector<std::vector<int32_t>> next_tables;
    for (int64_t parent : parents) {
      next_tables.push_back(tables[size_t(parent)]);
      blocks.hold(next_tables.back());
    }
    for (const std::vector<int32_t>& table : tables) blocks.release(table);
    tables = std::move(next_tables);
    const size_t position = prompt.size() + search.running().front().size() - 1;
    std::vector<std::pair<int32_t, int32_t>> copies;
    for (std::vector<int32_t>& table : tables) {
      const size_t index = position / size_t(block_size);
      if (index == table.size()) {
        KITE_ASSIGN_OR_RETURN(const int32_t block, blocks.allocate());
        table.push_back(block);
      } else if (blocks.references(table[index]) > 1) {
        KITE_ASSIGN_OR_RETURN(const int32_t block, blocks.allocate());
        copies.emplace_back(table[index], block);
        blocks.release(table[index]);
        table[index] = block;
      }
    }
    if (!copies.empty()) backend.copy_kv_blocks(cache.view(), copies);

    // Each beam computes its newest token (the last of its output).
    std::vector<StepSequence> step;
    for (int64_t beam = 0; beam < width; ++beam) {
      const std::vector<int32_t>& output = search.running()[size_t(beam)];
      step.push_back({std::span(output).last(1), &tables[size_t(beam)], position});
    }
    KITE_ASSIGN_OR_RETURN(rows, run_step(engine, step));
    if (stats) {
      stats->decode_seconds += std::chrono::duration<double>(clock() - started).count();
      stats->decode_tokens += width;
    }
  }
  return search.results();
}

}  // namespace kite
