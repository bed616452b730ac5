// The Python module `kite`: the Executor API of include/kite/executor.h (in-flight batching,
// streaming, cancellation, statistics) and the engine's tokenizer, for Python programs. Blocking
// calls release the GIL, so other Python threads run while the executor works.
//
//   import kite
//   tokenizer = kite.Tokenizer("engine")
//   with kite.Executor("engine") as executor:
//       result = executor.generate(tokenizer.encode("The capital of France is"), max_new_tokens=8)
//       print(tokenizer.decode(result.output_ids))
#include <pybind11/chrono.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "kite/executor.h"
#include "tokenizer/tokenizer.h"

namespace py = pybind11;
using namespace kite::executor;

namespace {

std::chrono::milliseconds to_milliseconds(double seconds) {
  if (!(seconds >= 0)) throw py::value_error("timeout must be a non-negative number of seconds");
  return std::chrono::milliseconds(int64_t(seconds * 1000.0));
}

// An Executor that is shut down exactly once, by shutdown(), __exit__ or its destruction.
class PyExecutor {
 public:
  PyExecutor(const std::string& engine_dir, const ExecutorConfig& config) {
    std::string error;
    {
      py::gil_scoped_release release;
      executor_ = Executor::create(engine_dir, config, &error);
    }
    if (!executor_) throw std::runtime_error(error);
  }

  Executor& get() {
    if (!executor_) throw std::runtime_error("the executor has been shut down");
    return *executor_;
  }

  void shutdown() {
    if (!executor_) return;
    py::gil_scoped_release release;
    executor_->shutdown();
    executor_.reset();
  }

  // Enqueues every prompt and waits for all their final results, in the order of the prompts.
  std::vector<Result> generate(const std::vector<Request>& requests) {
    Executor& executor = get();
    for (const Request& request : requests) {
      if (std::optional<std::string> problem = executor.check_request(request)) {
        throw py::value_error(*problem);
      }
    }
    py::gil_scoped_release release;
    std::map<RequestId, size_t> index;
    std::vector<Result> results(requests.size());
    for (size_t i = 0; i < requests.size(); ++i) {
      Request request = requests[i];
      request.streaming = false;
      index[executor.enqueue_request(request)] = i;
    }
    size_t finished = 0;
    while (finished < requests.size()) {
      for (Response& response : executor.await_responses(std::chrono::milliseconds(100))) {
        const auto found = index.find(response.request_id);
        if (found == index.end()) continue;  // another caller's request
        if (response.error) {
          py::gil_scoped_acquire acquire;
          throw std::runtime_error(*response.error);
        }
        if (!response.result.is_final) continue;
        results[found->second] = std::move(response.result);
        ++finished;
      }
      // Ctrl-C while generating: stop waiting (the executor finishes or cancels on shutdown).
      py::gil_scoped_acquire acquire;
      if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    }
    return results;
  }

 private:
  std::unique_ptr<Executor> executor_;
};

Request make_request(std::vector<int32_t> input_ids, int64_t max_new_tokens,
                     const SamplingConfig& sampling, std::vector<std::vector<int32_t>> stop_words,
                     std::vector<std::vector<int32_t>> bad_words,
                     std::map<int32_t, float> logit_bias,
                     std::optional<std::vector<int32_t>> end_ids, bool streaming,
                     bool return_log_probs, int64_t top_log_probs, int64_t min_new_tokens,
                     bool return_prompt_log_probs, int64_t top_prompt_log_probs) {
  Request request;
  request.input_ids = std::move(input_ids);
  request.max_new_tokens = max_new_tokens;
  request.min_new_tokens = min_new_tokens;
  request.sampling = sampling;
  request.stop_words = std::move(stop_words);
  request.bad_words = std::move(bad_words);
  request.logit_bias = std::move(logit_bias);
  request.end_ids = std::move(end_ids);
  request.streaming = streaming;
  request.return_log_probs = return_log_probs;
  request.top_log_probs = top_log_probs;
  request.return_prompt_log_probs = return_prompt_log_probs;
  request.top_prompt_log_probs = top_prompt_log_probs;
  return request;
}

}  // namespace

