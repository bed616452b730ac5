// Reference-counted KV cache blocks with prefix reuse through chained block hashes.
#include "runtime/kv_cache_manager.h"

#include <algorithm>
#include <string>
#include <utility>

namespace kite {
namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

uint64_t default_block_hash(uint64_t parent_hash, std::span<const int32_t> tokens) {
  uint64_t hash = parent_hash;
  for (int32_t token : tokens) hash = splitmix64(hash ^ uint32_t(token));
  return hash;
}

KvCacheManager::KvCacheManager(const KvCacheManagerConfig& config) : config_(config) {
  KITE_CHECK(config.num_blocks > 0 && config.num_blocks <= INT32_MAX);
  KITE_CHECK(config.block_size > 0);
  KITE_CHECK(config.block_hash != nullptr);
  blocks_.resize(size_t(config.num_blocks));
  // Handed out lowest first.
  for (int64_t block = config.num_blocks - 1; block >= 0; --block) free_.push_back(int32_t(block));
  counters_.total_blocks = config.num_blocks;
}

KvCacheStats KvCacheManager::stats() const {
  KvCacheStats stats = counters_;
  stats.free_blocks = num_free_blocks();
  stats.used_blocks = stats.total_blocks - stats.free_blocks;
  stats.cached_blocks = int64_t(evictable_.size());
  return stats;
}

KvCacheManager::PrefixMatch KvCacheManager::match_prefix(std::span<const int32_t> prompt) const {
  PrefixMatch match;
  if (!config_.enable_prefix_reuse || prompt.empty()) return match;
  const size_t block_size = size_t(config_.block_size);
  const size_t max_blocks = (prompt.size() - 1) / block_size;  // the last token stays to compute
  for (size_t i = 0; i < max_blocks; ++i) {
    const std::span<const int32_t> tokens = prompt.subspan(i * block_size, block_size);
    const uint64_t hash = config_.block_hash(match.chain_hash, tokens);
    const auto found = registered_.find(hash);
    if (found == registered_.end()) break;
    const Block& block = blocks_[size_t(found->second)];
    if (block.parent_serial != match.chain_serial || !std::ranges::equal(block.tokens, tokens)) {
      break;  // a hash collision
    }
    match.blocks.push_back(found->second);
    match.chain_hash = hash;
    match.chain_serial = block.serial;
  }
  return match;
}

int64_t KvCacheManager::reusable_tokens(std::span<const int32_t> prompt) const {
  return int64_t(match_prefix(prompt).blocks.size()) * config_.block_size;
}

int64_t KvCacheManager::blocks_needed_to_add(std::span<const int32_t> prompt,
                                             int64_t num_tokens) const {
  const PrefixMatch match = match_prefix(prompt);
  const int64_t revived = std::ranges::count_if(
      match.blocks, [this](int32_t block) { return blocks_[size_t(block)].ref_count == 0; });
  return revived +
         std::max<int64_t>(0, blocks_for_tokens(num_tokens) - int64_t(match.blocks.size()));
}

std::optional<int64_t> KvCacheManager::add_sequence(int64_t id, std::span<const int32_t> prompt,
                                                    int64_t num_tokens) {
  KITE_CHECK(!has_sequence(id));
  if (blocks_needed_to_add(prompt, num_tokens) > num_free_blocks()) return std::nullopt;
  PrefixMatch match = match_prefix(prompt);
  // Revive the shared blocks first, so that the fresh allocations below cannot evict them.
  for (int32_t block : match.blocks) {
    Block& shared = blocks_[size_t(block)];
    if (shared.ref_count++ == 0) evictable_.erase(shared.lru_position);
  }
  const int64_t reused_blocks = int64_t(match.blocks.size());
  Sequence& added = sequences_[id];
  added.blocks = std::move(match.blocks);
  added.num_tokens = reused_blocks * config_.block_size;
  added.chain_hash = match.chain_hash;
  added.chain_serial = match.chain_serial;
  while (int64_t(added.blocks.size()) < blocks_for_tokens(num_tokens)) {
    added.blocks.push_back(allocate_block());
  }
  counters_.reused_blocks += reused_blocks;
  counters_.reused_tokens += added.num_tokens;
  return added.num_tokens;
}

const KvCacheManager::Sequence& KvCacheManager::sequence(int64_t id) const {
  const auto found = sequences_.find(id);
  KITE_CHECK(found != sequences_.end());
  return found->second;
}

KvCacheManager::Sequence& KvCacheManager::sequence(int64_t id) {
  return const_cast<Sequence&>(std::as_const(*this).sequence(id));
}

int64_t KvCacheManager::blocks_needed(int64_t id, int64_t num_tokens) const {
  return std::max<int64_t>(0, blocks_for_tokens(num_tokens) - int64_t(sequence(id).blocks.size()));
}

bool KvCacheManager::reserve(int64_t id, int64_t num_tokens) {
  const int64_t needed = blocks_needed(id, num_tokens);
  if (needed > num_free_blocks()) return false;
  Sequence& grown = sequence(id);
  for (int64_t i = 0; i < needed; ++i) grown.blocks.push_back(allocate_block());
  return true;
}

int32_t KvCacheManager::allocate_block() {
  int32_t block;
  if (!free_.empty()) {
    block = free_.back();
    free_.pop_back();
  } else {
    KITE_CHECK(!evictable_.empty());
    block = evictable_.front();
    evictable_.pop_front();
    unregister(block);
    ++counters_.evicted_blocks;
  }
  blocks_[size_t(block)].ref_count = 1;
  ++counters_.allocated_blocks;
  return block;
}

void KvCacheManager::unregister(int32_t block) {
  Block& evicted = blocks_[size_t(block)];
  const auto found = registered_.find(evicted.hash);
  KITE_CHECK(found != registered_.end() && found->second == block);
  registered_.erase(found);
  evicted.serial = 0;
  evicted.tokens.clear();
}

void KvCacheManager::commit(int64_t id, std::span<const int32_t> tokens) {
  Sequence& committed = sequence(id);
  const int64_t block_size = config_.block_size;
  KITE_CHECK(committed.num_tokens + int64_t(tokens.size()) <=
             int64_t(committed.blocks.size()) * block_size);
  if (!config_.enable_prefix_reuse) {
    committed.num_tokens += int64_t(tokens.size());
    return;
  }
  for (int32_t token : tokens) {
    committed.partial_tokens.push_back(token);
    ++committed.num_tokens;
    if (int64_t(committed.partial_tokens.size()) == block_size) {
      register_block(committed, committed.blocks[size_t(committed.num_tokens / block_size - 1)],
                     committed.partial_tokens);
      committed.partial_tokens.clear();
    }
  }
}

void KvCacheManager::register_block(Sequence& owner, int32_t block,
                                    std::span<const int32_t> tokens) {
  const uint64_t hash = config_.block_hash(owner.chain_hash, tokens);
  owner.chain_hash = hash;
  if (owner.chain_serial == kNoSerial) return;  // nothing after an unregistrable block matches
  const auto [found, inserted] = registered_.try_emplace(hash, block);
  if (!inserted) {
    // Either the same prefix, registered first by a sequence that computed it at the same time
    // (this copy stays private and the chain continues through the registered one), or a
    // collision, which ends what this sequence can register.
    const Block& existing = blocks_[size_t(found->second)];
    const bool same =
        existing.parent_serial == owner.chain_serial && std::ranges::equal(existing.tokens, tokens);
    owner.chain_serial = same ? existing.serial : kNoSerial;
    return;
  }
  Block& registered = blocks_[size_t(block)];
  KITE_CHECK(registered.serial == 0);
  registered.serial = next_serial_++;
  registered.hash = hash;
  registered.parent_serial = owner.chain_serial;
  registered.tokens.assign(tokens.begin(), tokens.end());
  owner.chain_serial = registered.serial;
}

void KvCacheManager::free_sequence(int64_t id) {
  const auto found = sequences_.find(id);
  KITE_CHECK(found != sequences_.end());
  const std::vector<int32_t>& table = found->second.blocks;
  for (auto block = table.rbegin(); block != table.rend(); ++block) {
    Block& released = blocks_[size_t(*block)];
    KITE_CHECK(released.ref_count > 0);
    if (--released.ref_count > 0) continue;
    if (released.serial != 0) {
      released.lru_position = evictable_.insert(evictable_.end(), *block);
    } else {
      free_.push_back(*block);
    }
  }
  sequences_.erase(found);
}

Status KvCacheManager::check_invariants() const {
  auto fail = [](int32_t block, const std::string& what) {
    return internal_error("KV cache block " + std::to_string(block) + ": " + what);
  };
  const size_t num_blocks = blocks_.size();
  std::vector<int> places(num_blocks, 0);
  std::vector<int32_t> references(num_blocks, 0);
  for (int32_t block : free_) {
    const Block& b = blocks_[size_t(block)];
    if (b.ref_count != 0 || b.serial != 0) return fail(block, "on the free list but in use");
    ++places[size_t(block)];
  }
  for (auto position = evictable_.begin(); position != evictable_.end(); ++position) {
    const Block& b = blocks_[size_t(*position)];
    if (b.ref_count != 0 || b.serial == 0 || b.lru_position != position) {
      return fail(*position, "cached but referenced, unregistered or misplaced");
    }
    ++places[size_t(*position)];
  }
  for (const auto& [id, s] : sequences_) {
    std::vector<int32_t> sorted = s.blocks;
    std::ranges::sort(sorted);
    if (std::ranges::adjacent_find(sorted) != sorted.end()) {
      return internal_error("sequence " + std::to_string(id) + " holds a block twice");
    }
    if (s.num_tokens > int64_t(s.blocks.size()) * config_.block_size) {
      return internal_error("sequence " + std::to_string(id) +
                            " stores more tokens than its table");
    }
    for (int32_t block : s.blocks) ++references[size_t(block)];
  }
  size_t registered = 0;
  for (size_t block = 0; block < num_blocks; ++block) {
    const Block& b = blocks_[block];
    if (b.ref_count < 0) return fail(int32_t(block), "negative reference count");
    if (b.ref_count != references[block]) {
      return fail(int32_t(block), "reference count " + std::to_string(b.ref_count) + " but " +
                                      std::to_string(references[block]) + " tables hold it");
    }
    if (b.ref_count > 0) ++places[block];
    if (places[block] != 1) {
      return fail(int32_t(block), "in " + std::to_string(places[block]) + " places");
    }
    if (b.serial != 0) {
      ++registered;
      const auto found = registered_.find(b.hash);
      if (found == registered_.end() || found->second != int32_t(block)) {
        return fail(int32_t(block), "registered but missing from the hash map");
      }
    }
  }
  if (registered != registered_.size()) {
    return internal_error("the hash map holds unregistered blocks");
  }
  return Status::ok();
}

}  // namespace kite
