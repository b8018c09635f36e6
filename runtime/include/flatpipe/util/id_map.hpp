// IdMap<V>: request id -> V for the calls of one connection, without a node allocation per call.
//
// Open addressing with linear probing over a power-of-two table and backward-shift deletion (no
// tombstones), kept at most half full. A slot is free when its value is empty (`!value`), so V is
// a nullable handle (std::shared_ptr) and stored values must be non-empty. Not thread-safe (the
// Session's mutex guards it). Pointers returned by find() stay valid until the next emplace() or
// erase().
#pragma once

#include <cassert>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace flatpipe {

template <class V>
class IdMap {
 public:
  IdMap() = default;
  IdMap(IdMap&& other) noexcept
      : slots_(std::move(other.slots_)), size_(std::exchange(other.size_, 0)), shift_(std::exchange(other.shift_, kFullShift)) {}
  IdMap& operator=(IdMap&& other) noexcept {
    slots_ = std::move(other.slots_);
    size_ = std::exchange(other.size_, 0);
    shift_ = std::exchange(other.shift_, kFullShift);
    return *this;
  }
  IdMap(const IdMap&) = delete;
  IdMap& operator=(const IdMap&) = delete;

  std::size_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }

  // The value stored under `id`, or nullptr.
  V* find(std::uint32_t id) noexcept {
    const std::size_t i = slot_of(id);
    return i == kAbsent ? nullptr : &slots_[i].value;
  }
  const V* find(std::uint32_t id) const noexcept {
    const std::size_t i = slot_of(id);
    return i == kAbsent ? nullptr : &slots_[i].value;
  }
  bool contains(std::uint32_t id) const noexcept { return find(id) != nullptr; }

  // Stores `value` (non-empty) under `id`. False, and nothing changes, when `id` is taken.
  bool emplace(std::uint32_t id, V value) {
    assert(value && "IdMap values must be non-empty");
    if (2 * (size_ + 1) > slots_.size()) rehash(slots_.empty() ? kMinSlots : 2 * slots_.size());
    std::size_t i = home(id);
    for (; slots_[i].value; i = next(i)) {
      if (slots_[i].id == id) return false;
    }
    slots_[i].id = id;
    slots_[i].value = std::move(value);
    ++size_;
    return true;
  }

  // Removes `id`; false when it was not there.
  bool erase(std::uint32_t id) noexcept {
    const std::size_t i = slot_of(id);
    if (i == kAbsent) return false;
    erase_slot(i);
    return true;
  }
  // Removes `id` only while it holds `expected` (one probe, where find() then erase() take two);
  // false when it is absent or holds another value.
  bool erase(std::uint32_t id, const V& expected) noexcept {
    const std::size_t i = slot_of(id);
    if (i == kAbsent || !(slots_[i].value == expected)) return false;
    erase_slot(i);
    return true;
  }

  void clear() noexcept {
    for (auto& s : slots_) s.value = V();
    size_ = 0;
  }

  // Calls fn(id, V&) for every entry, in no particular order. fn must not change the map.
  template <class F>
  void for_each(F&& fn) {
    for (auto& s : slots_) {
      if (s.value) fn(s.id, s.value);
    }
  }

 private:
  struct Slot {
    std::uint32_t id = 0;
    V value{};
  };
  static constexpr std::size_t kMinSlots = 16;
  static constexpr std::size_t kAbsent = static_cast<std::size_t>(-1);
  static constexpr std::size_t kShrinkFrom = 1024;
  static constexpr unsigned kFullShift = 64;

  // The slot holding `id`, or kAbsent.
  std::size_t slot_of(std::uint32_t id) const noexcept {
    if (size_ == 0) return kAbsent;
    for (std::size_t i = home(id);; i = next(i)) {
      const Slot& s = slots_[i];
      if (!s.value) return kAbsent;
      if (s.id == id) return i;
    }
  }

  // Empties slot `i` (occupied). Backward shift: later members of its probe run move into the
  // hole so that every key stays reachable from its home slot without tombstones.
  void erase_slot(std::size_t i) noexcept {
    for (std::size_t j = next(i);; j = next(j)) {
      Slot& s = slots_[j];
      if (!s.value) break;
      const std::size_t h = home(s.id);
      // s may move to the hole i when its home does not lie cyclically in (i, j].
      const bool stays = i <= j ? (i < h && h <= j) : (i < h || h <= j);
      if (!stays) {
        slots_[i] = std::move(s);
        i = j;
      }
    }
    slots_[i].value = V();
    --size_;
    // Give back the room of a past burst of calls (keeps the table at most half full).
    if (slots_.size() > kShrinkFrom && size_ * 8 < slots_.size()) rehash(slots_.size() / 4);
  }

  // Fibonacci hashing: request ids are mostly consecutive, and the multiply spreads them.
  std::size_t home(std::uint32_t id) const noexcept {
    return static_cast<std::size_t>((std::uint64_t{id} * 0x9E3779B97F4A7C15ull) >> shift_);
  }
  std::size_t next(std::size_t i) const noexcept { return (i + 1) & (slots_.size() - 1); }

  void rehash(std::size_t slots) {
    std::vector<Slot> old = std::move(slots_);
    slots_.assign(slots, Slot{});
    unsigned bits = 0;
    while ((std::size_t{1} << bits) < slots) ++bits;
    shift_ = kFullShift - bits;
    for (auto& s : old) {
      if (!s.value) continue;
      std::size_t i = home(s.id);
      while (slots_[i].value) i = next(i);
      slots_[i] = std::move(s);
    }
  }

  std::vector<Slot> slots_;
  std::size_t size_ = 0;
  unsigned shift_ = kFullShift;
};

}  // namespace flatpipe
