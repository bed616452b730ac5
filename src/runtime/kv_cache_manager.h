// The bookkeeping of the paged KV cache: which blocks each sequence's keys and values live in, and
// which full blocks can be shared between sequences with the same prefix. Block ids only; the
// memory is KvCache's (engine.h). vLLM's block manager / TensorRT-LLM's KVCacheManager.
#pragma once

#include <cstdint>
#include <list>
#include <optional>
#include <span>
#include <unordered_map>
#include <vector>

#include "core/status.h"

namespace kite {

// A full block's hash: its tokens chained with the hash of the block before it (`parent_hash`;
// kRootBlockHash for a sequence's first block), so equal hashes mean equal prefixes, barring
// collisions.
using BlockHasher = uint64_t (*)(uint64_t parent_hash, std::span<const int32_t> tokens);
inline constexpr uint64_t kRootBlockHash = 0x9e3779b97f4a7c15ull;
uint64_t default_block_hash(uint64_t parent_hash, std::span<const int32_t> tokens);

struct KvCacheManagerConfig {
  int64_t num_blocks = 0;
  int64_t block_size = 0;  // tokens per block
  // Share full blocks of equal prefixes between sequences (TensorRT-LLM's enable_block_reuse,
  // vLLM's enable_prefix_caching).
  bool enable_prefix_reuse = true;
  // Replaceable so that tests can force hash collisions.
  BlockHasher block_hash = default_block_hash;
};

struct KvCacheStats {
  int64_t total_blocks = 0;
  int64_t free_blocks = 0;    // not referenced by any sequence: never filled, or cached
  int64_t used_blocks = 0;    // referenced by at least one sequence
  int64_t cached_blocks = 0;  // free blocks still holding a reusable full block (evictable)
  // Cumulative counts.
  int64_t reused_blocks = 0;     // blocks a new sequence shared instead of computing
  int64_t reused_tokens = 0;     // the prompt tokens in them
  int64_t allocated_blocks = 0;  // fresh blocks handed out (from the free list or by eviction)
  int64_t evicted_blocks = 0;    // cached blocks dropped to hand out a fresh block
};

// Blocks are reference counted: a block is referenced once by every sequence whose table holds
// it. A full block whose tokens are committed is registered under its chained hash; a new sequence
// whose prompt starts with the same full blocks shares them (reference +1) and starts computing
// after them. A block whose count drops to zero returns to the free list, unless it is registered:
// then it stays cached, evictable in least-recently-used order, and is evicted only when a fresh
// block is needed and the free list is empty. A sequence's blocks are released tail first, so its
// tail is evicted before its head, which more sequences are likely to share.
//
// The hash map is a hint, never trusted alone: a cached block is reused only when its tokens equal
// the prompt's and its predecessor is the block just matched (each registration gets a serial
// number that is never reused, so a recycled block id cannot pass for its old content). By
// induction the whole prefix is equal; a hash collision can cost a reuse, never give a wrong one.
class KvCacheManager {
 public:
  explicit KvCacheManager(const KvCacheManagerConfig& config);

  const KvCacheManagerConfig& config() const { return config_; }
  int64_t block_size() const { return config_.block_size; }
  // Free list plus cached blocks: what fresh allocations can draw from.
  int64_t num_free_blocks() const { return int64_t(free_.size() + evictable_.size()); }
  KvCacheStats stats() const;

  // Blocks that a table of `num_tokens` tokens holds.
  int64_t blocks_for_tokens(int64_t num_tokens) const {
    return (num_tokens + config_.block_size - 1) / config_.block_size;
  }