PYBIND11_MODULE(kite, module) {
  module.doc() = "Kite: LLM inference engines (the Executor API and the tokenizer)";

  py::enum_<FinishReason>(module, "FinishReason")
      .value("NOT_FINISHED", FinishReason::kNotFinished)
      .value("END_ID", FinishReason::kEndId)
      .value("STOP_WORDS", FinishReason::kStopWords)
      .value("LENGTH", FinishReason::kLength)
      .value("CANCELLED", FinishReason::kCancelled);
  py::enum_<SchedulerPolicy>(module, "SchedulerPolicy")
      .value("GUARANTEED_NO_EVICT", SchedulerPolicy::kGuaranteedNoEvict)
      .value("MAX_UTILIZATION", SchedulerPolicy::kMaxUtilization);

  py::class_<SamplingConfig>(module, "SamplingConfig")
      .def(py::init([](float temperature, int64_t top_k, float top_p, float min_p,
                       float repetition_penalty, uint64_t seed, float presence_penalty,
                       float frequency_penalty, int64_t beam_width, float length_penalty,
                       bool early_stopping) {
             return SamplingConfig{temperature,
                                   top_k,
                                   top_p,
                                   min_p,
                                   repetition_penalty,
                                   seed,
                                   presence_penalty,
                                   frequency_penalty,
                                   beam_width,
                                   length_penalty,
                                   early_stopping};
           }),
           py::kw_only(), py::arg("temperature") = 1.0f, py::arg("top_k") = 0,
           py::arg("top_p") = 1.0f, py::arg("min_p") = 0.0f, py::arg("repetition_penalty") = 1.0f,
           py::arg("seed") = 0, py::arg("presence_penalty") = 0.0f,
           py::arg("frequency_penalty") = 0.0f, py::arg("beam_width") = 1,
           py::arg("length_penalty") = 1.0f, py::arg("early_stopping") = false)
      .def_readwrite("temperature", &SamplingConfig::temperature)
      .def_readwrite("top_k", &SamplingConfig::top_k)
      .def_readwrite("top_p", &SamplingConfig::top_p)
      .def_readwrite("min_p", &SamplingConfig::min_p)
      .def_readwrite("repetition_penalty", &SamplingConfig::repetition_penalty)
      .def_readwrite("seed", &SamplingConfig::seed)
      .def_readwrite("presence_penalty", &SamplingConfig::presence_penalty)
      .def_readwrite("frequency_penalty", &SamplingConfig::frequency_penalty)
      .def_readwrite("beam_width", &SamplingConfig::beam_width)
      .def_readwrite("length_penalty", &SamplingConfig::length_penalty)
      .def_readwrite("early_stopping", &SamplingConfig::early_stopping);

  py::class_<Request>(module, "Request")
      .def(py::init(&make_request), py::arg("input_ids"), py::kw_only(),
           py::arg("max_new_tokens") = 16, py::arg("sampling") = SamplingConfig{},
           py::arg("stop_words") = std::vector<std::vector<int32_t>>{},
           py::arg("bad_words") = std::vector<std::vector<int32_t>>{},
           py::arg("logit_bias") = std::map<int32_t, float>{}, py::arg("end_ids") = std::nullopt,
           py::arg("streaming") = false, py::arg("return_log_probs") = false,
           py::arg("top_log_probs") = 0, py::arg("min_new_tokens") = 0,
           py::arg("return_prompt_log_probs") = false, py::arg("top_prompt_log_probs") = 0)
      .def_readwrite("input_ids", &Request::input_ids)
      .def_readwrite("max_new_tokens", &Request::max_new_tokens)
      .def_readwrite("min_new_tokens", &Request::min_new_tokens)
      .def_readwrite("sampling", &Request::sampling)
      .def_readwrite("stop_words", &Request::stop_words)
      .def_readwrite("bad_words", &Request::bad_words)
      .def_readwrite("logit_bias", &Request::logit_bias)
      .def_readwrite("end_ids", &Request::end_ids)
      .def_readwrite("streaming", &Request::streaming)
      .def_readwrite("return_log_probs", &Request::return_log_probs)
      .def_readwrite("top_log_probs", &Request::top_log_probs)
      .def_readwrite("return_prompt_log_probs", &Request::return_prompt_log_probs)
      .def_readwrite("top_prompt_log_probs", &Request::top_prompt_log_probs);

  py::class_<TopLogProb>(module, "TopLogProb")
      .def_readonly("token", &TopLogProb::token)
      .def_readonly("log_prob", &TopLogProb::log_prob)
      .def("__repr__", [](const TopLogProb& top) {
        return "TopLogProb(token=" + std::to_string(top.token) +
               ", log_prob=" + std::to_string(top.log_prob) + ")";
      });
  py::class_<Beam>(module, "Beam")
      .def_readonly("output_ids", &Beam::output_ids)
      .def_readonly("cum_log_prob", &Beam::cum_log_prob)
      .def_readonly("score", &Beam::score)
      .def_readonly("finish_reason", &Beam::finish_reason);
  py::class_<Result>(module, "Result")
      .def_readonly("output_ids", &Result::output_ids)
      .def_readonly("log_probs", &Result::log_probs)
      .def_readonly("top_log_probs", &Result::top_log_probs)
      .def_readonly("finish_reason", &Result::finish_reason)
      .def_readonly("is_final", &Result::is_final)
      .def_readonly("beams", &Result::beams)
      .def_readonly("prompt_log_probs", &Result::prompt_log_probs)
      .def_readonly("prompt_ranks", &Result::prompt_ranks)
      .def_readonly("prompt_top_log_probs", &Result::prompt_top_log_probs);
  py::class_<Response>(module, "Response")
      .def_readonly("request_id", &Response::request_id)
      .def_readonly("error", &Response::error)
      .def_readonly("result", &Response::result);

  py::class_<ExecutorConfig>(module, "ExecutorConfig")
      .def(py::init([](SchedulerPolicy policy, int64_t max_batch_size, int64_t max_num_tokens,
                       bool enable_chunked_prefill, bool enable_prefix_reuse,
                       double kv_cache_free_gpu_mem_fraction, int device_index) {
             return ExecutorConfig{policy,
                                   max_batch_size,
                                   max_num_tokens,
                                   enable_chunked_prefill,
                                   enable_prefix_reuse,
                                   kv_cache_free_gpu_mem_fraction,
                                   device_index};
           }),
           py::kw_only(), py::arg("policy") = SchedulerPolicy::kGuaranteedNoEvict,
           py::arg("max_batch_size") = 0, py::arg("max_num_tokens") = 0,
           py::arg("enable_chunked_prefill") = true, py::arg("enable_prefix_reuse") = true,
           py::arg("kv_cache_free_gpu_mem_fraction") = 0.9, py::arg("device_index") = 0)
      .def_readwrite("policy", &ExecutorConfig::policy)
      .def_readwrite("max_batch_size", &ExecutorConfig::max_batch_size)
      .def_readwrite("max_num_tokens", &ExecutorConfig::max_num_tokens)
      .def_readwrite("enable_chunked_prefill", &ExecutorConfig::enable_chunked_prefill)
      .def_readwrite("enable_prefix_reuse", &ExecutorConfig::enable_prefix_reuse)
      .def_readwrite("kv_cache_free_gpu_mem_fraction",
                     &ExecutorConfig::kv_cache_free_gpu_mem_fraction)
      .def_readwrite("device_index", &ExecutorConfig::device_index);

  py::class_<KvCacheStats>(module, "KvCacheStats")
      .def_readonly("total_blocks", &KvCacheStats::total_blocks)
      .def_readonly("free_blocks", &KvCacheStats::free_blocks)
      .def_readonly("used_blocks", &KvCacheStats::used_blocks)
      .def_readonly("cached_blocks", &KvCacheStats::cached_blocks)
      .def_readonly("reused_blocks", &KvCacheStats::reused_blocks)
      .def_readonly("tokens_per_block", &KvCacheStats::tokens_per_block);
  py::class_<IterationStats>(module, "IterationStats")
      .def_readonly("iteration", &IterationStats::iteration)
      .def_readonly("seconds", &IterationStats::seconds)
      .def_readonly("scheduled_requests", &IterationStats::scheduled_requests)
      .def_readonly("context_tokens", &IterationStats::context_tokens)
      .def_readonly("generation_tokens", &IterationStats::generation_tokens);
  py::class_<ExecutorStats>(module, "ExecutorStats")
      .def_readonly("queued_requests", &ExecutorStats::queued_requests)
      .def_readonly("active_requests", &ExecutorStats::active_requests)
      .def_readonly("paused_requests", &ExecutorStats::paused_requests)
      .def_readonly("completed_requests", &ExecutorStats::completed_requests)
      .def_readonly("preemptions", &ExecutorStats::preemptions)
      .def_readonly("kv_cache", &ExecutorStats::kv_cache)
      .def_readonly("recent_iterations", &ExecutorStats::recent_iterations);

  py::class_<PyExecutor>(module, "Executor")
      .def(py::init<const std::string&, const ExecutorConfig&>(), py::arg("engine_dir"),
           py::arg("config") = ExecutorConfig{})
      .def(
          "check_request",
          [](PyExecutor& self, const Request& request) {
            return self.get().check_request(request);
          },
          py::arg("request"))
      .def(
          "enqueue_request",
          [](PyExecutor& self, const Request& request) {
            return self.get().enqueue_request(request);
          },
          py::arg("request"))
      .def(
          "cancel_request", [](PyExecutor& self, RequestId id) { self.get().cancel_request(id); },
          py::arg("id"))
      .def(
          "await_responses",
          [](PyExecutor& self, std::optional<RequestId> id, double timeout) {
            Executor& executor = self.get();
            const std::chrono::milliseconds wait = to_milliseconds(timeout);
            py::gil_scoped_release release;
            return id ? executor.await_responses(*id, wait) : executor.await_responses(wait);
          },
          py::arg("id") = std::nullopt, py::kw_only(), py::arg("timeout") = 1.0)
      .def(
          "generate",
          [](PyExecutor& self, const py::object& input_ids, int64_t max_new_tokens,
             const SamplingConfig& sampling, std::vector<std::vector<int32_t>> stop_words,
             std::optional<std::vector<int32_t>> end_ids, bool return_log_probs,
             int64_t min_new_tokens) -> py::object {
            // One prompt (a list of ids) gives one Result; a list of prompts, a list of them.
            bool batch = false;
            if (py::len(input_ids) > 0) {
              const py::object first = input_ids[py::int_(0)];
              batch = py::isinstance<py::sequence>(first) && !py::isinstance<py::str>(first);
            }
            std::vector<std::vector<int32_t>> prompts;
            if (batch) {
              prompts = input_ids.cast<std::vector<std::vector<int32_t>>>();
            } else {
              prompts.push_back(input_ids.cast<std::vector<int32_t>>());
            }
            std::vector<Request> requests;
            for (std::vector<int32_t>& prompt : prompts) {
              requests.push_back(make_request(std::move(prompt), max_new_tokens, sampling,
                                              stop_words, {}, {}, end_ids, false, return_log_probs,
                                              0, min_new_tokens, false, 0));
            }
            std::vector<Result> results = self.generate(requests);
            if (batch) return py::cast(std::move(results));
            return py::cast(std::move(results.front()));
          },
          py::arg("input_ids"), py::kw_only(), py::arg("max_new_tokens") = 16,
          py::arg("sampling") = SamplingConfig{.temperature = 0.0f},
          py::arg("stop_words") = std::vector<std::vector<int32_t>>{},
          py::arg("end_ids") = std::nullopt, py::arg("return_log_probs") = false,
          py::arg("min_new_tokens") = 0)
      .def("stats", [](PyExecutor& self) { return self.get().stats(); })
      .def_property_readonly("max_input_len",
                             [](PyExecutor& self) { return self.get().max_input_len(); })
      .def_property_readonly("max_seq_len",
                             [](PyExecutor& self) { return self.get().max_seq_len(); })
      .def_property_readonly("end_ids", [](PyExecutor& self) { return self.get().end_ids(); })
      .def("shutdown", &PyExecutor::shutdown)
      .def(
          "__enter__", [](PyExecutor& self) -> PyExecutor& { return self; },
          py::return_value_policy::reference)
      .def("__exit__", [](PyExecutor& self, const py::args&) { self.shutdown(); });

  py::class_<kite::Tokenizer>(module, "Tokenizer")
      .def(py::init([](const std::string& directory) {
             kite::Result<kite::Tokenizer> tokenizer = kite::Tokenizer::from_directory(directory);
             if (!tokenizer.is_ok()) throw std::runtime_error(tokenizer.status().message());
             return std::move(*tokenizer);
           }),
           py::arg("directory"))
      .def(
          "encode",
          [](const kite::Tokenizer& tokenizer, const std::string& text, bool add_special_tokens) {
            return tokenizer.encode(text, add_special_tokens);
          },
          py::arg("text"), py::kw_only(), py::arg("add_special_tokens") = true)
      .def(
          "decode",
          [](const kite::Tokenizer& tokenizer, const std::vector<int32_t>& ids,
             bool skip_special_tokens) { return tokenizer.decode(ids, skip_special_tokens); },
          py::arg("ids"), py::kw_only(), py::arg("skip_special_tokens") = true)
      .def_property_readonly("vocab_size", &kite::Tokenizer::vocab_size);

  module.attr("__version__") = KITE_VERSION;
}
