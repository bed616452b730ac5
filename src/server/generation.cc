// A running generation: Executor responses -> text updates and metrics.
#include "server/generation.h"

#include <algorithm>

namespace kite::server {
namespace {

double seconds_between(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

}  // namespace

std::string openai_finish_reason(executor::FinishReason reason) {
  return reason == executor::FinishReason::kLength ? "length" : "stop";
}

std::vector<std::vector<int32_t>> word_token_sequences(const Tokenizer& tokenizer,
                                                       const std::vector<std::string>& words) {
  std::vector<std::vector<int32_t>> sequences;
  for (const std::string& word : words) {
    std::vector<int32_t> ids = tokenizer.encode(word, false);
    if (!ids.empty()) sequences.push_back(std::move(ids));
  }
  return sequences;
}

std::unique_ptr<Generation> Generation::start(ResponseRouter& router, const Tokenizer& tokenizer,
                                              GenerationSpec spec, ServerMetrics& metrics,
                                              Clock::time_point arrival) {
  // Streamed from the Executor: stop texts are found, and the request cancelled, as soon as they
  // appear, and the latency metrics see every token. A beam search answers once, with its beams
  // (its stop words are token sequences the search itself ends beams at).
  spec.request.streaming = spec.request.sampling.beam_width <= 1;
  std::unique_ptr<RequestStream> stream = router.submit(spec.request);
  if (!stream) return nullptr;
  metrics.prompt_tokens.increment(double(spec.request.input_ids.size()));
  return std::unique_ptr<Generation>(
      new Generation(std::move(stream), tokenizer, spec, metrics, arrival));
}

Generation::Generation(std::unique_ptr<RequestStream> stream, const Tokenizer& tokenizer,
                       const GenerationSpec& spec, ServerMetrics& metrics,
                       Clock::time_point arrival)
    : stream_(std::move(stream)),
      tokenizer_(tokenizer),
      metrics_(metrics),
      skip_special_tokens_(spec.skip_special_tokens),
      prompt_tail_(spec.request.input_ids.end() - int64_t(std::min(spec.request.input_ids.size(),
                                                                   StreamingDecoder::kContextIds)),
                   spec.request.input_ids.end()),
      text_(tokenizer, TextStreamOptions{.stop_texts = spec.stop_texts,
                                         .include_stop_text = spec.include_stop_text,
                                         .context = prompt_tail_,
                                         .min_tokens = spec.request.min_new_tokens,
                                         .skip_special_tokens = spec.skip_special_tokens}),
      want_log_probs_(spec.request.return_log_probs),
      prompt_ids_(spec.request.return_prompt_log_probs ? spec.request.input_ids
                                                       : std::vector<int32_t>()),
      want_prompt_log_probs_(spec.request.return_prompt_log_probs),
      arrival_(arrival),
      prompt_tokens_(int64_t(spec.request.input_ids.size())) {}

Generation::~Generation() {
  if (!finished_) {
    stream_->cancel();
    metrics_.count_finished("cancelled");
  }
}

GenerationUpdate Generation::next(std::chrono::milliseconds timeout) {
  GenerationUpdate update;
  if (finished_) {
    update.finished = true;
    return update;
  }
  for (RoutedResponse& routed : stream_->wait(timeout)) {
    const executor::Response& response = routed.response;
    if (response.error) {
      update.error = *response.error;
      finish(&update, "error");
      return update;
    }
    add_prompt_log_probs(response.result, &update);
    add_tokens(response.result, routed.received, &update);
    if (finished_) return update;
    if (response.result.is_final) {
      if (response.result.finish_reason == executor::FinishReason::kCancelled) {
        // Only this server cancels its requests, and not while it still waits for them.
        update.error = "the request was cancelled";
        finish(&update, "error");
        return update;
      }
      update.text += text_.finish();
      for (const executor::Beam& beam : response.result.beams) {
        // Each beam's text as the stream decodes the output: after the prompt.
        StreamingDecoder decoder(tokenizer_, skip_special_tokens_, prompt_tail_);
        std::string text;
        for (const int32_t id : beam.output_ids) text += decoder.push(id);
        text += decoder.finish();
        update.beams.push_back(BeamText{std::move(text), openai_finish_reason(beam.finish_reason),
                                        int64_t(beam.output_ids.size())});
      }
      finish(&update, openai_finish_reason(response.result.finish_reason));
      return update;
    }
  }
  return update;
}

TokenLogProb Generation::token_log_prob(int32_t id, float log_prob,
                                        const std::vector<executor::TopLogProb>* top) const {
  TokenLogProb entry;
  entry.id = id;
  entry.text = tokenizer_.decode(std::span<const int32_t>(&id, 1), false);
  entry.log_prob = log_prob;
  for (size_t k = 0; top && k < top->size(); ++k) {
    const executor::TopLogProb& alternative = (*top)[k];
    entry.top.emplace_back(
        tokenizer_.decode(std::span<const int32_t>(&alternative.token, 1), false),
        alternative.log_prob);
    entry.top_ids.push_back(alternative.token);
  }
  return entry;
}

void Generation::add_prompt_log_probs(const executor::Result& result, GenerationUpdate* update) {
  // The Executor sends them whole, in the request's first response.
  if (!want_prompt_log_probs_ || prompt_ids_.empty() ||
      result.prompt_log_probs.size() + 1 != prompt_ids_.size()) {
    return;
  }
  int64_t offset = 0;
  for (size_t p = 0; p < prompt_ids_.size(); ++p) {
    const bool has_top = p > 0 && p - 1 < result.prompt_top_log_probs.size();
    TokenLogProb entry =
        token_log_prob(prompt_ids_[p], p > 0 ? result.prompt_log_probs[p - 1] : 0.0f,
                       has_top ? &result.prompt_top_log_probs[p - 1] : nullptr);
    entry.text_offset = offset;
    if (p > 0 && p - 1 < result.prompt_ranks.size()) entry.rank = result.prompt_ranks[p - 1];
    offset += count_characters(entry.text);
    update->prompt_log_probs.push_back(std::move(entry));
  }
  prompt_ids_.clear();
}

void Generation::add_tokens(const executor::Result& result, Clock::time_point received,
                            GenerationUpdate* update) {
  for (size_t i = 0; i < result.output_ids.size(); ++i) {
    const int32_t id = result.output_ids[i];
    ++completion_tokens_;
    metrics_.generation_tokens.increment();
    if (!last_token_time_) {
      metrics_.time_to_first_token.observe(seconds_between(arrival_, received));
    } else {
      metrics_.inter_token_latency.observe(seconds_between(*last_token_time_, received));
    }
    last_token_time_ = received;
    if (want_log_probs_) {
      TokenLogProb entry =
          token_log_prob(id, i < result.log_probs.size() ? result.log_probs[i] : 0.0f,
                         i < result.top_log_probs.size() ? &result.top_log_probs[i] : nullptr);
      entry.text_offset = text_.decoded_characters();
      update->log_probs.push_back(std::move(entry));
    }
    update->text += text_.push(id);
    if (text_.stopped()) {
      // The rest of the output would be cut anyway: free the request's slot and blocks now.
      stream_->cancel();
      finish(update, "stop");
      return;
    }
  }
}

void Generation::finish(GenerationUpdate* update, const std::string& reason) {
  finished_ = true;
  update->finished = true;
  if (reason != "error") update->finish_reason = reason;
  metrics_.count_finished(reason);
  metrics_.request_latency.observe(seconds_between(arrival_, Clock::now()));
}

}  // namespace kite::server
