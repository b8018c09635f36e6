// The V2 frame codec (docs/protocol.md, "Framing"). Pure functions and a byte-level assembler:
// no sockets, no threads, so every rule is testable on bytes alone.
//
//   frame  = length:u32be body            ; length counts body only
//   body   = header(16) payload
//   header = version:u8(=2) type:u8 flags:u16be request_id:u32be method_id:u32be payload_len:u32be
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "flatpipe/buffer.hpp"
#include "flatpipe/status.hpp"

namespace flatpipe::wire {

inline constexpr std::uint8_t kVersion = 2;
inline constexpr std::size_t kPrefixSize = 4;    // length:u32be
inline constexpr std::size_t kHeaderSize = 16;   // the V2 header
inline constexpr std::size_t kFrameOverhead = kPrefixSize + kHeaderSize;
inline constexpr std::uint32_t kDefaultMaxFrame = 16u << 20;  // largest body accepted by default

enum class FrameType : std::uint8_t {
  request = 0,
  response = 1,
  error = 2,
  notification = 3,
  stream_data = 4,
  stream_end = 5,
  stream_error = 6,
  cancel = 7,
  // Full mode only (never sent to a netpipe peer).
  hello = 16,
  hello_ack = 17,
  ping = 18,
  pong = 19,
  credit = 20,
  goaway = 21,
};

const char* frame_type_name(FrameType type) noexcept;

namespace flags {
inline constexpr std::uint16_t compressed = 0x0001;
inline constexpr std::uint16_t streaming = 0x0002;
inline constexpr std::uint16_t requires_ack = 0x0004;
inline constexpr std::uint16_t final = 0x0008;
// Full mode only.
inline constexpr std::uint16_t status = 0x0010;   // payload carries code:u8 before the text
inline constexpr std::uint16_t headers = 0x0020;  // payload starts with a header block
}  // namespace flags

struct FrameHeader {
  std::uint8_t version = kVersion;
  FrameType type = FrameType::request;
  std::uint16_t flags = 0;
  std::uint32_t request_id = 0;
  std::uint32_t method_id = 0;
  std::uint32_t payload_len = 0;

  friend bool operator==(const FrameHeader&, const FrameHeader&) = default;
};

// A received frame. `payload` views the receive buffer it arrived in (no copy).
struct Frame {
  FrameHeader header;
  Buffer payload;
  // In-process transports may hand over the sender's small prefix (OutFrame::extra) apart from
  // its body instead of joining them: the frame's payload is then `prefix` followed by `payload`.
  // Byte-stream transports leave it empty.
  Buffer prefix;
};

// Big-endian helpers.
inline void put_u16(std::uint8_t* p, std::uint16_t v) noexcept {
  p[0] = static_cast<std::uint8_t>(v >> 8);
  p[1] = static_cast<std::uint8_t>(v);
}
inline void put_u32(std::uint8_t* p, std::uint32_t v) noexcept {
  p[0] = static_cast<std::uint8_t>(v >> 24);
  p[1] = static_cast<std::uint8_t>(v >> 16);
  p[2] = static_cast<std::uint8_t>(v >> 8);
  p[3] = static_cast<std::uint8_t>(v);
}
inline void put_u64(std::uint8_t* p, std::uint64_t v) noexcept {
  put_u32(p, static_cast<std::uint32_t>(v >> 32));
  put_u32(p + 4, static_cast<std::uint32_t>(v));
}
inline std::uint16_t get_u16(const std::uint8_t* p) noexcept {
  return static_cast<std::uint16_t>((p[0] << 8) | p[1]);
}
inline std::uint32_t get_u32(const std::uint8_t* p) noexcept {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
         std::uint32_t{p[3]};
}
inline std::uint64_t get_u64(const std::uint8_t* p) noexcept {
  return (std::uint64_t{get_u32(p)} << 32) | get_u32(p + 4);
}

// Writes length prefix and header (20 bytes); header.payload_len is the payload size and the
// length prefix becomes 16 + payload_len.
void encode_prefix_and_header(const FrameHeader& header, std::uint8_t out[kFrameOverhead]) noexcept;
// Reads the 16 header bytes (no validation).
FrameHeader decode_header(const std::uint8_t in[kHeaderSize]) noexcept;

// A frame ready to send: prefix+header, then `extra` (small per-frame bytes such as a status code
// or a header block), then `body`. Written with one gathered write of up to three pieces; the
// body is never copied.
struct OutFrame {
  std::array<std::uint8_t, kFrameOverhead> head{};
  std::string extra;
  Buffer body;

