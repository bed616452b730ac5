// The BPE model of tokenizer.json ("model": {"type": "BPE"}): merges pairs of symbols by rank,
// like the Rust library's Word::merge_all, with byte fallback, unknown-token handling, the
// continuing-subword prefix / end-of-word suffix, ignore_merges, and a per-word cache.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/status.h"

namespace kite {

// Hash and equality that let maps keyed by std::string be searched with a std::string_view.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view text) const { return std::hash<std::string_view>()(text); }
};
using TokenIdMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

class BpeModel {
 public:
  static Result<std::unique_ptr<BpeModel>> from_json(const nlohmann::json& spec);

  // Appends the ids of one pre-tokenized word.
  void tokenize(std::string_view word, std::vector<int32_t>& ids) const;

  std::optional<int32_t> token_to_id(std::string_view token) const;
  const std::string* id_to_token(int32_t id) const;
  // Number of entries in the vocabulary (what the Rust library calls the model's vocab size).
  size_t vocab_entries() const { return vocab_.size(); }
  const TokenIdMap& vocab() const { return vocab_; }

 private:
  struct Merge {
    uint32_t rank;
    int32_t new_id;
  };
  // Words cached with their ids; a few shards keep threads that encode at once from queuing.
  struct CacheShard {
    std::mutex mutex;
    std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> words;
  };
  static constexpr size_t kCacheShards = 16;
  static constexpr size_t kCacheWordsPerShard = 8192;
  static constexpr size_t kMaxCachedWordBytes = 256;

  BpeModel() = default;
  void merge_word(std::string_view word, std::vector<int32_t>& ids) const;
  const Merge* find_merge(int32_t left, int32_t right) const;

  TokenIdMap vocab_;
  std::vector<const std::string*> id_to_token_;  // nullptr for ids the vocabulary skips
  std::unordered_map<uint64_t, Merge> merges_;
  std::optional<int32_t> unk_id_;
  std::string continuing_subword_prefix_;
  std::string end_of_word_suffix_;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  std::array<int32_t, 256> byte_ids_{};  // id of "<0xNN>" per byte, -1 when missing
  mutable std::unique_ptr<CacheShard[]> cache_ = std::make_unique<CacheShard[]>(kCacheShards);
};

}  // namespace kite
