// Pre-tokenizers of tokenizer.json ("pre_tokenizer"): split normalized text into the words the
// model encodes one by one, transforming them on the way (ByteLevel, Metaspace).
#pragma once

#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/status.h"

namespace kite {

// One word in the making. `at_text_start` records whether it begins at offset 0 of the original
// input, which Metaspace's prepend_scheme "first" looks at. Empty pieces are dropped, as in the
// Rust library.
struct Piece {
  std::string text;
  bool at_text_start = false;
};

// Receives pieces one at a time (a non-owning reference to any callable taking Piece&&).
class PieceSink {
 public:
  template <typename Function>
  requires(!std::is_same_v<std::remove_cv_t<Function>, PieceSink>)
      PieceSink(Function& function)  // NOLINT: implicit by design, like std::function_ref
      : object_(&function), call_([](void* object, Piece&& piece) {
          (*static_cast<Function*>(object))(std::move(piece));
        }) {}
  void operator()(Piece&& piece) const { call_(object_, std::move(piece)); }

 private:
  void* object_;
  void (*call_)(void*, Piece&&);
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Splits one piece and passes its non-empty splits to `sink`, in order. Every pre-tokenizer
  // of the Rust library treats pieces independently, so steps can run piece by piece (depth
  // first) and a long document never turns into one big list of words.
  virtual void split(const Piece& piece, const PieceSink& sink) const = 0;
};

Result<std::unique_ptr<PreTokenizer>> parse_pre_tokenizer(const nlohmann::json& spec);

}  // namespace kite
