// BPE model (see bpe.h).
#include "tokenizer/bpe.h"

#include <algorithm>
#include <cstdio>

#include "tokenizer/json_fields.h"
#include "tokenizer/unicode.h"

namespace kite {
namespace {

using tokenizer_json::Json;

uint64_t pair_key(int32_t left, int32_t right) {
  return (uint64_t(uint32_t(left)) << 32) | uint32_t(right);
}

// A symbol of the word being merged: a doubly linked list laid out in a vector.
struct Symbol {
  int32_t id;
  int32_t prev;
  int32_t next;
  uint32_t length;  // bytes of the word it covers; 0 once merged into its left neighbour
};

// A candidate merge of the symbol at `position` with its right neighbour. The queue pops the
// lowest rank first and, among equal ranks, the leftmost position.
struct QueuedMerge {
  uint32_t rank;
  int32_t position;
  int32_t new_id;
  bool operator>(const QueuedMerge& other) const {
    if (rank != other.rank) return rank > other.rank;
    return position > other.position;
  }
};

Result<std::pair<std::string, std::string>> parse_merge(const Json& merge, size_t index) {
  const std::string where = "model BPE: merge " + std::to_string(index + 1);
  if (merge.is_string()) {
    const std::string text = merge.get<std::string>();
    const size_t space = text.find(' ');
    if (space == std::string::npos || text.find(' ', space + 1) != std::string::npos) {
      return corrupt(where + " (" + unicode::quoted(text) +
                     ") must be two tokens separated by one space");
    }
    return std::make_pair(text.substr(0, space), text.substr(space + 1));
  }
  if (merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string()) {
    return std::make_pair(merge[0].get<std::string>(), merge[1].get<std::string>());
  }
  return corrupt(where + " must be a string \"a b\" or a pair [\"a\", \"b\"]");
}

}  // namespace

Result<std::unique_ptr<BpeModel>> BpeModel::from_json(const nlohmann::json& spec) {
  using namespace tokenizer_json;
  const std::string where = "model BPE";
  std::unique_ptr<BpeModel> model(new BpeModel());

  if (const Json* dropout = optional_field(spec, "dropout")) {
    if (!dropout->is_number()) return field_error(where, "dropout", "must be a number or null");
    if (dropout->get<double>() != 0.0) {
      return unsupported(where + ": dropout " + dropout->dump() +
                         " makes encoding random; only null or 0 is supported");
    }
  }
  KITE_ASSIGN_OR_RETURN(model->fuse_unk_, bool_field(spec, "fuse_unk", where, false));
  KITE_ASSIGN_OR_RETURN(model->byte_fallback_, bool_field(spec, "byte_fallback", where, false));
  KITE_ASSIGN_OR_RETURN(model->ignore_merges_, bool_field(spec, "ignore_merges", where, false));
  KITE_ASSIGN_OR_RETURN(auto prefix,
                        optional_string_field(spec, "continuing_subword_prefix", where));
  KITE_ASSIGN_OR_RETURN(auto suffix, optional_string_field(spec, "end_of_word_suffix", where));
  model->continuing_subword_prefix_ = prefix.value_or("");
  model->end_of_word_suffix_ = suffix.value_or("");

  KITE_ASSIGN_OR_RETURN(const Json* vocab, required_field(spec, "vocab", where));
  if (!vocab->is_object()) return field_error(where, "vocab", "must be an object {token: id}");
  model->vocab_.reserve(vocab->size());
  int32_t max_id = -1;
  for (const auto& [token, id_value] : vocab->items()) {
    KITE_ASSIGN_OR_RETURN(const int32_t id, to_token_id(id_value, where + " vocab"));
    model->vocab_[token] = id;
    max_id = std::max(max_id, id);
  }
  // Ids index a table; refuse vocabularies whose ids are far sparser than any real one.
  if (max_id >= 0 && size_t(max_id) > 16 * model->vocab_.size() + 65536) {
    return corrupt(where + ": vocab ids go up to " + std::to_string(max_id) + " for only " +
                   std::to_string(model->vocab_.size()) + " tokens");
  }
  model->id_to_token_.assign(size_t(max_id + 1), nullptr);
  for (const auto& [token, id] : model->vocab_) model->id_to_token_[size_t(id)] = &token;

  KITE_ASSIGN_OR_RETURN(auto unk_token, optional_string_field(spec, "unk_token", where));
  if (unk_token) {
    // The Rust library fails on the first unknown character instead; Kite says so up front.
    const auto it = model->vocab_.find(*unk_token);
    if (it == model->vocab_.end()) {
      return corrupt(where + ": unk_token " + unicode::quoted(*unk_token) +
                     " is not in the vocabulary");
    }
    model->unk_id_ = it->second;
  }

  for (int byte = 0; byte < 256; ++byte) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", byte);
    const auto it = model->vocab_.find(std::string_view(name));
    model->byte_ids_[size_t(byte)] = it == model->vocab_.end() ? -1 : it->second;
  }

