// The BPE model of tokenizer.json ("model": {"type": "BPE"}): merges pairs of symbols by rank,
// like the Rust library's Word::merge_all, with byte fallback, unknown-token handling, the
// continuing-subword prefix / end-of-word suffix, ignore_merges, and a per-word cache.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
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
  // Words already merged, with their ids: an open-addressing table whose keys and ids live in
  // two arenas, so that a lookup touches few cache lines (the cache is hit for most words).
  class WordCache {
   public:
    // Appends the ids of `word` and returns true when it is cached. `hash` is never 0.
    bool find(uint64_t hash, std::string_view word, std::vector<int32_t>& ids) const;
    void insert(uint64_t hash, std::string_view word, std::span<const int32_t> word_ids);
    size_t size() const { return size_; }

   private:
    struct Slot {
      uint64_t hash = 0;  // 0: empty
      uint32_t key_offset = 0;
      uint32_t key_length = 0;
      uint32_t ids_offset = 0;
      uint32_t ids_count = 0;
    };
    void grow();
    std::vector<Slot> slots_;  // a power of two in size, at most half full
    std::string keys_;
    std::vector<int32_t> ids_;
    size_t size_ = 0;
  };
  // A few shards, each with its lock, keep threads that encode at once from queuing.
  struct CacheShard {
    std::mutex mutex;
    WordCache words;
  };
  static constexpr size_t kCacheShards = 16;
  static constexpr size_t kCacheWordsPerShard = 8192;
  static constexpr size_t kMaxCachedWordBytes = 256;

  // Open-addressing table from a pair of ids to its merge: the hot lookup of merge_word.
  class MergeTable {
   public:
    void reserve(size_t entries);
    void insert(uint64_t key, Merge merge);  // replaces an existing entry
    const Merge* find(uint64_t key) const {
      if (slots_.empty()) return nullptr;
      for (size_t slot = hash(key);; slot = (slot + 1) & mask_) {
        if (slots_[slot].key == key) return &slots_[slot].merge;
        if (slots_[slot].key == kEmpty) return nullptr;
      }
    }

   private:
    static constexpr uint64_t kEmpty = ~uint64_t(0);  // ids are never negative
    struct Slot {
      uint64_t key = kEmpty;
      Merge merge{};
    };
    size_t hash(uint64_t key) const { return size_t((key * 0x9E3779B97F4A7C15ull) >> shift_); }
    std::vector<Slot> slots_;
    size_t mask_ = 0;
    int shift_ = 64;
  };

  BpeModel() = default;
  void merge_word(std::string_view word, std::vector<int32_t>& ids) const;
  const Merge* find_merge(int32_t left, int32_t right) const;
  // Id of a word's character when it is a token on its own, or -1.
  int32_t character_id(std::string_view character) const;

  TokenIdMap vocab_;
  std::vector<const std::string*> id_to_token_;  // nullptr for ids the vocabulary skips
  MergeTable merges_;
  // Ids of single-character tokens below U+10000 (-1 when not a token), so that splitting a word
  // into characters needs no string hashing. Empty when affixes change the lookup keys.
  std::vector<int32_t> bmp_character_ids_;
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
