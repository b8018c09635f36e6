#include "flatpipe/buffer.hpp"

#include <flatbuffers/flatbuffers.h>

#include <algorithm>

namespace flatpipe {

Buffer Buffer::copy(const void* data, std::size_t size) {
  if (size == 0) return {};
  std::shared_ptr<std::uint8_t[]> bytes(new std::uint8_t[size]);
  std::memcpy(bytes.get(), data, size);
  const std::uint8_t* p = bytes.get();
  return {std::move(bytes), p, size};
}

Buffer Buffer::adopt(std::vector<std::uint8_t>&& bytes) {
  if (bytes.empty()) return {};
  auto owner = std::make_shared<std::vector<std::uint8_t>>(std::move(bytes));
  const std::uint8_t* p = owner->data();
  const std::size_t n = owner->size();
  return {std::move(owner), p, n};
}

Buffer Buffer::adopt(std::string&& bytes) {
  if (bytes.empty()) return {};
  auto owner = std::make_shared<std::string>(std::move(bytes));
  const auto* p = reinterpret_cast<const std::uint8_t*>(owner->data());
  const std::size_t n = owner->size();
  return {std::move(owner), p, n};
}

Buffer Buffer::adopt(flatbuffers::DetachedBuffer&& detached) {
  if (detached.size() == 0) return {};
  auto owner = std::make_shared<flatbuffers::DetachedBuffer>(std::move(detached));
  const std::uint8_t* p = owner->data();
  const std::size_t n = owner->size();
  return {std::move(owner), p, n};
}

Buffer Buffer::adopt(flatbuffers::FlatBufferBuilder& builder) { return adopt(builder.Release()); }

Buffer Buffer::slice(std::size_t offset, std::size_t length) const noexcept {
  offset = std::min(offset, size_);
  length = std::min(length, size_ - offset);
  return {owner_, data_ + offset, length};
}

}  // namespace flatpipe