  KITE_ASSIGN_OR_RETURN(const Json* merges, required_field(spec, "merges", where));
  if (!merges->is_array()) return field_error(where, "merges", "must be a list");
  model->merges_.reserve(merges->size());
  const size_t prefix_length = model->continuing_subword_prefix_.size();
  for (size_t index = 0; index < merges->size(); ++index) {
    KITE_ASSIGN_OR_RETURN(auto pair, parse_merge((*merges)[index], index));
    const auto& [left, right] = pair;
    const auto left_it = model->vocab_.find(left);
    const auto right_it = model->vocab_.find(right);
    if (left_it == model->vocab_.end() || right_it == model->vocab_.end()) {
      return corrupt(where + ": merge " + std::to_string(index + 1) + " uses token " +
                     unicode::quoted(left_it == model->vocab_.end() ? left : right) +
                     " that is not in the vocabulary");
    }
    if (right.size() < prefix_length) {
      return corrupt(where + ": merge " + std::to_string(index + 1) +
                     " has a right token shorter than continuing_subword_prefix");
    }
    const std::string merged = left + right.substr(prefix_length);
    const auto merged_it = model->vocab_.find(merged);
    if (merged_it == model->vocab_.end()) {
      return corrupt(where + ": merge " + std::to_string(index + 1) + " makes token " +
                     unicode::quoted(merged) + " that is not in the vocabulary");
    }
    // A pair listed twice keeps its last rank, like the Rust library's map.
    model->merges_.insert(pair_key(left_it->second, right_it->second),
                          Merge{uint32_t(index), merged_it->second});
  }
  if (model->continuing_subword_prefix_.empty() && model->end_of_word_suffix_.empty()) {
    model->bmp_character_ids_.assign(0x10000, -1);
    for (const auto& [token, id] : model->vocab_) {
      size_t position = 0;
      if (token.empty() || !unicode::is_valid_utf8(token)) continue;
      const char32_t c = unicode::next_character(token, position);
      if (position == token.size() && c < 0x10000) model->bmp_character_ids_[c] = id;
    }
  }
  return model;
}

