// Buffer: an immutable, reference-counted view of bytes, the unit every layer hands on.
//
// Ownership contract: a Buffer keeps whatever owns its bytes alive (a receive slab of a stream
// transport, a shared-memory ring lease, a FlatBufferBuilder's detached buffer, a vector) for as
// long as any copy of the Buffer exists. Copies are cheap (one atomic increment) and never copy
// bytes; slice() shares the owner. The bytes are never modified after the Buffer was made, so
// copies may be read from any thread at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace flatbuffers {
class DetachedBuffer;
class FlatBufferBuilder;
}  // namespace flatbuffers

namespace flatpipe {

class Buffer {
 public:
  Buffer() = default;
  // A view of [data, data + size) kept alive by `owner`.
  Buffer(std::shared_ptr<const void> owner, const std::uint8_t* data, std::size_t size) noexcept
      : owner_(std::move(owner)), data_(data), size_(size) {}

  // Copies the bytes into a new allocation.
  static Buffer copy(const void* data, std::size_t size);
  static Buffer copy(std::string_view bytes) { return copy(bytes.data(), bytes.size()); }
  static Buffer copy(std::span<const std::uint8_t> bytes) { return copy(bytes.data(), bytes.size()); }
  // Takes the vector without copying its bytes.
  static Buffer adopt(std::vector<std::uint8_t>&& bytes);
  static Buffer adopt(std::string&& bytes);
  // Takes the finished message of a FlatBufferBuilder (builder.Release()) without copying.
  static Buffer adopt(flatbuffers::DetachedBuffer&& detached);
  // Finishes nothing: takes the builder's finished buffer (after builder.Finish()).
  static Buffer adopt(flatbuffers::FlatBufferBuilder& builder);

  const std::uint8_t* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }
  std::span<const std::uint8_t> span() const noexcept { return {data_, size_}; }
  std::string_view view() const noexcept {
    return {reinterpret_cast<const char*>(data_), size_};
  }
  std::string to_string() const { return std::string(view()); }

  // Bytes [offset, offset + length) of this buffer, sharing its owner. Clamped to the end.
  Buffer slice(std::size_t offset, std::size_t length = SIZE_MAX) const noexcept;

  friend bool operator==(const Buffer& a, const Buffer& b) noexcept {
    return a.size_ == b.size_ && (a.size_ == 0 || std::memcmp(a.data_, b.data_, a.size_) == 0);
  }

 private:
  std::shared_ptr<const void> owner_;
  const std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace flatpipe
