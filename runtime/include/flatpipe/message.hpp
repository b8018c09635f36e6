// Typed FlatBuffers messages over Buffers: what generated code hands to users and takes from them.
//
//   Message<T>      a received message, verified once, then read in place (zero-copy) from the
//                   Buffer it arrived in (receive slab, shared-memory ring lease, ...).
//   MessageBuilder  a FlatBufferBuilder whose memory may come from the connection the message will
//                   leave on (the shm transport hands out memory in its shared segment, so the
//                   message is built where the peer reads it and is never copied).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>

#include <flatbuffers/flatbuffers.h>

#include "flatpipe/buffer.hpp"
#include "flatpipe/status.hpp"

namespace flatpipe {

// Where every message starts: FlatBuffers reads scalars in place, so a buffer must start on a
// boundary of its largest scalar (8 bytes). MessageBuilder output always does; received bytes that
// do not are copied once (Message<T>::verify).
inline constexpr std::size_t kMessageAlignment = 8;

// Limits the verifier applies to every received message before user code sees it.
struct VerifyLimits {
  unsigned max_depth = 64;
  unsigned max_tables = 1'000'000;
};

// A verified, read-only view of a received FlatBuffer of root type T. Copyable (copies share the
// bytes). The root pointer stays valid for as long as any copy exists, from any thread.
template <class T>
class Message {
 public:
  Message() = default;

  // Verifies `bytes` as a T. INVALID_ARGUMENT naming the type when it is not one (truncated,
  // out-of-bounds offsets, too deep); `bytes` is not kept then.
  static Result<Message> verify(Buffer bytes, const VerifyLimits& limits = {}) {
    bytes = aligned(std::move(bytes));
    flatbuffers::Verifier verifier(bytes.data(), bytes.size(), limits.max_depth, limits.max_tables);
    if (bytes.size() < sizeof(flatbuffers::uoffset_t) || !verifier.VerifyBuffer<T>(nullptr)) {
      return Status(StatusCode::invalid_argument,
                    std::string("message is not a valid ") + type_name() + " (" +
                        std::to_string(bytes.size()) + " bytes failed FlatBuffers verification)");
    }
    return Message(std::move(bytes));
  }

  // T's fully qualified schema name when flatc generated it (--gen-name-strings, which
  // flatpipe_generate passes), "FlatBuffers table" otherwise.
  static const char* type_name() noexcept {
    if constexpr (requires { T::GetFullyQualifiedName(); }) {
      return T::GetFullyQualifiedName();
    } else {
      return "FlatBuffers table";
    }
  }

  // Trusts `bytes` without verifying: only for bytes this process built itself.
  static Message trusted(Buffer bytes) { return Message(aligned(std::move(bytes))); }

  // Reading a FlatBuffer that starts off kMessageAlignment is undefined behaviour (and a bus
  // error on some ARM cores). shm and inproc hand over the sender's MessageBuilder output, which
  // is aligned and never copied; tcp and unix place a frame that begins a read so that its
  // payload is aligned (wire::FrameAssembler), which covers a round trip's request and reply.
  // A payload that still lies off alignment (a frame behind others in the same read, or a body
  // behind a request's header block of deadline and metadata) is copied once to aligned memory.
  static Buffer aligned(Buffer bytes) {
    if (reinterpret_cast<std::uintptr_t>(bytes.data()) % kMessageAlignment == 0) return bytes;
    return Buffer::copy(bytes.data(), bytes.size());  // new[]: aligned for any scalar
  }

  const T* get() const noexcept { return root_; }
  const T* operator->() const noexcept { return root_; }
  const T& operator*() const noexcept { return *root_; }
  explicit operator bool() const noexcept { return root_ != nullptr; }
  const Buffer& buffer() const noexcept { return bytes_; }

  // The object-API copy (schema compiled with flatc --gen-object-api).
  auto unpack() const
    requires requires { typename T::NativeTableType; }
  {
    return std::unique_ptr<typename T::NativeTableType>(root_ ? root_->UnPack() : nullptr);
  }

 private:
  explicit Message(Buffer bytes)
      : bytes_(std::move(bytes)), root_(bytes_.empty() ? nullptr : flatbuffers::GetRoot<T>(bytes_.data())) {}

  Buffer bytes_;
  const T* root_ = nullptr;
};

// A FlatBufferBuilder that finishes into a Buffer without copying. Built from a connection's
// allocator (Client::builder(), ServerCall::builder(), ...) its memory is the memory that
// connection sends from without a copy; default-constructed it uses the heap. Its messages start
// on a kMessageAlignment boundary, so that a receiver reads them in place. Move-only.
class MessageBuilder : public flatbuffers::FlatBufferBuilder {
 public:
  // `allocator` (may be null: the heap) is owned by the builder and then by the Buffer that
  // release() returns, so what it allocated stays valid while that Buffer lives.
  explicit MessageBuilder(std::unique_ptr<flatbuffers::Allocator> allocator = nullptr,
                          std::size_t initial_size = 1024)
      : flatbuffers::FlatBufferBuilder(initial_size, allocator.get(), allocator != nullptr) {
    allocator.release();
    TrackMinAlign(kMessageAlignment);
  }
  MessageBuilder(MessageBuilder&&) = default;
  MessageBuilder& operator=(MessageBuilder&&) = default;

  // The finished message (call Finish() first), taken without copying; the builder is then empty
  // and may be reused (with heap memory: the connection's allocator left with the message).
  Buffer release() {
    Buffer message = Buffer::adopt(Release());
    TrackMinAlign(kMessageAlignment);  // Release() reset it
    return message;
  }

  // Finishes `root` and releases it.
  template <class T>
  Buffer finish(flatbuffers::Offset<T> root) {
    Finish(root);
    return release();
  }
  // Packs an object-API value (T::NativeTableType) as a T and releases it.
  template <class T, class Native>
  Buffer pack(const Native& value) {
    Finish(T::Pack(*this, &value));
    return release();
  }
};

}  // namespace flatpipe
