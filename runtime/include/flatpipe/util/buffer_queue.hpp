// BufferQueue: a FIFO of Buffers that allocates nothing until the first push (unlike
// std::deque, which allocates when constructed) — one lives in every call.
#pragma once

#include <cstddef>
#include <utility>
#include <vector>

#include "flatpipe/buffer.hpp"

namespace flatpipe::detail {

class BufferQueue {
 public:
  bool empty() const noexcept { return head_ == items_.size(); }
  std::size_t size() const noexcept { return items_.size() - head_; }
  void push_back(Buffer b) { items_.push_back(std::move(b)); }
  // Requires !empty().
  Buffer pop_front() {
    Buffer b = std::move(items_[head_++]);
    if (head_ == items_.size()) {
      items_.clear();
      head_ = 0;
    } else if (head_ >= 64 && head_ * 2 >= items_.size()) {
      items_.erase(items_.begin(), items_.begin() + static_cast<std::ptrdiff_t>(head_));
      head_ = 0;
    }
    return b;
  }

 private:
  std::vector<Buffer> items_;
  std::size_t head_ = 0;
};

}  // namespace flatpipe::detail
