#include "flatpipe/wire/frame.hpp"

#include <algorithm>
#include <cstring>

namespace flatpipe::wire {

const char* frame_type_name(FrameType type) noexcept {
  switch (type) {
    case FrameType::request: return "Request";
    case FrameType::response: return "Response";
    case FrameType::error: return "Error";
    case FrameType::notification: return "Notification";
    case FrameType::stream_data: return "StreamData";
    case FrameType::stream_end: return "StreamEnd";
    case FrameType::stream_error: return "StreamError";
    case FrameType::cancel: return "Cancel";
    case FrameType::hello: return "Hello";
    case FrameType::hello_ack: return "HelloAck";
    case FrameType::ping: return "Ping";
    case FrameType::pong: return "Pong";
    case FrameType::credit: return "Credit";
    case FrameType::goaway: return "GoAway";
  }
  return "Unknown";
}

void encode_prefix_and_header(const FrameHeader& h, std::uint8_t out[kFrameOverhead]) noexcept {
  put_u32(out, static_cast<std::uint32_t>(kHeaderSize) + h.payload_len);
  out[4] = h.version;
  out[5] = static_cast<std::uint8_t>(h.type);
  put_u16(out + 6, h.flags);
  put_u32(out + 8, h.request_id);
  put_u32(out + 12, h.method_id);
  put_u32(out + 16, h.payload_len);
}

FrameHeader decode_header(const std::uint8_t in[kHeaderSize]) noexcept {
  FrameHeader h;
  h.version = in[0];
  h.type = static_cast<FrameType>(in[1]);
  h.flags = get_u16(in + 2);
  h.request_id = get_u32(in + 4);
  h.method_id = get_u32(in + 8);
  h.payload_len = get_u32(in + 12);
  return h;
}

OutFrame::OutFrame(FrameType type, std::uint16_t flag_bits, std::uint32_t request_id,
                   std::uint32_t method_id, Buffer payload, std::string extra_bytes)
    : extra(std::move(extra_bytes)), body(std::move(payload)) {
  FrameHeader h;
  h.type = type;
  h.flags = flag_bits;
  h.request_id = request_id;
  h.method_id = method_id;
  h.payload_len = static_cast<std::uint32_t>(extra.size() + body.size());
  encode_prefix_and_header(h, head.data());
}

FrameHeader OutFrame::header() const noexcept { return decode_header(head.data() + kPrefixSize); }

std::vector<std::uint8_t> OutFrame::to_bytes() const {
  std::vector<std::uint8_t> out;
  out.reserve(size());
  out.insert(out.end(), head.begin(), head.end());
  out.insert(out.end(), extra.begin(), extra.end());
  out.insert(out.end(), body.data(), body.data() + body.size());
  return out;
}

std::string describe(FrameError error, std::uint32_t length, std::uint32_t limit) {
  switch (error) {
    case FrameError::none: return "no error";
    case FrameError::too_large:
      return "frame of " + std::to_string(length) + " bytes exceeds the limit of " +
             std::to_string(limit) + " bytes";
    case FrameError::too_short:
      return "frame length " + std::to_string(length) + " is shorter than the 16-byte header";
    case FrameError::length_mismatch:
      return "payload_len does not match the frame length " + std::to_string(length);
    case FrameError::bad_version:
      return "unsupported protocol version " + std::to_string(length) + " (expected 2)";
  }
  return "unknown frame error";
}

FrameAssembler::FrameAssembler(std::uint32_t max_body, std::size_t slab_size)
    : max_body_(max_body), slab_size_(std::max<std::size_t>(slab_size, kFrameOverhead)) {}

namespace {
// Bytes left free at the start of a slab so that a frame placed there has an 8-aligned payload.
constexpr std::size_t kAlignLead = (8 - kFrameOverhead % 8) % 8;
}  // namespace

std::span<std::uint8_t> FrameAssembler::prepare() {
  const std::size_t pending = end_ - begin_;
  // What the frame being assembled needs from begin_, once its prefix is in and acceptable.
  std::size_t frame_bytes = 0;
  if (pending >= kPrefixSize) {
    const std::uint32_t len = get_u32(slab_.get() + begin_);
    if (len <= max_body_) frame_bytes = kPrefixSize + std::size_t{len};
  }
  // The rest of the slab takes the next read when the current frame fits in it whole, or, with
  // no frame begun, when a sixteenth of a slab is left. So a slab serves many small reads even
  // while frames handed out still view it, instead of a new slab per read.
  const std::size_t min_room = std::max<std::size_t>(slab_size_ / 16, kFrameOverhead);
  if (slab_ && pending == 0) {
    // Between frames: the next read starts where a frame's payload lands 8-aligned (up to 7
    // bytes skipped), so a frame that begins a read (every request and reply of a round trip)
    // has an aligned payload. Frames that follow it in the same read are where the bytes put them.
    const std::size_t at = end_ + (kAlignLead + 8 - end_ % 8) % 8;
    if (at <= capacity_) begin_ = end_ = at;
  }
  if (slab_) {
    const std::size_t room = capacity_ - end_;
    const bool usable = frame_bytes ? capacity_ - begin_ >= frame_bytes : room >= min_room;
    if (usable && room > 0) return {slab_.get() + end_, room};
  }
  // A new slab, or this one compacted when no frame views it: room for the whole frame (a frame
  // larger than a slab gets exactly its size, plus the lead) or for a useful read. The frame
  // starts kAlignLead bytes in, so its payload (after the 20-byte prefix and header) starts on an
  // 8-byte boundary of the slab (new[] memory is 16-aligned): a typed message in it is read in
  // place instead of copied to aligned memory.
  const std::size_t cap = std::max({slab_size_, kAlignLead + frame_bytes, kAlignLead + pending + min_room});
  if (slab_ && slab_.use_count() == 1 && capacity_ >= cap) {
    std::memmove(slab_.get() + kAlignLead, slab_.get() + begin_, pending);  // compact in place
  } else {
    std::shared_ptr<std::uint8_t[]> fresh(new std::uint8_t[cap]);
    if (pending) std::memcpy(fresh.get() + kAlignLead, slab_.get() + begin_, pending);
    slab_ = std::move(fresh);
    capacity_ = cap;
  }
  begin_ = kAlignLead;
  end_ = kAlignLead + pending;
  return {slab_.get() + end_, capacity_ - end_};
}

bool FrameAssembler::next(Frame& out) {
  if (error_ != FrameError::none) return false;
  const std::size_t avail = end_ - begin_;
  if (avail < kPrefixSize) return false;
  const std::uint8_t* p = slab_.get() + begin_;
  const std::uint32_t len = get_u32(p);
  if (len > max_body_) {
    fail(FrameError::too_large, len);
    return false;
  }
  if (len < kHeaderSize) {
    fail(FrameError::too_short, len);
    return false;
  }
  if (avail < kPrefixSize + kHeaderSize) return false;
  // Check the header as soon as it is in, so garbage is refused without waiting for its body.
  FrameHeader h = decode_header(p + kPrefixSize);
  if (h.version != kVersion) {
    fail(FrameError::bad_version, h.version);
    return false;
  }
  if (h.payload_len != len - kHeaderSize) {
    fail(FrameError::length_mismatch, len);
    return false;
  }
  if (avail < kPrefixSize + len) return false;
  out.header = h;
  out.payload = h.payload_len == 0
                    ? Buffer{}
                    : Buffer(slab_, p + kFrameOverhead, h.payload_len);
  begin_ += kPrefixSize + len;
  if (begin_ == end_ && slab_.use_count() == 1) begin_ = end_ = kAlignLead;  // reuse from the start
  return true;
}

// ---- header block ----

void encode_header_block(const HeaderBlock& block, std::string& out) {
  std::size_t len = 8 + 2;
  for (const auto& [k, v] : block.metadata) len += 2 + k.size() + 4 + v.size();
  const std::size_t start = out.size();
  out.resize(start + 4 + len);
  auto* p = reinterpret_cast<std::uint8_t*>(out.data()) + start;
  put_u32(p, static_cast<std::uint32_t>(len));
  put_u64(p + 4, block.timeout_us);
  put_u16(p + 12, static_cast<std::uint16_t>(block.metadata.size()));
  p += 14;
  for (const auto& [k, v] : block.metadata) {
    put_u16(p, static_cast<std::uint16_t>(k.size()));
    std::memcpy(p + 2, k.data(), k.size());
    p += 2 + k.size();
    put_u32(p, static_cast<std::uint32_t>(v.size()));
    if (!v.empty()) std::memcpy(p + 4, v.data(), v.size());
    p += 4 + v.size();
  }
}

Result<std::pair<HeaderBlock, std::size_t>> decode_header_block(std::span<const std::uint8_t> payload) {
  auto bad = [](const char* what) {
    return Status(StatusCode::invalid_argument, std::string("malformed header block: ") + what);
  };
  if (payload.size() < 4) return bad("shorter than its length field");
  const std::uint32_t len = get_u32(payload.data());
  if (len > kMaxHeaderBlock) return bad("larger than 64 KiB");
  if (len < 10) return bad("shorter than timeout and count");
  if (payload.size() - 4 < len) return bad("length runs past the payload");
  const std::uint8_t* p = payload.data() + 4;
  const std::uint8_t* end = p + len;
  HeaderBlock block;
  block.timeout_us = get_u64(p);
  const std::uint16_t count = get_u16(p + 8);
  p += 10;
  block.metadata.reserve(count);
  for (std::uint16_t i = 0; i < count; ++i) {
    if (end - p < 2) return bad("truncated key length");
    const std::uint16_t klen = get_u16(p);
    p += 2;
    if (end - p < klen) return bad("truncated key");
    std::string key(reinterpret_cast<const char*>(p), klen);
    p += klen;
    if (end - p < 4) return bad("truncated value length");
    const std::uint32_t vlen = get_u32(p);
    p += 4;
    if (static_cast<std::size_t>(end - p) < vlen) return bad("truncated value");
    std::string value(reinterpret_cast<const char*>(p), vlen);
    p += vlen;
    block.metadata.emplace_back(std::move(key), std::move(value));
  }
  if (p != end) return bad("trailing bytes after the last entry");
  return std::pair<HeaderBlock, std::size_t>{std::move(block), std::size_t{4} + len};
}

// ---- hello ----

std::string encode_hello(const Hello& hello) {
  std::string out(kHelloSize, '\0');
  auto* p = reinterpret_cast<std::uint8_t*>(out.data());
  put_u32(p, kHelloMagic);
  p[4] = hello.major;
  p[5] = hello.minor;
  put_u16(p + 6, 0);
  put_u32(p + 8, hello.features);
  put_u32(p + 12, hello.max_frame);
  put_u32(p + 16, hello.initial_credit);
  put_u32(p + 20, hello.keepalive_ms);
  return out;
}

Result<Hello> decode_hello(std::span<const std::uint8_t> payload) {
  if (payload.size() < kHelloSize) {
    return Status(StatusCode::invalid_argument,
                  "handshake payload of " + std::to_string(payload.size()) +
                      " bytes is shorter than 24");
  }
  const std::uint8_t* p = payload.data();
  if (get_u32(p) != kHelloMagic) return Status(StatusCode::invalid_argument, "handshake magic is not FPIP");
  Hello h;
  h.major = p[4];
  h.minor = p[5];
  if (h.major != 1) {
    return Status(StatusCode::failed_precondition,
                  "unsupported flatpipe protocol major version " + std::to_string(h.major));
  }
  h.features = get_u32(p + 8);
  h.max_frame = get_u32(p + 12);
  h.initial_credit = get_u32(p + 16);
  h.keepalive_ms = get_u32(p + 20);
  if (h.max_frame < kHeaderSize) return Status(StatusCode::invalid_argument, "handshake max_frame below 16");
  if (h.initial_credit == 0) return Status(StatusCode::invalid_argument, "handshake initial_credit is 0");
  return h;
}

// ---- status payloads ----

std::string encode_status(const Status& status, bool with_code) {
  if (with_code) {
    std::string out;
    out.reserve(1 + status.message().size());
    out.push_back(static_cast<char>(status.code()));
    out += status.message();
    return out;
  }
  return status.to_string();
}

Status decode_status(std::span<const std::uint8_t> payload, bool has_code) {
  StatusCode code = StatusCode::unknown;
  std::string_view text(reinterpret_cast<const char*>(payload.data()), payload.size());
  if (has_code) {
    if (text.empty()) return Status(StatusCode::unknown, "error frame without a status code");
    code = status_from_wire(static_cast<std::uint8_t>(text[0]));
    text.remove_prefix(1);
  } else if (const auto colon = text.find(": "); colon != std::string_view::npos) {
    if (auto named = status_from_name(text.substr(0, colon))) {
      code = *named;
      text.remove_prefix(colon + 2);
    }
  } else if (auto named = status_from_name(text)) {
    code = *named;
    text = {};
  }
  // An error frame never means success, whatever its text or code says.
  if (code == StatusCode::ok) code = StatusCode::unknown;
  return Status(code, std::string(text));
}

}  // namespace flatpipe::wire