std::optional<int32_t> BpeModel::token_to_id(std::string_view token) const {
  const auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::id_to_token(int32_t id) const {
  if (id < 0 || size_t(id) >= id_to_token_.size()) return nullptr;
  return id_to_token_[size_t(id)];
}

void BpeModel::MergeTable::reserve(size_t entries) {
  size_t capacity = 16;
  int bits = 4;
  while (capacity < 2 * entries) {
    capacity *= 2;
    ++bits;
  }
  slots_.assign(capacity, Slot());
  mask_ = capacity - 1;
  shift_ = 64 - bits;
}

void BpeModel::MergeTable::insert(uint64_t key, Merge merge) {
  KITE_CHECK(!slots_.empty());
  for (size_t slot = hash(key);; slot = (slot + 1) & mask_) {
    if (slots_[slot].key == key || slots_[slot].key == kEmpty) {
      slots_[slot].key = key;
      slots_[slot].merge = merge;
      return;
    }
  }
}

const BpeModel::Merge* BpeModel::find_merge(int32_t left, int32_t right) const {
  return merges_.find(pair_key(left, right));
}

int32_t BpeModel::character_id(std::string_view character) const {
  if (!bmp_character_ids_.empty() && character.size() <= 3) {
    size_t position = 0;
    const char32_t c = unicode::next_character(character, position);
    if (position == character.size()) return bmp_character_ids_[c];
  }
  const auto it = vocab_.find(character);
  return it == vocab_.end() ? -1 : it->second;
}

void BpeModel::tokenize(std::string_view word, std::vector<int32_t>& ids) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (const auto it = vocab_.find(word); it != vocab_.end()) {
      ids.push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() < kMaxCachedWordBytes;
  const uint64_t hash = std::hash<std::string_view>()(word) | 1;
  CacheShard& shard = cache_[hash % kCacheShards];
  if (cacheable) {
    std::lock_guard<std::mutex> lock(shard.mutex);
    if (shard.words.find(hash, word, ids)) return;
  }
  const size_t first = ids.size();
  merge_word(word, ids);
  if (cacheable) {
    std::lock_guard<std::mutex> lock(shard.mutex);
    if (shard.words.size() < kCacheWordsPerShard) {
      shard.words.insert(hash, word, std::span<const int32_t>(ids).subspan(first));
    }
  }
}

bool BpeModel::WordCache::find(uint64_t hash, std::string_view word,
                               std::vector<int32_t>& ids) const {
  if (slots_.empty()) return false;
  const size_t mask = slots_.size() - 1;
  for (size_t slot = (hash >> 20) & mask;; slot = (slot + 1) & mask) {
    const Slot& entry = slots_[slot];
    if (entry.hash == 0) return false;
    if (entry.hash == hash && entry.key_length == word.size() &&
        std::string_view(keys_).substr(entry.key_offset, entry.key_length) == word) {
      ids.insert(ids.end(), ids_.begin() + entry.ids_offset,
                 ids_.begin() + entry.ids_offset + entry.ids_count);
      return true;
    }
  }
}

void BpeModel::WordCache::insert(uint64_t hash, std::string_view word,
                                 std::span<const int32_t> word_ids) {
  if (2 * (size_ + 1) > slots_.size()) grow();
  const size_t mask = slots_.size() - 1;
  size_t slot = (hash >> 20) & mask;
  while (slots_[slot].hash != 0) {
    if (slots_[slot].hash == hash &&
        std::string_view(keys_).substr(slots_[slot].key_offset, slots_[slot].key_length) == word) {
      return;  // another thread cached it first
    }
    slot = (slot + 1) & mask;
  }
  slots_[slot] = Slot{hash, uint32_t(keys_.size()), uint32_t(word.size()), uint32_t(ids_.size()),
                      uint32_t(word_ids.size())};
  keys_.append(word);
  ids_.insert(ids_.end(), word_ids.begin(), word_ids.end());
  ++size_;
}

void BpeModel::WordCache::grow() {
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(old.empty() ? 1024 : old.size() * 2, Slot());
  const size_t mask = slots_.size() - 1;
  for (const Slot& entry : old) {
    if (entry.hash == 0) continue;
    size_t slot = (entry.hash >> 20) & mask;
    while (slots_[slot].hash != 0) slot = (slot + 1) & mask;
    slots_[slot] = entry;
  }
}

void BpeModel::merge_word(std::string_view word, std::vector<int32_t>& ids) const {
  thread_local std::vector<Symbol> symbols;
  symbols.clear();
  const auto add = [&](int32_t id, uint32_t length) {
    const int32_t index = int32_t(symbols.size());
    if (!symbols.empty()) symbols.back().next = index;
    symbols.push_back(Symbol{id, index - 1, -1, length});
  };

  // 1. One symbol per character (or per byte with byte fallback, or the unknown token).
  const bool affixes = !continuing_subword_prefix_.empty() || !end_of_word_suffix_.empty();
  std::string affixed;
  bool unk_pending = false;
  uint32_t unk_length = 0;
  size_t position = 0;
  while (position < word.size()) {
    const size_t start = position;
    position += unicode::character_length(static_cast<unsigned char>(word[start]));
    if (position > word.size()) position = word.size();
    const uint32_t byte_length = uint32_t(position - start);
    std::string_view key = word.substr(start, position - start);
    if (affixes) {
      affixed.clear();
      if (start != 0) affixed += continuing_subword_prefix_;
      affixed += key;
      if (position == word.size()) affixed += end_of_word_suffix_;
      key = affixed;
    }
    if (const int32_t id = character_id(key); id >= 0) {
      if (unk_pending) {
        add(*unk_id_, unk_length);
        unk_pending = false;
      }
      add(id, byte_length);
      continue;
    }
    if (byte_fallback_) {
      bool all_known = true;
      for (char byte : key) all_known = all_known && byte_ids_[static_cast<uint8_t>(byte)] >= 0;
      if (all_known) {
        // Like the Rust library, a pending unknown token is not flushed before these.
        for (char byte : key) add(byte_ids_[static_cast<uint8_t>(byte)], 1);
        continue;
      }
    }
    if (unk_id_) {
      if (unk_pending && fuse_unk_) {
        unk_length += byte_length;
      } else {
        if (unk_pending) add(*unk_id_, unk_length);
        unk_pending = true;
        unk_length = byte_length;
      }
    }
  }
  if (unk_pending) add(*unk_id_, unk_length);

  // 2. Merge the best-ranked adjacent pair until none is left (Word::merge_all).
  // A min-heap in a per-thread vector, reused from word to word.
  thread_local std::vector<QueuedMerge> queue;
  queue.clear();
  const auto push = [&](QueuedMerge merge) {
    queue.push_back(merge);
    std::push_heap(queue.begin(), queue.end(), std::greater<>());
  };
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    if (const Merge* merge = find_merge(symbols[i].id, symbols[i + 1].id)) {
      queue.push_back(QueuedMerge{merge->rank, int32_t(i), merge->new_id});
    }
  }
  std::make_heap(queue.begin(), queue.end(), std::greater<>());
  while (!queue.empty()) {
    std::pop_heap(queue.begin(), queue.end(), std::greater<>());
    const QueuedMerge top = queue.back();
    queue.pop_back();
    Symbol& symbol = symbols[size_t(top.position)];
    if (symbol.length == 0 || symbol.next == -1) continue;
    const int32_t next_position = symbol.next;
    const Symbol right = symbols[size_t(next_position)];
    const Merge* current = find_merge(symbol.id, right.id);
    if (current == nullptr || current->new_id != top.new_id) continue;  // a stale entry

    symbol.id = top.new_id;
    symbol.length += right.length;
    symbol.next = right.next;
    symbols[size_t(next_position)].length = 0;
    if (right.next >= 0 && size_t(right.next) < symbols.size()) {
      symbols[size_t(right.next)].prev = top.position;
    }
    if (symbol.prev >= 0) {
      if (const Merge* merge = find_merge(symbols[size_t(symbol.prev)].id, symbol.id)) {
        push(QueuedMerge{merge->rank, symbol.prev, merge->new_id});
      }
    }
    if (symbol.next >= 0 && size_t(symbol.next) < symbols.size()) {
      if (const Merge* merge = find_merge(symbol.id, symbols[size_t(symbol.next)].id)) {
        push(QueuedMerge{merge->rank, top.position, merge->new_id});
      }
    }
  }
  for (const Symbol& symbol : symbols) {
    if (symbol.length != 0) ids.push_back(symbol.id);
  }
}

}  // namespace kite