  // Leading tokens of `prompt` that cached full blocks hold, at most prompt.size() - 1 so that the
  // model still computes the last token and produces its logits. 0 when reuse is off.
  int64_t reusable_tokens(std::span<const int32_t> prompt) const;
  // Free blocks that add_sequence(id, prompt, num_tokens) would take: fresh blocks plus cached
  // ones it revives (a shared block still referenced by another sequence costs none).
  int64_t blocks_needed_to_add(std::span<const int32_t> prompt, int64_t num_tokens) const;
  // Starts sequence `id` (not present) sharing the cached blocks of `prompt`'s longest reusable
  // prefix, and reserves its table up to `num_tokens` tokens (at least the shared ones). Returns
  // the reused prompt tokens, whose KV counts as stored; nullopt, with nothing changed, when the
  // free blocks do not suffice.
  std::optional<int64_t> add_sequence(int64_t id, std::span<const int32_t> prompt,
                                      int64_t num_tokens);

  // Fresh blocks sequence `id` needs for its table to cover `num_tokens` tokens (0 if it does).
  int64_t blocks_needed(int64_t id, int64_t num_tokens) const;
  bool can_reserve(int64_t id, int64_t num_tokens) const {
    return blocks_needed(id, num_tokens) <= num_free_blocks();
  }
  // Grows the table to cover `num_tokens` tokens; false, with nothing changed, when the free blocks
  // do not suffice.
  bool reserve(int64_t id, int64_t num_tokens);
  // Records that the KV of `tokens`, the sequence's next ones, is now stored (they must fit in the
  // reserved table). Each block this fills is registered for reuse.
  void commit(int64_t id, std::span<const int32_t> tokens);
  // Releases the sequence's blocks (tail first) and forgets it.
  void free_sequence(int64_t id);

  bool has_sequence(int64_t id) const { return sequences_.count(id) > 0; }
  const std::vector<int32_t>& block_table(int64_t id) const { return sequence(id).blocks; }
  // Tokens whose KV is stored: reused plus committed.
  int64_t num_tokens(int64_t id) const { return sequence(id).num_tokens; }
  int64_t num_sequences() const { return int64_t(sequences_.size()); }

  // Checks the bookkeeping: every block is in exactly one place (free list, cached, referenced),
  // reference counts equal the table entries, the hash map points at registered blocks only.
  // For tests; O(blocks + table entries).
  Status check_invariants() const;

 private:
  static constexpr uint64_t kNoSerial = ~uint64_t(0);  // a prefix that cannot be registered

  struct Block {
    int32_t ref_count = 0;
    // Registration, for a full block with reusable content (serial != 0).
    uint64_t serial = 0;
    uint64_t hash = 0;
    uint64_t parent_serial = 0;  // 0: the sequence's first block
    std::vector<int32_t> tokens;
    std::list<int32_t>::iterator lru_position;  // valid while cached (registered, ref_count 0)
  };
  struct Sequence {
    std::vector<int32_t> blocks;
    int64_t num_tokens = 0;
    std::vector<int32_t> partial_tokens;  // committed tokens of the last, not yet full block
    // The chain up to the last full block: its hash and the serial of the registration that holds
    // the same prefix (this sequence's block or a duplicate registered first).
    uint64_t chain_hash = kRootBlockHash;
    uint64_t chain_serial = 0;
  };
  struct PrefixMatch {
    std::vector<int32_t> blocks;
    uint64_t chain_hash = kRootBlockHash;
    uint64_t chain_serial = 0;
  };

  PrefixMatch match_prefix(std::span<const int32_t> prompt) const;
  const Sequence& sequence(int64_t id) const;
  Sequence& sequence(int64_t id);
  int32_t allocate_block();
  void register_block(Sequence& sequence, int32_t block, std::span<const int32_t> tokens);
  void unregister(int32_t block);

  KvCacheManagerConfig config_;
  std::vector<Block> blocks_;
  std::vector<int32_t> free_;     // never-filled or unregistered blocks, popped from the back
  std::list<int32_t> evictable_;  // cached blocks, least recently used first
  std::unordered_map<uint64_t, int32_t> registered_;  // hash -> block
  std::unordered_map<int64_t, Sequence> sequences_;
  uint64_t next_serial_ = 1;
  KvCacheStats counters_;  // the cumulative fields
};

}  // namespace kite