  OutFrame() = default;
  OutFrame(FrameType type, std::uint16_t flag_bits, std::uint32_t request_id, std::uint32_t method_id,
           Buffer payload, std::string extra_bytes = {});
  std::size_t size() const noexcept { return head.size() + extra.size() + body.size(); }
  std::size_t payload_size() const noexcept { return extra.size() + body.size(); }
  FrameHeader header() const noexcept;
  // The whole frame as contiguous bytes (tests and datagram transports).
  std::vector<std::uint8_t> to_bytes() const;
};

// Why a byte stream could not be decoded. Each one closes the connection (protocol.md, "Bad input").
enum class FrameError : std::uint8_t {
  none,
  too_large,        // length above the configured maximum (checked before allocating)
  too_short,        // length below the 16-byte header
  length_mismatch,  // payload_len != length - 16
  bad_version,      // version byte other than 2
};
std::string describe(FrameError error, std::uint32_t length, std::uint32_t limit);

// Reassembles frames from a byte stream, many per read, without copying complete frames.
//
// Use: read into prepare(), commit(n) the bytes read, then call next() until it returns false.
// Frames that lie whole in one receive slab are handed out as slices of it (the slab lives as
// long as the frames do). A frame's length is checked against `max_body` as soon as its 4-byte
// prefix is in, before any buffer is sized for it; a frame larger than the slab gets a buffer of
// its size (plus 4 bytes). A frame that begins a read, or that moves to a new slab, has its
// payload 8-byte aligned, so a typed message in it is read in place; frames that follow it in
// the same read lie where the bytes put them. Not thread-safe: one reader owns it.
class FrameAssembler {
 public:
  explicit FrameAssembler(std::uint32_t max_body = kDefaultMaxFrame,
                          std::size_t slab_size = 64 * 1024);

  // Space to read into: never empty.
  std::span<std::uint8_t> prepare();
  void commit(std::size_t n) noexcept { end_ += n; }

  // Takes the next complete frame. Returns false when more bytes are needed or on error
  // (then error() tells which; the stream cannot be resumed).
  bool next(Frame& out);
  FrameError error() const noexcept { return error_; }
  std::uint32_t error_length() const noexcept { return error_length_; }
  // Bytes of an unfinished frame held (a peer that vanishes mid-frame leaves this non-zero).
  std::size_t pending_bytes() const noexcept { return end_ - begin_; }
  std::uint32_t max_body() const noexcept { return max_body_; }
  void set_max_body(std::uint32_t max_body) noexcept { max_body_ = max_body; }

 private:
  void fail(FrameError e, std::uint32_t length) noexcept {
    error_ = e;
    error_length_ = length;
  }

  std::uint32_t max_body_;
  std::size_t slab_size_;
  std::shared_ptr<std::uint8_t[]> slab_;
  std::size_t capacity_ = 0;
  std::size_t begin_ = 0;  // first unparsed byte
  std::size_t end_ = 0;    // one past the last byte read
  FrameError error_ = FrameError::none;
  std::uint32_t error_length_ = 0;
};

// ---- Full-mode payload pieces (docs/protocol.md, "Full mode") ----

using Metadata = std::vector<std::pair<std::string, std::string>>;

inline constexpr std::size_t kMaxHeaderBlock = 64 * 1024;

// The HEADERS block: timeout (0 = none) and key/value metadata.
struct HeaderBlock {
  std::uint64_t timeout_us = 0;
  Metadata metadata;
};
// Appends hdr_len:u32 timeout_us:u64 count:u16 entries... to `out`.
void encode_header_block(const HeaderBlock& block, std::string& out);
// Parses a header block at the start of `payload`; on success returns the block and the number
// of payload bytes it used. Errors: INVALID_ARGUMENT with what is wrong.
Result<std::pair<HeaderBlock, std::size_t>> decode_header_block(std::span<const std::uint8_t> payload);

inline constexpr std::uint32_t kHelloMagic = 0x46504950;  // "FPIP"
inline constexpr std::size_t kHelloSize = 24;

namespace feature {
inline constexpr std::uint32_t deadlines = 0x01;
inline constexpr std::uint32_t metadata = 0x02;
inline constexpr std::uint32_t status_codes = 0x04;
inline constexpr std::uint32_t flow_control = 0x08;
inline constexpr std::uint32_t keepalive = 0x10;
inline constexpr std::uint32_t goaway = 0x20;
inline constexpr std::uint32_t all = 0x3f;
}  // namespace feature

struct Hello {
  std::uint8_t major = 1;
  std::uint8_t minor = 0;
  std::uint32_t features = feature::all;
  std::uint32_t max_frame = kDefaultMaxFrame;
  std::uint32_t initial_credit = 64;
  std::uint32_t keepalive_ms = 0;
};
std::string encode_hello(const Hello& hello);
Result<Hello> decode_hello(std::span<const std::uint8_t> payload);

// Error / StreamError / GOAWAY payloads. With `with_code` (full mode): code:u8 then text;
// without (compatible mode): the text "NAME: message", readable by a netpipe peer.
std::string encode_status(const Status& status, bool with_code);
// Reads a status payload (after any header block). With `has_code`, the first byte is the code;
// otherwise the text is parsed as "NAME: message" when it starts with a known name, else UNKNOWN.
Status decode_status(std::span<const std::uint8_t> payload, bool has_code);

}  // namespace flatpipe::wire
