// Reference outputs from llama.cpp (libllama) for Kite's golden tests: greedy continuations of
// given prompts, and llama-perplexity's perplexity definition recomputed with per-chunk sums.
// Built and run by scripts/golden/llamacpp_reference.sh; prints one JSON object on stdout.
//
//   llamacpp_reference info MODEL
//   llamacpp_reference greedy MODEL PROMPTS_JSON N_NEW THREADS
//   llamacpp_reference perplexity MODEL TEXT_FILE N_CTX N_CHUNKS THREADS
//
// PROMPTS_JSON is a list of {"name": ..., "text": ...}. Greedy decoding takes the argmax of the raw
// logits (lowest id on ties) and never stops early: end-of-generation tokens are recorded.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "gguf.h"
#include "llama.h"
#include "nlohmann/json.hpp"

using json = nlohmann::json;

namespace {

[[noreturn]] void die(const std::string& message) {
  std::fprintf(stderr, "llamacpp_reference: error: %s\n", message.c_str());
  std::exit(1);
}

int parse_int(const char* text, const char* what) {
  char* end = nullptr;
  const long value = std::strtol(text, &end, 10);
  if (end == text || *end != '\0' || value <= 0 || value > 1 << 24) {
    die(std::string("bad ") + what + " '" + text + "' (expected a positive integer)");
  }
  return static_cast<int>(value);
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) die("cannot open " + path);
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// Logging of libllama/ggml goes to stderr, so that stdout holds only the JSON; debug messages
// (several per decoded token) are dropped, continuation lines follow their message's level.
void log_to_stderr(ggml_log_level level, const char* text, void*) {
  static ggml_log_level last_level = GGML_LOG_LEVEL_INFO;
  if (level != GGML_LOG_LEVEL_CONT) last_level = level;
  if (last_level != GGML_LOG_LEVEL_DEBUG) std::fputs(text, stderr);
}

llama_model* load_model(const std::string& path) {
  llama_model_params params = llama_model_default_params();
  params.n_gpu_layers = 0;
  llama_model* model = llama_model_load_from_file(path.c_str(), params);
  if (model == nullptr) die("cannot load model " + path);
  return model;
}

llama_context* make_context(llama_model* model, int n_ctx, int n_batch, int threads) {
  llama_context_params params = llama_context_default_params();
  params.n_ctx = static_cast<uint32_t>(n_ctx);
  params.n_batch = static_cast<uint32_t>(n_batch);
  params.n_ubatch = static_cast<uint32_t>(n_batch);
  params.n_seq_max = 1;
  params.n_threads = threads;
  params.n_threads_batch = threads;
  // float32 KV cache and the plain attention path: the reference should carry no rounding of its
  // own beyond float32 arithmetic.
  params.type_k = GGML_TYPE_F32;
  params.type_v = GGML_TYPE_F32;
  params.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
  params.no_perf = true;
  llama_context* ctx = llama_init_from_model(model, params);
  if (ctx == nullptr) die("cannot create a llama context");
  return ctx;
}

std::vector<llama_token> tokenize(const llama_vocab* vocab, const std::string& text,
                                  bool add_special, bool parse_special) {
  const int n = -llama_tokenize(vocab, text.data(), static_cast<int32_t>(text.size()), nullptr, 0,
                                add_special, parse_special);
  if (n < 0) die("tokenization failed");
  std::vector<llama_token> tokens(static_cast<size_t>(n));
  if (n > 0 && llama_tokenize(vocab, text.data(), static_cast<int32_t>(text.size()), tokens.data(),
                              n, add_special, parse_special) != n) {
    die("tokenization failed");
  }
  return tokens;
}

std::string piece(const llama_vocab* vocab, llama_token token) {
  std::vector<char> buffer(256);
  int n = llama_token_to_piece(vocab, token, buffer.data(), static_cast<int32_t>(buffer.size()), 0,
                               true);
  if (n < 0) {
    buffer.resize(static_cast<size_t>(-n));
    n = llama_token_to_piece(vocab, token, buffer.data(), static_cast<int32_t>(buffer.size()), 0,
                             true);
  }
  if (n < 0) die("token_to_piece failed");
  return std::string(buffer.data(), static_cast<size_t>(n));
}

std::string detokenize(const llama_vocab* vocab, const std::vector<llama_token>& tokens) {
  std::vector<char> buffer(tokens.size() * 16 + 64);
  int n = llama_detokenize(vocab, tokens.data(), static_cast<int32_t>(tokens.size()),
                           buffer.data(), static_cast<int32_t>(buffer.size()), false, true);
  if (n < 0) {
    buffer.resize(static_cast<size_t>(-n));
    n = llama_detokenize(vocab, tokens.data(), static_cast<int32_t>(tokens.size()), buffer.data(),
                         static_cast<int32_t>(buffer.size()), false, true);
  }
  if (n < 0) die("detokenize failed");
  return std::string(buffer.data(), static_cast<size_t>(n));
}

// Decodes tokens at positions start.. with logits for the positions where `wanted` says so.
void decode(llama_context* ctx, llama_batch_ext* batch, const llama_token* tokens, int count,
            int start, const std::vector<bool>& wanted) {
  llama_batch_ext_clear(batch);
  for (int i = 0; i < count; ++i) {
    const int32_t index = llama_batch_ext_add_token(batch, 0, tokens[i]);
    if (index < 0) die("batch is full");
    const llama_pos position = start + i;
    llama_batch_ext_set_pos(batch, index, &position);
    if (wanted[static_cast<size_t>(i)]) llama_batch_ext_set_output_logits(batch, index, true);
  }
  const int32_t status = llama_process(ctx, LLAMA_PROCESS_TYPE_DECODE, batch);
  if (status != 0) die("llama_process failed with status " + std::to_string(status));
}

// Ids of the k largest logits, largest first; ties go to the lower id.
std::vector<int> top_k(const float* logits, int n_vocab, int k) {
  std::vector<int> ids(static_cast<size_t>(n_vocab));
  for (int i = 0; i < n_vocab; ++i) ids[static_cast<size_t>(i)] = i;
  std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), [logits](int a, int b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  ids.resize(static_cast<size_t>(k));
  return ids;
}

// Tensor types, chat template and CPU features, read without loading the weights.
json model_info(const std::string& path) {
  gguf_init_params params = {true, nullptr};
  gguf_context* gguf = gguf_init_from_file(path.c_str(), params);
  if (gguf == nullptr) die("cannot read GGUF " + path);
  std::map<std::string, int> counts;
  for (int64_t i = 0; i < gguf_get_n_tensors(gguf); ++i) {
    counts[ggml_type_name(gguf_get_tensor_type(gguf, i))] += 1;
  }
  json chat_template = nullptr;
  const int64_t key = gguf_find_key(gguf, "tokenizer.chat_template");
  if (key >= 0 && gguf_get_kv_type(gguf, key) == GGUF_TYPE_STRING) {
    chat_template = gguf_get_val_str(gguf, key);
  }
  gguf_free(gguf);
  return {{"tensor_types", counts},
          {"chat_template", chat_template},
          {"system_info", llama_print_system_info()}};
}

json run_greedy(const std::string& model_path, const std::string& prompts_path, int n_new,
                int threads) {
  json prompts;
  try {
    prompts = json::parse(read_text(prompts_path));
  } catch (const json::exception& error) {
    die(prompts_path + ": " + error.what());
  }
  if (!prompts.is_array() || prompts.empty()) die(prompts_path + ": expected a non-empty list");

  llama_model* model = load_model(model_path);
  const llama_vocab* vocab = llama_model_get_vocab(model);
  const int n_vocab = llama_vocab_n_tokens(vocab);

  std::vector<std::vector<llama_token>> all_tokens;
  size_t longest = 0;
  for (const json& prompt : prompts) {
    if (!prompt.contains("text") || !prompt["text"].is_string()) {
      die(prompts_path + ": every prompt needs a string \"text\"");
    }
    // add_special: BOS only where the model asks for it; parse_special: ChatML markers such as
    // <|im_start|> become their special tokens.
    all_tokens.push_back(tokenize(vocab, prompt["text"].get<std::string>(), true, true));
    longest = std::max(longest, all_tokens.back().size());
  }
  const int n_ctx = static_cast<int>(longest) + n_new + 8;
  llama_context* ctx = make_context(model, n_ctx, n_ctx, threads);
  llama_batch_ext* batch = llama_batch_ext_init(ctx);

  json results = json::array();
  for (size_t p = 0; p < all_tokens.size(); ++p) {
    const std::vector<llama_token>& tokens = all_tokens[p];
    if (tokens.empty()) die("prompt " + std::to_string(p) + " has no tokens");
    llama_memory_clear(llama_get_memory(ctx), true);
    std::vector<bool> wanted(tokens.size(), false);
    wanted.back() = true;
    decode(ctx, batch, tokens.data(), static_cast<int>(tokens.size()), 0, wanted);

    json prompt_top;
    json steps = json::array();
    std::vector<llama_token> generated;
    json first_eog = nullptr;
    int position = static_cast<int>(tokens.size());
    for (int step = 0; step < n_new; ++step) {
      const float* logits = llama_get_logits_ith(ctx, -1);
      if (logits == nullptr) die("no logits");
      if (step == 0) {
        const std::vector<int> top = top_k(logits, n_vocab, 10);
        json values = json::array();
        for (int id : top) values.push_back(logits[id]);
        prompt_top = {{"ids", top}, {"logits", values}};
      }
      const std::vector<int> top = top_k(logits, n_vocab, 2);
      const llama_token token = top[0];
      const bool eog = llama_vocab_is_eog(vocab, token);
      if (eog && first_eog.is_null()) first_eog = step;
      steps.push_back({{"token", token},
                       {"piece", piece(vocab, token)},
                       {"top2_ids", top},
                       {"top2_logits", {logits[top[0]], logits[top[1]]}},
                       {"margin", logits[top[0]] - logits[top[1]]},
                       {"is_eog", eog}});
      generated.push_back(token);
      if (step + 1 < n_new) {
        decode(ctx, batch, &token, 1, position, {true});
        ++position;
      }
    }
    std::vector<llama_token> until_eog = generated;
    if (!first_eog.is_null()) until_eog.resize(first_eog.get<size_t>());
    json record = prompts[p];
    record["prompt_tokens"] = tokens;
    record["greedy_tokens"] = generated;
    record["first_eog_step"] = first_eog;
    record["text_until_eog"] = detokenize(vocab, until_eog);
    record["prompt_last_position_top10"] = prompt_top;
    record["steps"] = steps;
    results.push_back(record);
    std::fprintf(stderr, "llamacpp_reference: prompt %zu: %zu prompt tokens, first EOG at %s\n", p,
                 tokens.size(), first_eog.dump().c_str());
  }

  const char* chat_template = llama_model_chat_template(model, nullptr);
  char description[256];
  llama_model_desc(model, description, sizeof(description));
  json out = {{"model_description", description},
              {"n_vocab", n_vocab},
              {"add_bos", llama_vocab_get_add_bos(vocab)},
              {"bos_id", llama_vocab_bos(vocab)},
              {"eos_id", llama_vocab_eos(vocab)},
              {"chat_template", chat_template ? json(chat_template) : json(nullptr)},
              {"context", {{"n_ctx", n_ctx}, {"n_batch", n_ctx}, {"type_k", "f32"},
                           {"type_v", "f32"}, {"flash_attn", "disabled"}, {"threads", threads}}},
              {"prompts", results}};
  llama_batch_ext_free(batch);
  llama_free(ctx);
  llama_model_free(model);
  return out;
}

// llama-perplexity's definition (tools/perplexity/perplexity.cpp, perplexity(), no --ppl-stride):
// the file minus one trailing newline is tokenized whole (add_special, no special parsing), cut into
// chunks of n_ctx tokens; in each chunk the first token is replaced by BOS when the vocabulary adds
// BOS, positions run 0..n_ctx-1, and the logits at positions n_ctx/2 .. n_ctx-2 score the tokens
// that follow them (n_ctx - 1 - n_ctx/2 tokens a chunk).
json run_perplexity(const std::string& model_path, const std::string& text_path, int n_ctx,
                    int n_chunks, int threads) {
  std::string text = read_text(text_path);
  if (!text.empty() && text.back() == '\n') text.pop_back();

  llama_model* model = load_model(model_path);
  const llama_vocab* vocab = llama_model_get_vocab(model);
  const int n_vocab = llama_vocab_n_tokens(vocab);
  const bool add_bos = llama_vocab_get_add_bos(vocab);
  const std::vector<llama_token> tokens = tokenize(vocab, text, true, false);
  const int available = static_cast<int>(tokens.size()) / n_ctx;
  if (available < n_chunks) {
    die(text_path + " tokenizes to " + std::to_string(tokens.size()) + " tokens, fewer than " +
        std::to_string(n_chunks) + " chunks of " + std::to_string(n_ctx));
  }
  llama_context* ctx = make_context(model, n_ctx, n_ctx, threads);
  llama_batch_ext* batch = llama_batch_ext_init(ctx);

  const int first = n_ctx / 2;
  std::vector<bool> wanted(static_cast<size_t>(n_ctx), false);
  for (int j = first; j < n_ctx; ++j) wanted[static_cast<size_t>(j)] = true;

  json chunks = json::array();
  double total_nll = 0.0;
  long total_count = 0;
  for (int chunk = 0; chunk < n_chunks; ++chunk) {
    std::vector<llama_token> window(tokens.begin() + static_cast<long>(chunk) * n_ctx,
                                    tokens.begin() + static_cast<long>(chunk + 1) * n_ctx);
    if (add_bos) window[0] = llama_vocab_bos(vocab);
    llama_memory_clear(llama_get_memory(ctx), true);
    decode(ctx, batch, window.data(), n_ctx, 0, wanted);
    double nll = 0.0;
    int count = 0;
    for (int j = first; j < n_ctx - 1; ++j) {
      const float* logits = llama_get_logits_ith(ctx, j);
      if (logits == nullptr) die("no logits at position " + std::to_string(j));
      float max_logit = logits[0];
      for (int i = 1; i < n_vocab; ++i) max_logit = std::max(max_logit, logits[i]);
      double sum_exp = 0.0;
      for (int i = 0; i < n_vocab; ++i) sum_exp += std::exp(logits[i] - max_logit);
      const llama_token next = window[static_cast<size_t>(j + 1)];
      nll -= logits[next] - max_logit - std::log(sum_exp);
      ++count;
    }
    total_nll += nll;
    total_count += count;
    chunks.push_back({{"nll_sum", nll}, {"count", count}});
    std::fprintf(stderr, "llamacpp_reference: chunk %d: mean nll %.6f, running ppl %.4f\n", chunk,
                 nll / count, std::exp(total_nll / static_cast<double>(total_count)));
  }
  std::vector<llama_token> scored(tokens.begin(),
                                  tokens.begin() + static_cast<long>(n_chunks) * n_ctx);
  json out = {{"n_ctx", n_ctx},
              {"n_chunks", n_chunks},
              {"first_scored_position", first},
              {"scored_per_chunk", n_ctx - 1 - first},
              {"add_bos", add_bos},
              {"file_tokens", tokens.size()},
              {"nll_sum", total_nll},
              {"count", total_count},
              {"perplexity", std::exp(total_nll / static_cast<double>(total_count))},
              {"chunks", chunks},
              {"tokens", scored}};
  llama_batch_ext_free(batch);
  llama_free(ctx);
  llama_model_free(model);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string usage =
      "usage: llamacpp_reference info MODEL | greedy MODEL PROMPTS_JSON N_NEW THREADS | "
      "perplexity MODEL TEXT_FILE N_CTX N_CHUNKS THREADS";
  if (argc < 3) die(usage);
  const std::string mode = argv[1];
  json out;
  if (mode == "info" && argc == 3) {
    out = model_info(argv[2]);
  } else {
    llama_log_set(log_to_stderr, nullptr);
    llama_backend_init();
    if (mode == "greedy" && argc == 6) {
      out = run_greedy(argv[2], argv[3], parse_int(argv[4], "N_NEW"),
                       parse_int(argv[5], "THREADS"));
    } else if (mode == "perplexity" && argc == 7) {
      out = run_perplexity(argv[2], argv[3], parse_int(argv[4], "N_CTX"),
                           parse_int(argv[5], "N_CHUNKS"), parse_int(argv[6], "THREADS"));
    } else {
      die(usage);
    }
    llama_backend_free();
  }
  std::printf("%s\n", out.dump(1, ' ', false, json::error_handler_t::replace).c_str());
  return 0;
}
