// The KV cache block manager: all-or-nothing reservations, prefix reuse of full blocks (and its
// refusal on hash collisions), cached blocks evicted in LRU order, and the bookkeeping invariants
// under random operations with a simulated cache checking that shared blocks hold the right tokens.
#include "runtime/kv_cache_manager.h"

#include <gtest/gtest.h>

#include <map>
#include <numeric>
#include <random>

namespace kite {
namespace {

KvCacheManagerConfig config(int64_t num_blocks, int64_t block_size, bool reuse = true) {
  KvCacheManagerConfig result;
  result.num_blocks = num_blocks;
  result.block_size = block_size;
  result.enable_prefix_reuse = reuse;
  return result;
}

// `count` consecutive token ids from `first`.
std::vector<int32_t> run_of(int32_t first, size_t count) {
  std::vector<int32_t> tokens(count);
  std::iota(tokens.begin(), tokens.end(), first);
  return tokens;
}

std::vector<int32_t> concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

::testing::AssertionResult consistent(const KvCacheManager& kv) {
  const Status status = kv.check_invariants();
  if (status.is_ok()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << status.message();
}

// Adds a sequence covering its whole prompt and commits the whole prompt.
void add_and_compute(KvCacheManager& kv, int64_t id, const std::vector<int32_t>& prompt) {
  const std::optional<int64_t> reused = kv.add_sequence(id, prompt, int64_t(prompt.size()));
  ASSERT_TRUE(reused.has_value());
  kv.commit(id, std::span<const int32_t>(prompt).subspan(size_t(*reused)));
  EXPECT_EQ(kv.num_tokens(id), int64_t(prompt.size()));
}

TEST(KvCacheManager, ReserveIsAllOrNothing) {
  KvCacheManager kv(config(4, 4));
  const std::vector<int32_t> prompt = run_of(1, 6);
  ASSERT_EQ(kv.add_sequence(1, prompt, 6), 0);
  EXPECT_EQ(kv.block_table(1), (std::vector<int32_t>{0, 1}));  // lowest first
  EXPECT_EQ(kv.num_tokens(1), 0);
  EXPECT_EQ(kv.blocks_needed(1, 8), 0);
  EXPECT_EQ(kv.blocks_needed(1, 17), 3);
  EXPECT_FALSE(kv.can_reserve(1, 17));
  EXPECT_FALSE(kv.reserve(1, 17));
  EXPECT_EQ(kv.block_table(1).size(), 2u);
  EXPECT_EQ(kv.stats().allocated_blocks, 2);
  EXPECT_EQ(kv.stats().free_blocks, 2);
  EXPECT_TRUE(kv.can_reserve(1, 16));
  EXPECT_TRUE(kv.reserve(1, 16));
  EXPECT_EQ(kv.block_table(1), (std::vector<int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(kv.add_sequence(2, prompt, 1), std::nullopt);
  EXPECT_FALSE(kv.has_sequence(2));
  EXPECT_TRUE(consistent(kv));
  kv.free_sequence(1);
  const KvCacheStats stats = kv.stats();
  EXPECT_EQ(stats.used_blocks, 0);
  EXPECT_EQ(stats.free_blocks, 4);
  EXPECT_EQ(stats.cached_blocks, 0);  // nothing was committed
  EXPECT_TRUE(consistent(kv));
}

TEST(KvCacheManager, SharesTheFullBlocksOfACommonPrefix) {
  KvCacheManager kv(config(16, 4));
  const std::vector<int32_t> prompt = run_of(1, 10);
  ASSERT_NO_FATAL_FAILURE(add_and_compute(kv, 1, prompt));  // blocks 0, 1 full; 2 partial
  EXPECT_EQ(kv.reusable_tokens(prompt), 8);
  // The whole prompt in full blocks: the last block stays to compute, for the logits.
  EXPECT_EQ(kv.reusable_tokens(run_of(1, 8)), 4);
  EXPECT_EQ(kv.reusable_tokens(run_of(1, 9)), 8);
  EXPECT_EQ(kv.reusable_tokens(concat(run_of(1, 4), run_of(50, 6))), 4);
  EXPECT_EQ(kv.reusable_tokens(run_of(2, 10)), 0);

  ASSERT_EQ(kv.add_sequence(2, concat(prompt, {77}), 11), 8);
  EXPECT_EQ(kv.num_tokens(2), 8);
  const std::vector<int32_t>& first = kv.block_table(1);
  const std::vector<int32_t>& second = kv.block_table(2);
  ASSERT_EQ(second.size(), 3u);
  EXPECT_EQ(second[0], first[0]);
  EXPECT_EQ(second[1], first[1]);
  EXPECT_NE(second[2], first[2]);
  KvCacheStats stats = kv.stats();
  EXPECT_EQ(stats.reused_blocks, 2);
  EXPECT_EQ(stats.reused_tokens, 8);
  EXPECT_EQ(stats.used_blocks, 4);
  EXPECT_EQ(stats.allocated_blocks, 4);
  EXPECT_TRUE(consistent(kv));

  // The shared blocks stay in use until both sequences are gone.
  kv.free_sequence(1);
  EXPECT_EQ(kv.stats().used_blocks, 3);
  EXPECT_EQ(kv.stats().cached_blocks, 0);
  kv.commit(2, std::vector<int32_t>{9, 10, 77});
  kv.free_sequence(2);
  stats = kv.stats();
  EXPECT_EQ(stats.used_blocks, 0);
  EXPECT_EQ(stats.free_blocks, 16);
  EXPECT_EQ(stats.cached_blocks, 2);  // the partial blocks went to the free list
  EXPECT_TRUE(consistent(kv));
}

TEST(KvCacheManager, SequencesComputingTheSamePrefixTogetherRegisterItOnce) {
  KvCacheManager kv(config(16, 2));
  // Neither has anything cached when added: both compute [1, 2].
  ASSERT_EQ(kv.add_sequence(1, std::vector<int32_t>{1, 2, 9}, 3), 0);
  ASSERT_EQ(kv.add_sequence(2, std::vector<int32_t>{1, 2, 3, 4, 9}, 5), 0);
  kv.commit(1, std::vector<int32_t>{1, 2, 9});
  kv.commit(2, std::vector<int32_t>{1, 2, 3, 4, 9});
  // [1, 2] comes from sequence 1, [3, 4] from sequence 2, chained through sequence 1's copy.
  ASSERT_EQ(kv.add_sequence(3, std::vector<int32_t>{1, 2, 3, 4, 5}, 5), 4);
  EXPECT_EQ(kv.block_table(3)[0], kv.block_table(1)[0]);
  EXPECT_EQ(kv.block_table(3)[1], kv.block_table(2)[1]);
  kv.free_sequence(1);
  kv.free_sequence(2);
  kv.free_sequence(3);
  // Sequence 2's private copy of [1, 2] is not cached.
  EXPECT_EQ(kv.stats().cached_blocks, 2);
  EXPECT_TRUE(consistent(kv));
}

// Ignores the predecessor: a block's hash depends on its own tokens only.
uint64_t tokens_only_hash(uint64_t, std::span<const int32_t> tokens) {
  return default_block_hash(kRootBlockHash, tokens);
}

TEST(KvCacheManager, ReuseNeedsEveryEarlierBlockEqual) {
  KvCacheManagerConfig options = config(16, 2);
  options.block_hash = tokens_only_hash;
  KvCacheManager kv(options);
  ASSERT_NO_FATAL_FAILURE(add_and_compute(kv, 1, {1, 2, 3, 4, 9}));
  ASSERT_NO_FATAL_FAILURE(add_and_compute(kv, 2, {7, 7, 3, 4, 9}));
  // [3, 4] hashes like sequence 1's second block, but follows [7, 7]: its keys and values differ.
  EXPECT_EQ(kv.reusable_tokens(std::vector<int32_t>{7, 7, 3, 4, 9}), 2);
  EXPECT_EQ(kv.reusable_tokens(std::vector<int32_t>{1, 2, 3, 4, 9}), 4);
  ASSERT_EQ(kv.add_sequence(3, std::vector<int32_t>{7, 7, 3, 4, 9}, 5), 2);
  EXPECT_NE(kv.block_table(3)[1], kv.block_table(1)[1]);
  EXPECT_TRUE(consistent(kv));
}

uint64_t constant_hash(uint64_t, std::span<const int32_t>) {
  return 42;
}

TEST(KvCacheManager, HashCollisionsNeverShareBlocks) {
  KvCacheManagerConfig options = config(16, 2);
  options.block_hash = constant_hash;
  KvCacheManager kv(options);
  ASSERT_NO_FATAL_FAILURE(add_and_compute(kv, 1, {1, 2, 3, 4, 9}));
  EXPECT_EQ(kv.reusable_tokens(std::vector<int32_t>{5, 6, 3, 4, 9}), 0);
  EXPECT_EQ(kv.reusable_tokens(std::vector<int32_t>{1, 2, 5, 6, 9}), 2);
  // Only [1, 2] got the hash; [3, 4] collided with it and stays private.
  EXPECT_EQ(kv.reusable_tokens(std::vector<int32_t>{1, 2, 3, 4, 9}), 2);
  ASSERT_NO_FATAL_FAILURE(add_and_compute(kv, 2, {5, 6, 3, 4, 9}));
  kv.free_sequence(1);
  kv.free_sequence(2);
  EXPECT_EQ(kv.stats().cached_blocks, 1);
  EXPECT_TRUE(consistent(kv));
}

TEST(KvCacheManager, EvictsCachedBlocksLeastRecentlyUsedFirst) {
  KvCacheManager kv(config(6, 2));
  const std::vector<int32_t> x = {10, 11, 12}, y = {20, 21, 22}, z = {30, 31, 32};
  ASSERT_NO_FATAL_FAILURE(add_and_compute(kv, 1, x));
  ASSERT_NO_FATAL_FAILURE(add_and_compute(kv, 2, y));
  ASSERT_NO_FATAL_FAILURE(add_and_compute(kv, 3, z));
  EXPECT_EQ(kv.stats().free_blocks, 0);
  kv.free_sequence(1);
  kv.free_sequence(2);
  kv.free_sequence(3);
  // The full first blocks stay cached; the partial second ones are free.
  EXPECT_EQ(kv.stats().cached_blocks, 3);
  EXPECT_EQ(kv.stats().free_blocks, 6);
  // Using y's block makes it the most recent: the order is now x, z, y.
  ASSERT_EQ(kv.add_sequence(4, y, 3), 2);
  kv.free_sequence(4);
  // Five fresh blocks: the three free ones, then two evictions.
  ASSERT_EQ(kv.add_sequence(5, run_of(100, 10), 10), 0);
  EXPECT_EQ(kv.stats().evicted_blocks, 2);
  EXPECT_EQ(kv.stats().allocated_blocks, 6 + 1 + 5);
  EXPECT_EQ(kv.reusable_tokens(x), 0);
  EXPECT_EQ(kv.reusable_tokens(z), 0);
  EXPECT_EQ(kv.reusable_tokens(y), 2);
  EXPECT_TRUE(consistent(kv));
}

TEST(KvCacheManager, EvictsASequencesTailBeforeItsHead) {
  KvCacheManager kv(config(3, 2));
  const std::vector<int32_t> prompt = {1, 2, 3, 4, 5};
  ASSERT_NO_FATAL_FAILURE(add_and_compute(kv, 1, prompt));
  kv.free_sequence(1);
  ASSERT_EQ(kv.add_sequence(2, std::vector<int32_t>{7, 8, 9, 9}, 4), 0);  // free block + 1 eviction
  EXPECT_EQ(kv.stats().evicted_blocks, 1);
  EXPECT_EQ(kv.reusable_tokens(prompt), 2);
  EXPECT_TRUE(consistent(kv));
}

TEST(KvCacheManager, RevivingACachedBlockTakesAFreeBlock) {
  KvCacheManager kv(config(2, 2));
  const std::vector<int32_t> prompt = {1, 2, 3};
  ASSERT_NO_FATAL_FAILURE(add_and_compute(kv, 1, prompt));
  kv.free_sequence(1);  // [1, 2] cached, the other block free
  ASSERT_EQ(kv.add_sequence(2, std::vector<int32_t>{7, 8}, 2), 0);
  EXPECT_EQ(kv.num_free_blocks(), 1);
  // Sharing [1, 2] takes the cached block off the free count; the third token needs another.
  EXPECT_EQ(kv.blocks_needed_to_add(prompt, 3), 2);
  EXPECT_EQ(kv.add_sequence(3, prompt, 3), std::nullopt);
  EXPECT_EQ(kv.stats().evicted_blocks, 0);
  EXPECT_EQ(kv.reusable_tokens(prompt), 2);
  EXPECT_EQ(kv.blocks_needed_to_add(prompt, 2), 1);
  ASSERT_EQ(kv.add_sequence(3, prompt, 2), 2);
  EXPECT_EQ(kv.num_free_blocks(), 0);
  EXPECT_FALSE(kv.can_reserve(3, 3));
  EXPECT_TRUE(consistent(kv));
}

TEST(KvCacheManager, PrefixReuseCanBeTurnedOff) {
  KvCacheManager kv(config(8, 2, /*reuse=*/false));
  const std::vector<int32_t> prompt = {1, 2, 3, 4, 5};
  ASSERT_NO_FATAL_FAILURE(add_and_compute(kv, 1, prompt));
  EXPECT_EQ(kv.reusable_tokens(prompt), 0);
  ASSERT_EQ(kv.add_sequence(2, prompt, 5), 0);
  kv.free_sequence(1);
  kv.free_sequence(2);
  EXPECT_EQ(kv.stats().cached_blocks, 0);
  EXPECT_EQ(kv.stats().reused_blocks, 0);
  EXPECT_TRUE(consistent(kv));
}

// Random adds, reservations, commits and frees over prompts with common prefixes. A simulated
// cache (one token per slot) checks that every shared block holds the prompt's tokens.
TEST(KvCacheManager, RandomOperationsKeepTheInvariants) {
  for (bool reuse : {true, false}) {
    std::mt19937 random(reuse ? 7 : 8);
    auto uniform = [&random](int64_t low, int64_t high) {
      return std::uniform_int_distribution<int64_t>(low, high)(random);
    };
    const int64_t num_blocks = 24, block_size = 3;
    KvCacheManager kv(config(num_blocks, block_size, reuse));
    std::vector<int32_t> slots(size_t(num_blocks * block_size), -1);
    const std::vector<std::vector<int32_t>> prefixes = {run_of(1, 9), run_of(100, 7), {5, 5, 5}};
    std::map<int64_t, std::vector<int32_t>> live;  // id -> all the tokens it will commit
    int64_t next_id = 0, reuses = 0;
    for (int operation = 0; operation < 4000; ++operation) {
      const int64_t kind = uniform(0, 9);
      if (kind < 3 || live.empty()) {
        std::vector<int32_t> tokens = prefixes[size_t(uniform(0, 2))];
        tokens.resize(size_t(uniform(0, int64_t(tokens.size()))));
        for (int64_t i = uniform(1, 8); i > 0; --i) tokens.push_back(int32_t(uniform(0, 3)));
        const int64_t reusable = kv.reusable_tokens(tokens);
        const int64_t reserve = uniform(reusable + 1, int64_t(tokens.size()));
        const bool fits = kv.blocks_needed_to_add(tokens, reserve) <= kv.num_free_blocks();
        const std::optional<int64_t> reused = kv.add_sequence(next_id, tokens, reserve);
        ASSERT_EQ(reused.has_value(), fits);
        if (reused) {
          ASSERT_EQ(*reused, reusable);
          reuses += *reused > 0;
          const std::vector<int32_t>& table = kv.block_table(next_id);
          for (int64_t p = 0; p < *reused; ++p) {
            ASSERT_EQ(slots[size_t(table[size_t(p / block_size)] * block_size + p % block_size)],
                      tokens[size_t(p)]);
          }
          live[next_id] = tokens;
        }
        ++next_id;
      } else {
        auto chosen = live.begin();
        std::advance(chosen, uniform(0, int64_t(live.size()) - 1));
        const int64_t id = chosen->first;
        const std::vector<int32_t>& tokens = chosen->second;
        if (kind < 6) {
          const int64_t target = kv.num_tokens(id) + uniform(1, 6);
          const std::vector<int32_t> table = kv.block_table(id);
          const bool fits = kv.can_reserve(id, target);
          ASSERT_EQ(kv.reserve(id, target), fits);
          if (!fits) {
            ASSERT_EQ(kv.block_table(id), table);
          }
        } else if (kind < 9) {
          const int64_t first = kv.num_tokens(id);
          const int64_t room = int64_t(kv.block_table(id).size()) * block_size - first;
          const int64_t count = std::min(room, int64_t(tokens.size()) - first);
          if (count <= 0) continue;
          const std::vector<int32_t>& table = kv.block_table(id);
          for (int64_t p = first; p < first + count; ++p) {
            slots[size_t(table[size_t(p / block_size)] * block_size + p % block_size)] =
                tokens[size_t(p)];
          }
          kv.commit(id, std::span<const int32_t>(tokens).subspan(size_t(first), size_t(count)));
        } else {
          kv.free_sequence(id);
          live.erase(chosen);
        }
      }
      ASSERT_TRUE(consistent(kv)) << "after operation " << operation;
      const KvCacheStats stats = kv.stats();
      ASSERT_EQ(stats.free_blocks + stats.used_blocks, num_blocks);
    }
    EXPECT_EQ(reuses > 0, reuse);
    for (const auto& [id, tokens] : live) kv.free_sequence(id);
    EXPECT_EQ(kv.stats().used_blocks, 0);
    EXPECT_EQ(kv.stats().free_blocks, num_blocks);
    EXPECT_TRUE(consistent(kv));
  }
}

}  // namespace
}  // namespace kite
