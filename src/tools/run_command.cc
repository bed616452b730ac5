// `kite run`: generates for a batch of prompts with an engine and prints the results the way
// TensorRT-LLM's run.py does (Input [Text i] / Output [Text i Beam 0]); optional streaming, the
// model's chat template (as `kite serve` renders it) and a JSON record of ids and texts.
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "core/csv.h"
#include "core/file.h"
#include "runtime/beam_search.h"
#include "runtime/engine.h"
#include "server/served_model.h"
#include "tools/command.h"
#include "tools/model_cache.h"

namespace kite::tools {
namespace {

struct RunFlags {
  std::string engine_dir;
  ModelEngineRequest model;
  std::vector<std::string> input_texts;
  std::string input_file;
  int64_t max_output_len = 100;
  SamplingConfig sampling{.temperature = 0.0f};
  bool streaming = false;
  bool chat = false;
  std::string output_json;
  std::vector<std::string> stop_words;
  BeamSearchOptions beams;
  LoadOptions load;
};

std::string json_quoted(const std::string& text) {
  return nlohmann::json(text).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// The prompt of a one-message conversation, rendered by the chat template of the engine's
// tokenizer_config.json as transformers' apply_chat_template renders it (with the generation
// prompt, and whatever default system message the template adds).
Result<std::string> chat_prompt(const server::ServedModel& model, const std::string& engine_dir,
                                const std::string& user) {
  if (!model.chat_template) {
    if (!model.chat_template_error.empty())
      return unsupported("--chat: " + model.chat_template_error);
    return not_found("--chat: " + engine_dir +
                     "/tokenizer_config.json has no chat_template; drop --chat and format the "
                     "prompt yourself");
  }
  return model.render_chat(nlohmann::ordered_json::array({{{"role", "user"}, {"content", user}}}));
}

void print_stats(const GenerationStats& stats) {
  std::fflush(stdout);  // the statistics line goes to stderr, after the outputs
  if (stats.decode_tokens > 0) {
    std::fprintf(stderr,
                 "kite run: prefill %.1f ms, decode %lld tokens in %.2f s (%.1f tokens/s)\n",
                 stats.prefill_seconds * 1e3, static_cast<long long>(stats.decode_tokens),
                 stats.decode_seconds, double(stats.decode_tokens) / stats.decode_seconds);
  }
}

Status write_record(const std::string& path, const nlohmann::ordered_json& record) {
  if (path.empty()) return Status::ok();
  return write_file(path,
                    record.dump(1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
}

// Beam search, one prompt after the other: every finished beam, best first, as run.py prints them
// (Output [Text i Beam b]); the JSON record keeps the best as output_ids / output_text and all of
// them, with their scores, under "beams".
Status print_beams(Engine& engine, const GenerationRequest& request, const RunFlags& flags,
                   GenerationStats* stats) {
  const Tokenizer& tokenizer = engine.tokenizer();
  nlohmann::ordered_json record = nlohmann::ordered_json::array();
  for (size_t i = 0; i < request.prompts.size(); ++i) {
    KITE_ASSIGN_OR_RETURN(
        const std::vector<BeamHypothesis> beams,
        beam_search(engine, request.prompts[i], flags.beams, request.stop, stats));
    std::printf("Input [Text %zu]: %s\n", i, json_quoted(flags.input_texts[i]).c_str());
    nlohmann::ordered_json entries = nlohmann::ordered_json::array();
    for (size_t b = 0; b < beams.size(); ++b) {
      std::string output = tokenizer.decode(beams[b].output_ids);
      if (beams[b].text_length != std::string::npos) output.resize(beams[b].text_length);
      std::printf("Output [Text %zu Beam %zu]: %s\n", i, b, json_quoted(output).c_str());
      entries.push_back({{"output_ids", beams[b].output_ids},
                         {"output_text", output},
                         {"score", beams[b].score},
                         {"cum_log_prob", beams[b].cum_log_prob},
                         {"finish_reason", finish_reason_name(beams[b].finish_reason)}});
    }
    nlohmann::ordered_json entry = {{"input_text", flags.input_texts[i]},
                                    {"input_ids", request.prompts[i]}};
    if (!entries.empty()) {
      entry["output_ids"] = entries[0]["output_ids"];
      entry["output_text"] = entries[0]["output_text"];
      entry["finish_reason"] = entries[0]["finish_reason"];
    }
    entry["beams"] = std::move(entries);
    record.push_back(std::move(entry));
  }
  print_stats(*stats);
  return write_record(flags.output_json, record);
}

// --input_file's prompts: a .csv file holds one prompt a row as token ids (TensorRT-LLM run.py's
// tokenized input, into `ids`); any other file one prompt a line of text (into `texts`), empty
// lines skipped.
Status read_input_file(const std::string& path, std::vector<std::string>* texts,
                       std::vector<std::vector<int32_t>>* ids) {
  const std::string name = "--input_file " + path;
  if (path.size() >= 4 && path.compare(path.size() - 4, 4, ".csv") == 0) {
    KITE_ASSIGN_OR_RETURN(const std::vector<CsvRow> rows, read_csv_file(path));
    for (size_t row = 0; row < rows.size(); ++row) {
      if (rows[row].empty()) continue;
      std::vector<int32_t>& prompt = ids->emplace_back();
      for (const std::string& field : rows[row]) {
        size_t used = 0;
        long long id = -1;
        try {
          id = std::stoll(field, &used);
        } catch (const std::exception&) {
          used = 0;
        }
        if (used == 0 || used != field.size() || id < 0 || id > INT32_MAX) {
          return invalid_argument(name + ": row " + std::to_string(row + 1) + ": '" + field +
                                  "' is not a token id (a .csv file holds token ids; give text "
                                  "prompts in another file, one a line)");
        }
        prompt.push_back(int32_t(id));
      }
    }
  } else {
    KITE_ASSIGN_OR_RETURN(const std::string text, read_file(path));
    size_t start = 0;
    while (start < text.size()) {
      size_t end = text.find('\n', start);
      if (end == std::string::npos) end = text.size();
      std::string line = text.substr(start, end - start);
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (!line.empty()) texts->push_back(std::move(line));
      start = end + 1;
    }
  }
  if (texts->empty() && ids->empty()) return invalid_argument(name + " holds no prompts");
  return Status::ok();
}

Status run(RunFlags flags) {
  std::vector<std::vector<int32_t>> file_ids;  // a .csv --input_file's prompts
  if (!flags.input_file.empty()) {
    if (!flags.input_texts.empty()) {
      return invalid_argument("give --input_text or --input_file, not both");
    }
    KITE_RETURN_IF_ERROR(read_input_file(flags.input_file, &flags.input_texts, &file_ids));
    if (!file_ids.empty() && flags.chat) {
      return invalid_argument("--chat needs text prompts; --input_file " + flags.input_file +
                              " holds token ids");
    }
  }
  if (flags.input_texts.empty() && file_ids.empty()) {
    return invalid_argument("--input_text or --input_file is required");
  }
  for (size_t i = 0; i < flags.input_texts.size(); ++i) {
    if (flags.input_texts[i].empty())
      return invalid_argument("--input_text " + std::to_string(i) + " is empty");
  }
  KITE_RETURN_IF_ERROR(validate_sampling_config(flags.sampling));
  KITE_RETURN_IF_ERROR(validate_beam_search_options(flags.beams));
  if (flags.beams.beam_width > 1) {
    const SamplingConfig greedy{.temperature = 0.0f};
    const SamplingConfig& given = flags.sampling;
    if (given.temperature != greedy.temperature || given.top_k != greedy.top_k ||
        given.top_p != greedy.top_p || given.min_p != greedy.min_p ||
        given.repetition_penalty != greedy.repetition_penalty ||
        given.presence_penalty != greedy.presence_penalty ||
        given.frequency_penalty != greedy.frequency_penalty) {
      return invalid_argument(
          "--num_beams > 1 is deterministic beam search: drop the sampling options (--temperature, "
          "--top_k, --top_p, --min_p and the penalties)");
    }
    if (flags.streaming) return invalid_argument("--streaming works with --num_beams 1 only");
  } else if (flags.beams.length_penalty != 1.0f || flags.beams.early_stopping) {
    return invalid_argument("--length_penalty and --early_stopping need --num_beams above 1");
  }
  if (flags.max_output_len < 1) return invalid_argument("--max_output_len must be >= 1");
  KITE_ASSIGN_OR_RETURN(flags.engine_dir, resolve_engine_dir(flags.engine_dir, flags.model));
  KITE_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::load(flags.engine_dir, flags.load));
  const Tokenizer& tokenizer = engine->tokenizer();
  // Token-id prompts are shown and recorded as their text.
  for (const std::vector<int32_t>& ids : file_ids)
    flags.input_texts.push_back(tokenizer.decode(ids));
  if (int64_t(flags.input_texts.size()) > engine->config().limits.max_batch_size) {
    return out_of_range(std::to_string(flags.input_texts.size()) +
                        " prompts exceed the engine's max_batch_size " +
                        std::to_string(engine->config().limits.max_batch_size));
  }

  GenerationRequest request;
  request.sampling = flags.sampling;
  request.stop.max_output_len = flags.max_output_len;
  request.stop.end_ids = engine->default_end_ids();
  request.stop.stop_texts = flags.stop_words;
  std::optional<server::ServedModel> chat_model;
  if (flags.chat) {
    const BuildLimits& limits = engine->config().limits;
    KITE_ASSIGN_OR_RETURN(
        chat_model,
        server::load_served_model(flags.engine_dir, "", limits.max_input_len, limits.max_seq_len));
  }
  request.prompts = file_ids;  // token ids as given; texts are encoded
  for (size_t i = file_ids.size(); i < flags.input_texts.size(); ++i) {
    const std::string& text = flags.input_texts[i];
    if (chat_model) {
      // The rendered conversation carries its own special tokens (BOS where the template puts it).
      KITE_ASSIGN_OR_RETURN(const std::string prompt,
                            chat_prompt(*chat_model, flags.engine_dir, text));
      request.prompts.push_back(tokenizer.encode(prompt, false));
    } else {
      request.prompts.push_back(tokenizer.encode(text));
    }
  }

  std::vector<StreamingDecoder> decoders;
  for (size_t i = 0; i < request.prompts.size(); ++i) decoders.emplace_back(tokenizer);
  TokenCallback on_token;
  if (flags.streaming) {
    if (request.prompts.size() == 1) std::printf("Output [Text 0 Beam 0]: \"");
    on_token = [&](size_t sequence, int32_t token) {
      const std::string piece = decoders[sequence].push(token);
      if (piece.empty()) return;
      if (request.prompts.size() == 1) {
        std::fputs(piece.c_str(), stdout);
      } else {
        std::printf("[Text %zu] %s\n", sequence, json_quoted(piece).c_str());
      }
      std::fflush(stdout);
    };
  }
  GenerationStats stats;
  if (flags.beams.beam_width > 1) {
    return print_beams(*engine, request, flags, &stats);
  }
  KITE_ASSIGN_OR_RETURN(std::vector<GenerationResult> results,
                        generate(*engine, request, on_token, &stats));
  if (flags.streaming && request.prompts.size() == 1) {
    std::printf("%s\"\n", decoders[0].finish().c_str());
  }

  nlohmann::ordered_json record = nlohmann::ordered_json::array();
  for (size_t i = 0; i < results.size(); ++i) {
    std::string output = tokenizer.decode(results[i].output_ids);
    if (results[i].text_length != std::string::npos) output.resize(results[i].text_length);
    if (!flags.streaming || request.prompts.size() > 1) {
      std::printf("Input [Text %zu]: %s\n", i, json_quoted(flags.input_texts[i]).c_str());
      std::printf("Output [Text %zu Beam 0]: %s\n", i, json_quoted(output).c_str());
    }
    record.push_back({{"input_text", flags.input_texts[i]},
                      {"input_ids", request.prompts[i]},
                      {"output_ids", results[i].output_ids},
                      {"output_text", output},
                      {"finish_reason", finish_reason_name(results[i].finish_reason)}});
  }
  print_stats(stats);
  return write_record(flags.output_json, record);
}

}  // namespace

Command add_run_command(CLI::App& kite) {
  auto flags = std::make_shared<RunFlags>();
  CLI::App* app = kite.add_subcommand("run", "Generate text for a batch of prompts with an engine");
  app->add_option("--engine_dir", flags->engine_dir, "Engine folder (kite build)");
  add_model_options(*app, flags->model);
  app->add_option("--input_text", flags->input_texts, "A prompt; repeat for a batch");
  app->add_option("--input_file", flags->input_file,
                  "Prompts, one a line (a .csv file: one a row, as token ids)");
  app->add_option("--max_output_len", flags->max_output_len, "Tokens to generate at most (100)");
  app->add_option("--temperature", flags->sampling.temperature, "0 (default) is greedy");
  app->add_option("--top_k", flags->sampling.top_k, "Keep the k most likely tokens (0: off)");
  app->add_option("--top_p", flags->sampling.top_p, "Nucleus sampling threshold (1: off)");
  app->add_option("--min_p", flags->sampling.min_p, "Relative probability floor (0: off)");
  app->add_option("--repetition_penalty", flags->sampling.repetition_penalty, "1: off");
  app->add_option("--presence_penalty", flags->sampling.presence_penalty,
                  "Subtracted once from the logit of every token already in the output (0: off)");
  app->add_option("--frequency_penalty", flags->sampling.frequency_penalty,
                  "Subtracted from a token's logit for each time it is in the output (0: off)");
  app->add_option("--seed", flags->sampling.seed, "Random seed of sampling (0)");
  app->add_option("--stop_words", flags->stop_words, "Texts that end the output; repeatable");
  app->add_option("--num_beams", flags->beams.beam_width,
                  "Beam search with this many beams (1, the default: sampling or greedy)");
  app->add_option("--length_penalty", flags->beams.length_penalty,
                  "Beam scores are log-probability / length^this (1)");
  app->add_flag("--early_stopping", flags->beams.early_stopping,
                "Beam search stops once --num_beams beams have finished");
  app->add_flag("--streaming", flags->streaming, "Print tokens as they are generated");
  app->add_flag("--chat", flags->chat,
                "Send each prompt as a user message through the model's chat template");
  app->add_option("--output_json", flags->output_json, "Write input/output ids and texts here");
  app->add_option("--kv_cache_free_gpu_mem_fraction", flags->load.kv_cache_free_gpu_mem_fraction,
                  "CUDA engines: share of the free GPU memory the KV cache takes (0.9)");
  return Command{app, [flags] { return run(*flags); }};
}

}  // namespace kite::tools
