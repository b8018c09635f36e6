// The wire codec on bytes alone (docs/protocol.md sections 1, 5, 9, 10, 16): frame encoding and
// reassembly, the full-mode payload pieces, status payloads, endpoint URIs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "flatpipe/buffer.hpp"
#include "flatpipe/status.hpp"
#include "flatpipe/transport/endpoint.hpp"
#include "flatpipe/wire/frame.hpp"
#include "support/raw_peer.hpp"

namespace {

using flatpipe::Buffer;
using flatpipe::Status;
using flatpipe::StatusCode;
using rawpeer::Bytes;
using rawpeer::from_hex;
using rawpeer::to_hex;
namespace wire = flatpipe::wire;
using wire::FrameAssembler;
using wire::FrameError;
using wire::FrameType;

// docs/protocol.md 16.1, captured from netpipe 0.0.7.
constexpr std::string_view kNetpipeRequest = "00000013 02 00 0000 00000000 00000001 00000003 010203";
constexpr std::string_view kNetpipeResponse = "00000013 02 01 0000 00000000 00000001 00000003 010203";
constexpr std::string_view kNetpipeError = "00000014 02 02 0000 00000000 00000003 00000004 626f6f6d";

Buffer payload_of(std::string_view hex) { return Buffer::copy(std::span<const std::uint8_t>(from_hex(hex))); }

std::string hex_of(const Buffer& b) { return to_hex(b.span()); }

// Copies `bytes` into the assembler, as many reads as prepare() asks for.
void feed(FrameAssembler& a, std::span<const std::uint8_t> bytes) {
  while (!bytes.empty()) {
    auto space = a.prepare();
    ASSERT_FALSE(space.empty());
    const std::size_t n = std::min(space.size(), bytes.size());
    std::memcpy(space.data(), bytes.data(), n);
    a.commit(n);
    bytes = bytes.subspan(n);
  }
}

std::vector<wire::Frame> drain(FrameAssembler& a) {
  std::vector<wire::Frame> out;
  wire::Frame f;
  while (a.next(f)) out.push_back(std::move(f));
  return out;
}

// ---------------------------------------------------------------------------------------------
// (a) the netpipe 0.0.7 vectors

TEST(CodecVectors, NetpipeRequestEncodesByteForByte) {
  wire::OutFrame f(FrameType::request, 0, 0, 1, payload_of("010203"));
  EXPECT_EQ(to_hex(f.to_bytes()), to_hex(from_hex(kNetpipeRequest)));
  EXPECT_EQ(f.size(), 23u);
  EXPECT_EQ(f.payload_size(), 3u);
}

TEST(CodecVectors, NetpipeResponseEncodesByteForByte) {
  wire::OutFrame f(FrameType::response, 0, 0, 1, payload_of("010203"));
  EXPECT_EQ(to_hex(f.to_bytes()), to_hex(from_hex(kNetpipeResponse)));
}

TEST(CodecVectors, NetpipeErrorEncodesByteForByte) {
  // The text travels as `extra` (how the session sends status payloads) and as a body: both
  // must give the same bytes.
  wire::OutFrame as_extra(FrameType::error, 0, 0, 3, {}, "boom");
  EXPECT_EQ(to_hex(as_extra.to_bytes()), to_hex(from_hex(kNetpipeError)));
  wire::OutFrame as_body(FrameType::error, 0, 0, 3, Buffer::copy(std::string_view("boom")));
  EXPECT_EQ(to_hex(as_body.to_bytes()), to_hex(from_hex(kNetpipeError)));
}

TEST(CodecVectors, OutFrameHeaderReadsBack) {
  wire::OutFrame f(FrameType::stream_data, 0x000A, 0xDEADBEEF, 0x15CBDF15, payload_of("aabb"), std::string(1, '\xcc'));
  const wire::FrameHeader h = f.header();
  EXPECT_EQ(h.version, 2);
  EXPECT_EQ(h.type, FrameType::stream_data);
  EXPECT_EQ(h.flags, 0x000A);
  EXPECT_EQ(h.request_id, 0xDEADBEEFu);
  EXPECT_EQ(h.method_id, 0x15CBDF15u);
  EXPECT_EQ(h.payload_len, 3u);
  // extra comes before the body
  EXPECT_EQ(to_hex(f.to_bytes()), to_hex(from_hex("00000013 02 04 000a deadbeef 15cbdf15 00000003 cc aabb")));
}

void expect_decodes(std::string_view hex, FrameType type, std::uint32_t request_id, std::uint32_t method_id,
                    std::string_view payload_hex) {
  SCOPED_TRACE(std::string(hex));
  const Bytes bytes = from_hex(hex);
  FrameAssembler a;
  feed(a, bytes);
  auto frames = drain(a);
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(a.error(), FrameError::none);
  EXPECT_EQ(a.pending_bytes(), 0u);
  const auto& h = frames[0].header;
  EXPECT_EQ(h.version, 2);
  EXPECT_EQ(h.type, type);
  EXPECT_EQ(h.flags, 0);
  EXPECT_EQ(h.request_id, request_id);
  EXPECT_EQ(h.method_id, method_id);
  EXPECT_EQ(h.payload_len, payload_hex.size() / 2);
  EXPECT_EQ(hex_of(frames[0].payload), payload_hex);
  EXPECT_TRUE(frames[0].prefix.empty());
}

TEST(CodecVectors, NetpipeVectorsDecode) {
  expect_decodes(kNetpipeRequest, FrameType::request, 0, 1, "010203");
  expect_decodes(kNetpipeResponse, FrameType::response, 0, 1, "010203");
  expect_decodes(kNetpipeError, FrameType::error, 0, 3, "626f6f6d");
}

TEST(CodecVectors, NetpipeErrorTextDecodesAsUnknown) {
  // 16.1: "boom" has no NAME: prefix, so a flatpipe caller decodes it as UNKNOWN "boom".
  const Bytes bytes = from_hex(kNetpipeError);
  const Status st = wire::decode_status(std::span<const std::uint8_t>(bytes).subspan(20), false);
  EXPECT_EQ(st.code(), StatusCode::unknown);
  EXPECT_EQ(st.message(), "boom");
}

TEST(CodecVectors, DecodeHeaderAndEncodePrefixAreInverse) {
  wire::FrameHeader h;
  h.type = FrameType::goaway;
  h.flags = 0x0010;
  h.request_id = 7;
  h.method_id = 42;
  h.payload_len = 0x22;
  std::uint8_t out[wire::kFrameOverhead];
  wire::encode_prefix_and_header(h, out);
  EXPECT_EQ(to_hex(std::span<const std::uint8_t>(out, sizeof out)),
            to_hex(from_hex("00000032 02 15 0010 00000007 0000002a 00000022")));
  EXPECT_EQ(wire::decode_header(out + wire::kPrefixSize), h);
}

// The other vectors of docs/protocol.md section 16, all pinned.
TEST(CodecVectors, DocumentVectorsEncode) {
  // 16.2 HELLO with flatpipe defaults, keepalive 10 000 ms.
  wire::Hello hello;
  hello.keepalive_ms = 10000;
  EXPECT_EQ(to_hex(wire::OutFrame(FrameType::hello, 0, 0, 0, {}, wire::encode_hello(hello)).to_bytes()),
            to_hex(from_hex("00000028 02 10 0000 00000000 00000000 00000018 "
                            "46504950 01 00 0000 0000003f 01000000 00000040 00002710")));
  // 16.3 Request with a HEADERS block.
  wire::HeaderBlock block;
  block.timeout_us = 250000;
  block.metadata = {{"trace-id", "abc"}};
  std::string extra;
  wire::encode_header_block(block, extra);
  EXPECT_EQ(to_hex(wire::OutFrame(FrameType::request, wire::flags::headers, 0, 0x15CBDF15, payload_of("010203"),
                                  extra)
                       .to_bytes()),
            to_hex(from_hex("00000032 02 00 0020 00000000 15cbdf15 00000022 "
                            "0000001b 00000000 0003d090 0001 0008 74726163652d6964 00000003 616263 010203")));
  // 16.4 full-mode Error.
  const Status unimpl(StatusCode::unimplemented, "no method with id 42 (0x0000002a)");
  EXPECT_EQ(to_hex(wire::OutFrame(FrameType::error, wire::flags::status, 7, 42, {}, wire::encode_status(unimpl, true))
                       .to_bytes()),
            to_hex(from_hex("00000032 02 02 0010 00000007 0000002a 00000022 "
                            "0c 6e6f206d6574686f6420776974682069642034322028307830303030303032 6129")));
  // 16.4 the same failure in compatible mode.
  EXPECT_EQ(to_hex(wire::OutFrame(FrameType::error, 0, 7, 42, {}, wire::encode_status(unimpl, false)).to_bytes()),
            to_hex(from_hex("00000040 02 02 0000 00000007 0000002a 00000030 "
                            "554e494d504c454d454e5445443a206e6f206d6574686f642077697468206964 "
                            "20343220283078303030303030326129")));
  // 16.4 CREDIT, GOAWAY, PING.
  EXPECT_EQ(to_hex(wire::OutFrame(FrameType::credit, 0, 5, 0, payload_of("00000020")).to_bytes()),
            to_hex(from_hex("00000014 02 14 0000 00000005 00000000 00000004 00000020")));
  EXPECT_EQ(to_hex(wire::OutFrame(FrameType::goaway, wire::flags::status, 0, 0, {},
                                  wire::encode_status(Status(StatusCode::ok, "shutting down"), true))
                       .to_bytes()),
            to_hex(from_hex("0000001e 02 15 0010 00000000 00000000 0000000e 00 7368757474696e6720646f776e")));
  EXPECT_EQ(to_hex(wire::OutFrame(FrameType::ping, 0, 0, 0, payload_of("0102030405060708")).to_bytes()),
            to_hex(from_hex("00000018 02 12 0000 00000000 00000000 00000008 0102030405060708")));
}

// ---------------------------------------------------------------------------------------------
// (b) FrameAssembler

Bytes frame_bytes(FrameType type, std::uint32_t id, std::uint32_t method, std::string_view payload,
                  std::uint16_t flags = 0) {
  return wire::OutFrame(type, flags, id, method, Buffer::copy(payload)).to_bytes();
}

TEST(CodecAssembler, ManyFramesInOneRead) {
  Bytes all;
  for (std::uint32_t i = 0; i < 50; ++i) {
    const Bytes one = frame_bytes(FrameType::stream_data, i, 9, std::string(i % 7, static_cast<char>('a' + i % 26)),
                                  0x0002);
    all.insert(all.end(), one.begin(), one.end());
  }
  FrameAssembler a;
  auto space = a.prepare();
  ASSERT_GE(space.size(), all.size());
  std::memcpy(space.data(), all.data(), all.size());
  a.commit(all.size());
  auto frames = drain(a);
  ASSERT_EQ(frames.size(), 50u);
  EXPECT_EQ(a.error(), FrameError::none);
  EXPECT_EQ(a.pending_bytes(), 0u);
  for (std::uint32_t i = 0; i < 50; ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(frames[i].header.request_id, i);
    EXPECT_EQ(frames[i].header.method_id, 9u);
    EXPECT_EQ(frames[i].header.flags, 0x0002);
    EXPECT_EQ(frames[i].payload.to_string(), std::string(i % 7, static_cast<char>('a' + i % 26)));
    if (!frames[i].payload.empty()) {
      // Zero copy: the payload is a slice of the receive buffer.
      EXPECT_GE(frames[i].payload.data(), space.data());
      EXPECT_LE(frames[i].payload.data() + frames[i].payload.size(), space.data() + all.size());
    }
  }
}

TEST(CodecAssembler, FrameSplitIntoOneByteCommits) {
  Bytes all = frame_bytes(FrameType::request, 77, 0x15CBDF15, "hello, world");
  const Bytes second = frame_bytes(FrameType::cancel, 77, 0, "");
  all.insert(all.end(), second.begin(), second.end());
  FrameAssembler a;
  std::vector<wire::Frame> got;
  for (std::size_t i = 0; i < all.size(); ++i) {
    auto space = a.prepare();
    ASSERT_FALSE(space.empty());
    space[0] = all[i];
    a.commit(1);
    wire::Frame f;
    while (a.next(f)) {
      got.push_back(f);
      // A frame completes exactly with its last byte.
      if (got.size() == 1) {
        EXPECT_EQ(i, all.size() - second.size() - 1);
      } else {
        EXPECT_EQ(i, all.size() - 1);
      }
    }
    ASSERT_EQ(a.error(), FrameError::none) << "at byte " << i;
  }
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].header.type, FrameType::request);
  EXPECT_EQ(got[0].header.request_id, 77u);
  EXPECT_EQ(got[0].payload.to_string(), "hello, world");
  EXPECT_EQ(got[1].header.type, FrameType::cancel);
  EXPECT_TRUE(got[1].payload.empty());
  EXPECT_EQ(a.pending_bytes(), 0u);
}

TEST(CodecAssembler, FrameLargerThanTheSlab) {
  std::string big(100000, '\0');
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 31 % 251);
  Bytes all = frame_bytes(FrameType::response, 3, 4, "small");
  const Bytes large = frame_bytes(FrameType::stream_data, 5, 6, big, 0x0002);
  const Bytes after = frame_bytes(FrameType::stream_end, 5, 0, "");
  all.insert(all.end(), large.begin(), large.end());
  all.insert(all.end(), after.begin(), after.end());
  FrameAssembler a(wire::kDefaultMaxFrame, 1024);
  // Fed in reads of at most 700 bytes (smaller than the slab and than the frame).
  std::vector<wire::Frame> got;
  std::span<const std::uint8_t> rest(all);
  while (!rest.empty()) {
    auto space = a.prepare();
    ASSERT_FALSE(space.empty());
    const std::size_t n = std::min({space.size(), rest.size(), std::size_t{700}});
    std::memcpy(space.data(), rest.data(), n);
    a.commit(n);
    rest = rest.subspan(n);
    wire::Frame f;
    while (a.next(f)) got.push_back(f);
    ASSERT_EQ(a.error(), FrameError::none);
  }
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0].payload.to_string(), "small");
  EXPECT_EQ(got[1].header.request_id, 5u);
  EXPECT_EQ(got[1].payload.size(), big.size());
  EXPECT_TRUE(got[1].payload.to_string() == big) << "large payload corrupted";
  EXPECT_EQ(got[2].header.type, FrameType::stream_end);
  EXPECT_EQ(a.pending_bytes(), 0u);
}

// Small frames arriving one read at a time, each kept by the application (as a caller keeps a
// reply): they share one slab instead of one new slab per read, every frame stays intact, and a
// frame that does not fit in what is left of the slab moves whole to a fresh one.
TEST(CodecAssembler, HeldFramesShareTheSlabAcrossReads) {
  constexpr std::size_t kSlab = 4096;
  FrameAssembler a(wire::kDefaultMaxFrame, kSlab);
  std::vector<wire::Frame> kept;
  std::vector<std::string> sent;
  for (std::uint32_t i = 0; i < 200; ++i) {
    sent.push_back("message " + std::to_string(i) + std::string(i % 50, 'x'));
    const Bytes one = frame_bytes(FrameType::response, i, 1, sent.back());
    auto space = a.prepare();
    ASSERT_GE(space.size(), 1u);
    std::size_t fed = 0;
    while (fed < one.size()) {  // a frame may need a second read at the end of a slab
      auto room = fed == 0 ? space : a.prepare();
      const std::size_t n = std::min(room.size(), one.size() - fed);
      std::memcpy(room.data(), one.data() + fed, n);
      a.commit(n);
      fed += n;
    }
    wire::Frame f;
    ASSERT_TRUE(a.next(f)) << "frame " << i;
    ASSERT_EQ(a.error(), FrameError::none);
    kept.push_back(std::move(f));
  }
  for (std::uint32_t i = 0; i < kept.size(); ++i) {
    EXPECT_EQ(kept[i].header.request_id, i);
    EXPECT_EQ(kept[i].payload.to_string(), sent[i]) << "frame " << i << " changed after later reads";
  }
  // About 200 * 60 bytes went through 4 KiB slabs: a handful of slabs, not one per read. (Frames
  // of one slab lie within kSlab bytes of its first frame; live slabs never overlap.)
  std::set<const void*> owners;
  for (const auto& f : kept) {
    const auto* p = f.payload.data();
    bool found = false;
    for (const void* o : owners) {
      const auto* base = static_cast<const std::uint8_t*>(o);
      if (p >= base && p < base + kSlab) found = true;
    }
    if (!found) owners.insert(p);
  }
  EXPECT_LE(owners.size(), 8u) << "a new slab for (nearly) every read";
}

// A frame that begins a read (each request and reply of a round trip does) has its payload
// 8-byte aligned in the receive slab, also when earlier frames are still held, when it does not
// fit in what is left of the slab, and when it is larger than a slab: typed messages are then
// read in place instead of copied to aligned memory.
TEST(CodecAssembler, AFrameThatBeginsAReadHasAnAlignedPayload) {
  const std::vector<std::size_t> sizes = {8, 64, 1024, 48, 3000 * 8, 16, 200000, 8, 4096, 72, 5, 3, 8};
  FrameAssembler a(wire::kDefaultMaxFrame, 8192);
  std::vector<wire::Frame> got;  // all kept: later reads cannot reuse their bytes
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    SCOPED_TRACE("frame " + std::to_string(i) + " of " + std::to_string(sizes[i]) + " bytes");
    const Bytes one = frame_bytes(FrameType::response, static_cast<std::uint32_t>(i), 9,
                                  std::string(sizes[i], static_cast<char>('a' + i)));
    ASSERT_NO_FATAL_FAILURE(feed(a, one));  // as many reads as the room offered takes
    wire::Frame f;
    ASSERT_TRUE(a.next(f));
    ASSERT_EQ(a.error(), FrameError::none);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(f.payload.data()) % 8, 0u) << "payload not 8-byte aligned";
    got.push_back(f);
  }
  for (std::size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].payload.to_string(), std::string(sizes[i], static_cast<char>('a' + i))) << "frame " << i;
  }
}

TEST(CodecAssembler, OversizedLengthRefusedFromThePrefixAlone) {
  // A 2 GiB length against the default 16 MiB limit: refused with the 4 prefix bytes only,
  // before anything is sized for it.
  FrameAssembler a;
  auto first = a.prepare();
  const std::size_t slab = first.size();
  EXPECT_LT(slab, std::size_t{1} << 20);
  const Bytes prefix = from_hex("80000000");
  std::memcpy(first.data(), prefix.data(), prefix.size());
  a.commit(prefix.size());
  wire::Frame f;
  EXPECT_FALSE(a.next(f));
  EXPECT_EQ(a.error(), FrameError::too_large);
  EXPECT_EQ(a.error_length(), 0x80000000u);
  // No giant buffer afterwards either.
  auto space = a.prepare();
  EXPECT_LE(space.size(), slab);
  EXPECT_FALSE(a.next(f));  // the stream cannot be resumed
  EXPECT_EQ(a.error(), FrameError::too_large);
  const std::string why = wire::describe(a.error(), a.error_length(), a.max_body());
  EXPECT_NE(why.find("2147483648"), std::string::npos) << why;
  EXPECT_NE(why.find("16777216"), std::string::npos) << why;
}

TEST(CodecAssembler, LimitIsInclusive) {
  // A body of exactly max_body is accepted; one more byte is not.
  {
    FrameAssembler a(16 + 100);
    feed(a, frame_bytes(FrameType::request, 1, 1, std::string(100, 'x')));
    auto frames = drain(a);
    ASSERT_EQ(frames.size(), 1u);
    EXPECT_EQ(a.error(), FrameError::none);
  }
  {
    FrameAssembler a(16 + 100);
    const Bytes b = frame_bytes(FrameType::request, 1, 1, std::string(101, 'x'));
    feed(a, std::span<const std::uint8_t>(b).first(4));
    EXPECT_TRUE(drain(a).empty());
    EXPECT_EQ(a.error(), FrameError::too_large);
    EXPECT_EQ(a.error_length(), 117u);
  }
}

TEST(CodecAssembler, SetMaxBodyAppliesToTheNextFrame) {
  FrameAssembler a(1024);
  a.set_max_body(64);
  EXPECT_EQ(a.max_body(), 64u);
  feed(a, from_hex("00000041"));
  EXPECT_TRUE(drain(a).empty());
  EXPECT_EQ(a.error(), FrameError::too_large);
}

TEST(CodecAssembler, LengthBelowHeaderRefusedFromThePrefixAlone) {
  for (std::uint32_t len : {0u, 1u, 15u}) {
    SCOPED_TRACE(len);
    FrameAssembler a;
    Bytes p;
    rawpeer::put_be32(p, len);
    feed(a, p);
    EXPECT_TRUE(drain(a).empty());
    EXPECT_EQ(a.error(), FrameError::too_short);
    EXPECT_EQ(a.error_length(), len);
  }
  // Length 16 (empty payload) is fine.
  FrameAssembler a;
  feed(a, from_hex("00000010 02 05 0000 00000001 00000000 00000000"));
  auto frames = drain(a);
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(frames[0].header.type, FrameType::stream_end);
}

TEST(CodecAssembler, PayloadLenMismatchRefusedOnceTheHeaderIsIn) {
  // length says 19 (3 payload bytes), payload_len says 4; only prefix + header are fed.
  FrameAssembler a;
  feed(a, from_hex("00000013 02 00 0000 00000000 00000001 00000004"));
  EXPECT_TRUE(drain(a).empty());
  EXPECT_EQ(a.error(), FrameError::length_mismatch);
  // Also a payload_len smaller than length - 16.
  FrameAssembler b;
  feed(b, from_hex("00000013 02 00 0000 00000000 00000001 00000002 0102"));
  EXPECT_TRUE(drain(b).empty());
  EXPECT_EQ(b.error(), FrameError::length_mismatch);
}

TEST(CodecAssembler, BadVersionRefusedOnceTheHeaderIsIn) {
  for (std::uint8_t version : {std::uint8_t{0}, std::uint8_t{1}, std::uint8_t{3}, std::uint8_t{0xff}}) {
    SCOPED_TRACE(int{version});
    FrameAssembler a;
    Bytes b = from_hex("00000013 02 00 0000 00000000 00000001 00000003");
    b[4] = version;
    feed(a, b);
    EXPECT_TRUE(drain(a).empty());
    EXPECT_EQ(a.error(), FrameError::bad_version);
  }
  // Frames before the bad one in the same read are still handed out.
  Bytes two = from_hex(kNetpipeRequest);
  Bytes bad = from_hex(kNetpipeRequest);
  bad[4] = 1;
  two.insert(two.end(), bad.begin(), bad.end());
  FrameAssembler a;
  feed(a, two);
  EXPECT_EQ(drain(a).size(), 1u);
  EXPECT_EQ(a.error(), FrameError::bad_version);
}

TEST(CodecAssembler, IncompleteHeaderWaitsWithoutError) {
  FrameAssembler a;
  feed(a, from_hex("00000013 02 00 0000 0000"));
  EXPECT_TRUE(drain(a).empty());
  EXPECT_EQ(a.error(), FrameError::none);
  EXPECT_EQ(a.pending_bytes(), 10u);
}

TEST(CodecAssembler, EarlierPayloadsSurviveLaterReads) {
  // Payloads handed out are slices of the receive slab; later reads must never write over them,
  // whether the assembler would reuse the slab from its start, compact it, or grow it.
  FrameAssembler a(wire::kDefaultMaxFrame, 64);
  std::vector<wire::Frame> kept;
  std::vector<std::string> expected;
  for (int round = 0; round < 40; ++round) {
    const std::string payload(static_cast<std::size_t>(5 + round % 30), static_cast<char>('A' + round % 26));
    const Bytes b = frame_bytes(FrameType::stream_data, static_cast<std::uint32_t>(round), 1, payload, 0x0002);
    // Alternate between whole frames and frames split with their tail in the next read.
    const std::size_t cut = round % 2 == 0 ? b.size() : b.size() / 2;
    feed(a, std::span<const std::uint8_t>(b).first(cut));
    wire::Frame f;
    while (a.next(f)) kept.push_back(f);
    feed(a, std::span<const std::uint8_t>(b).subspan(cut));
    while (a.next(f)) kept.push_back(f);
    expected.push_back(payload);
    ASSERT_EQ(a.error(), FrameError::none);
  }
  ASSERT_EQ(kept.size(), expected.size());
  for (std::size_t i = 0; i < kept.size(); ++i) {
    EXPECT_EQ(kept[i].payload.to_string(), expected[i]) << "payload of frame " << i << " was overwritten";
  }
}

TEST(CodecAssembler, PayloadSurvivesCompactionWithPartialFrameBehind) {
  // One read: frame A whole plus the first bytes of B. Taking A and preparing for B's rest is
  // where a compacting assembler could move B's bytes over A's payload.
  FrameAssembler a(wire::kDefaultMaxFrame, 64);
  const Bytes fa = frame_bytes(FrameType::response, 1, 1, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");  // 50 bytes
  const Bytes fb = frame_bytes(FrameType::response, 2, 1, "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB");
  Bytes first(fa);
  first.insert(first.end(), fb.begin(), fb.begin() + 10);
  auto space = a.prepare();
  ASSERT_GE(space.size(), first.size());
  std::memcpy(space.data(), first.data(), first.size());
  a.commit(first.size());
  wire::Frame got_a;
  ASSERT_TRUE(a.next(got_a));
  wire::Frame none;
  EXPECT_FALSE(a.next(none));
  feed(a, std::span<const std::uint8_t>(fb).subspan(10));
  wire::Frame got_b;
  ASSERT_TRUE(a.next(got_b));
  EXPECT_EQ(got_a.payload.to_string(), std::string(30, 'A'));
  EXPECT_EQ(got_b.payload.to_string(), std::string(40, 'B'));
  // And a third frame read after both are held.
  feed(a, frame_bytes(FrameType::response, 3, 1, std::string(40, 'C')));
  wire::Frame got_c;
  ASSERT_TRUE(a.next(got_c));
  EXPECT_EQ(got_a.payload.to_string(), std::string(30, 'A'));
  EXPECT_EQ(got_b.payload.to_string(), std::string(40, 'B'));
  EXPECT_EQ(got_c.payload.to_string(), std::string(40, 'C'));
}

// ---------------------------------------------------------------------------------------------
// (c) header block

Bytes block_bytes(const wire::HeaderBlock& b) {
  std::string s;
  wire::encode_header_block(b, s);
  return Bytes(s.begin(), s.end());
}

TEST(CodecHeaderBlock, RoundTrip) {
  wire::HeaderBlock in;
  in.timeout_us = 0x0102030405060708ull;
  in.metadata = {{"authorization", "Bearer x"}, {"trace-id", "abc"}, {"trace-id", "again"}, {"empty", ""},
                 {"bin", std::string("\0\xff\x01", 3)}, {"", "no key"}};
  Bytes bytes = block_bytes(in);
  const std::size_t block_size = bytes.size();
  bytes.push_back(0x42);  // the body follows
  auto out = wire::decode_header_block(bytes);
  ASSERT_TRUE(out.ok()) << out.status().to_string();
  EXPECT_EQ(out->second, block_size);
  EXPECT_EQ(out->first.timeout_us, in.timeout_us);
  EXPECT_EQ(out->first.metadata, in.metadata);  // order and repeats kept
}

TEST(CodecHeaderBlock, EmptyBlock) {
  const Bytes bytes = block_bytes({});
  EXPECT_EQ(to_hex(bytes), "0000000a00000000000000000000");
  auto out = wire::decode_header_block(bytes);
  ASSERT_TRUE(out.ok()) << out.status().to_string();
  EXPECT_EQ(out->second, 14u);
  EXPECT_EQ(out->first.timeout_us, 0u);
  EXPECT_TRUE(out->first.metadata.empty());
}

TEST(CodecHeaderBlock, DocumentVectorDecodes) {
  const Bytes bytes = from_hex("0000001b 00000000 0003d090 0001 0008 74726163652d6964 00000003 616263 010203");
  auto out = wire::decode_header_block(bytes);
  ASSERT_TRUE(out.ok()) << out.status().to_string();
  EXPECT_EQ(out->second, 31u);
  EXPECT_EQ(out->first.timeout_us, 250000u);
  ASSERT_EQ(out->first.metadata.size(), 1u);
  EXPECT_EQ(out->first.metadata[0].first, "trace-id");
  EXPECT_EQ(out->first.metadata[0].second, "abc");
}

TEST(CodecHeaderBlock, ExactlySixtyFourKiBIsAccepted) {
  wire::HeaderBlock in;
  // hdr_len = 10 + 2 + 1 + 4 + v = 65536
  in.metadata = {{"k", std::string(65536 - 17, 'v')}};
  const Bytes bytes = block_bytes(in);
  EXPECT_EQ(rawpeer::be32(bytes.data()), 65536u);
  auto out = wire::decode_header_block(bytes);
  ASSERT_TRUE(out.ok()) << out.status().to_string();
  EXPECT_EQ(out->first.metadata, in.metadata);
}

void expect_malformed(const Bytes& bytes, std::string_view what) {
  SCOPED_TRACE(std::string(what) + ": " + to_hex(bytes).substr(0, 80));
  auto out = wire::decode_header_block(bytes);
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.code(), StatusCode::invalid_argument) << out.status().to_string();
}

TEST(CodecHeaderBlock, MalformedBlocksAreInvalidArgument) {
  expect_malformed({}, "empty payload");
  expect_malformed(from_hex("000000"), "shorter than the length field");
  expect_malformed(from_hex("0000000a 00000000 0000"), "hdr_len runs past the payload");
  expect_malformed(from_hex("00000009 00000000 00000000"), "hdr_len below 10");
  expect_malformed(from_hex("00000000"), "hdr_len 0");
  // count says 1 but no entry follows
  expect_malformed(from_hex("0000000a 00000000 00000000 0001"), "truncated key length");
  expect_malformed(from_hex("0000000c 00000000 00000000 0001 0005"), "truncated key");
  expect_malformed(from_hex("0000000d 00000000 00000000 0001 0001 6b"), "truncated value length");
  expect_malformed(from_hex("00000014 00000000 00000000 0001 0001 6b 00000004 616263"), "truncated value");
  expect_malformed(from_hex("0000000c 00000000 00000000 0000 ffff"), "trailing bytes");
  expect_malformed(from_hex("00000013 00000000 00000000 0001 0001 6b 00000001 61 00"), "trailing byte after entry");
  // Over 64 KiB, with enough bytes behind it that only the limit can be the reason.
  Bytes big = from_hex("00010001 00000000 00000000 0000");
  big.resize(4 + 65537, 0);
  expect_malformed(big, "hdr_len over 64 KiB");
  // A correct block whose entry claims more value bytes than the block holds.
  expect_malformed(from_hex("00000012 00000000 00000000 0001 0001 6b ffffffff 61 010203"), "value_len huge");
}

// ---------------------------------------------------------------------------------------------
// (d) HELLO

TEST(CodecHello, EncodeMatchesLayout) {
  wire::Hello h;
  h.minor = 3;
  h.features = 0x0000002b;
  h.max_frame = 0x00abcdef;
  h.initial_credit = 7;
  h.keepalive_ms = 0x01020304;
  const std::string p = wire::encode_hello(h);
  ASSERT_EQ(p.size(), wire::kHelloSize);
  EXPECT_EQ(to_hex(std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(p.data()), p.size())),
            "46504950" "0103" "0000" "0000002b" "00abcdef" "00000007" "01020304");
}

TEST(CodecHello, RoundTripAndLongerPayload) {
  wire::Hello h;
  h.features = 0x15;
  h.max_frame = 16;
  h.initial_credit = 1;
  h.keepalive_ms = 250;
  std::string p = wire::encode_hello(h);
  auto back =
      wire::decode_hello(std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(p.data()), p.size()));
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_EQ(back->major, 1);
  EXPECT_EQ(back->minor, 0);
  EXPECT_EQ(back->features, 0x15u);
  EXPECT_EQ(back->max_frame, 16u);
  EXPECT_EQ(back->initial_credit, 1u);
  EXPECT_EQ(back->keepalive_ms, 250u);
  // Bytes after 24 are ignored, reserved bytes too, and a newer minor is fine.
  Bytes longer = rawpeer::hello_payload(0x3f, 4096, 9, 0, 1, 7);
  longer[6] = 0xaa;
  longer[7] = 0x55;
  longer.insert(longer.end(), {1, 2, 3, 4, 5, 6});
  auto l = wire::decode_hello(longer);
  ASSERT_TRUE(l.ok()) << l.status().to_string();
  EXPECT_EQ(l->minor, 7);
  EXPECT_EQ(l->max_frame, 4096u);
  EXPECT_EQ(l->initial_credit, 9u);
}

TEST(CodecHello, Errors) {
  const Bytes good = rawpeer::hello_payload();
  ASSERT_TRUE(wire::decode_hello(good).ok());
  {
    auto r = wire::decode_hello(std::span<const std::uint8_t>(good).first(23));
    EXPECT_EQ(r.code(), StatusCode::invalid_argument) << "short";
  }
  {
    auto r = wire::decode_hello({});
    EXPECT_EQ(r.code(), StatusCode::invalid_argument) << "empty";
  }
  {
    Bytes b = good;
    b[3] = 'Q';
    auto r = wire::decode_hello(b);
    EXPECT_EQ(r.code(), StatusCode::invalid_argument) << "bad magic";
  }
  {
    auto r = wire::decode_hello(rawpeer::hello_payload(0x3f, 1 << 20, 64, 0, 2, 0));
    EXPECT_EQ(r.code(), StatusCode::failed_precondition) << "major 2";
  }
  {
    auto r = wire::decode_hello(rawpeer::hello_payload(0x3f, 1 << 20, 64, 0, 0, 0));
    EXPECT_EQ(r.code(), StatusCode::failed_precondition) << "major 0";
  }
  {
    auto r = wire::decode_hello(rawpeer::hello_payload(0x3f, 15, 64, 0));
    EXPECT_EQ(r.code(), StatusCode::invalid_argument) << "max_frame 15";
  }
  {
    auto r = wire::decode_hello(rawpeer::hello_payload(0x3f, 1 << 20, 0, 0));
    EXPECT_EQ(r.code(), StatusCode::invalid_argument) << "initial_credit 0";
  }
}

// ---------------------------------------------------------------------------------------------
// (e) status payloads

Status decode_text(std::string_view text) {
  return wire::decode_status(
      std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(text.data()), text.size()), false);
}
Status decode_coded(const Bytes& bytes) { return wire::decode_status(bytes, true); }

TEST(CodecStatus, EncodeCompatibleText) {
  EXPECT_EQ(wire::encode_status(Status(StatusCode::internal, "boom"), false), "INTERNAL: boom");
  EXPECT_EQ(wire::encode_status(Status(StatusCode::not_found, ""), false), "NOT_FOUND");
  EXPECT_EQ(wire::encode_status(Status(StatusCode::unauthenticated, "who: are you"), false),
            "UNAUTHENTICATED: who: are you");
}

TEST(CodecStatus, EncodeWithCode) {
  EXPECT_EQ(wire::encode_status(Status(StatusCode::internal, "boom"), true), std::string("\x0d" "boom"));
  EXPECT_EQ(wire::encode_status(Status(StatusCode::cancelled, ""), true), std::string("\x01"));
  EXPECT_EQ(wire::encode_status(Status(StatusCode::unauthenticated, "x"), true), std::string("\x10" "x"));
}

TEST(CodecStatus, DecodeCompatibleText) {
  Status st = decode_text("UNIMPLEMENTED: no method with id 42 (0x0000002a)");
  EXPECT_EQ(st.code(), StatusCode::unimplemented);
  EXPECT_EQ(st.message(), "no method with id 42 (0x0000002a)");

  st = decode_text("NOT_FOUND");
  EXPECT_EQ(st.code(), StatusCode::not_found);
  EXPECT_EQ(st.message(), "");

  st = decode_text("DEADLINE_EXCEEDED: a: b");  // only the first ": " splits
  EXPECT_EQ(st.code(), StatusCode::deadline_exceeded);
  EXPECT_EQ(st.message(), "a: b");

  // netpipe's own texts carry no canonical name: UNKNOWN with the whole text.
  for (std::string_view text : {"No handler for method_id: 42", "Request cancelled by peer",
                                "Handler timeout after 30000ms", "Server overloaded: 1000 pending", "boom",
                                "internal: lower case", "UNIMPLEMENTED:no space", "NOT_FOUND ", ""}) {
    SCOPED_TRACE(std::string(text));
    st = decode_text(text);
    EXPECT_EQ(st.code(), StatusCode::unknown);
    EXPECT_EQ(st.message(), text);
  }
}

TEST(CodecStatus, DecodeWithCode) {
  Status st = decode_coded(from_hex("0c 6e6f206d6574686f64"));
  EXPECT_EQ(st.code(), StatusCode::unimplemented);
  EXPECT_EQ(st.message(), "no method");

  st = decode_coded(from_hex("10"));
  EXPECT_EQ(st.code(), StatusCode::unauthenticated);
  EXPECT_EQ(st.message(), "");

  // The text is not parsed for a name when the code byte is there.
  st = decode_coded(Bytes{0x03, 'N', 'O', 'T', '_', 'F', 'O', 'U', 'N', 'D', ':', ' ', 'x'});
  EXPECT_EQ(st.code(), StatusCode::invalid_argument);
  EXPECT_EQ(st.message(), "NOT_FOUND: x");

  // Codes above 16 become UNKNOWN.
  for (std::uint8_t code : {std::uint8_t{17}, std::uint8_t{100}, std::uint8_t{255}}) {
    st = decode_coded(Bytes{code, 'h', 'i'});
    EXPECT_EQ(st.code(), StatusCode::unknown) << int{code};
    EXPECT_EQ(st.message(), "hi");
  }

  // An empty payload.
  st = decode_coded({});
  EXPECT_EQ(st.code(), StatusCode::unknown);
  EXPECT_EQ(st.message(), "error frame without a status code");
}

TEST(CodecStatus, CodeZeroInAnErrorIsUnknown) {
  EXPECT_EQ(decode_coded(Bytes{0x00}).code(), StatusCode::unknown);
  EXPECT_EQ(decode_coded(Bytes{0x00, 'o', 'k'}).code(), StatusCode::unknown);
  EXPECT_EQ(decode_text("OK").code(), StatusCode::unknown);
  EXPECT_EQ(decode_text("OK: fine").code(), StatusCode::unknown);
}

TEST(CodecStatus, EveryCodeRoundTripsBothWays) {
  for (std::uint8_t c = 1; c <= flatpipe::kMaxStatusCode; ++c) {
    const Status in(static_cast<StatusCode>(c), "message " + std::to_string(c));
    SCOPED_TRACE(in.to_string());
    const std::string text = wire::encode_status(in, false);
    EXPECT_EQ(decode_text(text), in);
    const std::string coded = wire::encode_status(in, true);
    EXPECT_EQ(wire::decode_status(std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(coded.data()),
                                                                coded.size()),
                                  true),
              in);
  }
}

// ---------------------------------------------------------------------------------------------
// (f) endpoints

TEST(CodecEndpoint, ParsesSchemesAddressesAndQueries) {
  auto ep = flatpipe::Endpoint::parse("tcp://127.0.0.1:7447");
  ASSERT_TRUE(ep.ok()) << ep.status().to_string();
  EXPECT_EQ(ep->scheme, "tcp");
  EXPECT_EQ(ep->address, "127.0.0.1:7447");
  EXPECT_TRUE(ep->params.empty());
  EXPECT_EQ(ep->to_string(), "tcp://127.0.0.1:7447");

  ep = flatpipe::Endpoint::parse("TCP://[::1]:7447?mode=netpipe&x=1&flag");
  ASSERT_TRUE(ep.ok()) << ep.status().to_string();
  EXPECT_EQ(ep->scheme, "tcp");
  EXPECT_EQ(ep->address, "[::1]:7447");
  EXPECT_EQ(ep->param("mode"), "netpipe");
  EXPECT_EQ(ep->param("x"), "1");
  EXPECT_EQ(ep->param("flag", "fallback"), "");
  EXPECT_TRUE(ep->has_param("flag"));
  EXPECT_FALSE(ep->has_param("missing"));
  EXPECT_EQ(ep->param("missing", "fallback"), "fallback");
  EXPECT_EQ(ep->to_string(), "tcp://[::1]:7447?mode=netpipe&x=1&flag");

  ep = flatpipe::Endpoint::parse("unix:///run/robot.sock");
  ASSERT_TRUE(ep.ok());
  EXPECT_EQ(ep->scheme, "unix");
  EXPECT_EQ(ep->address, "/run/robot.sock");

  ep = flatpipe::Endpoint::parse("unix://@robot?mode=netpipe");
  ASSERT_TRUE(ep.ok());
  EXPECT_EQ(ep->address, "@robot");
  EXPECT_EQ(ep->param("mode"), "netpipe");

  ep = flatpipe::Endpoint::parse("inproc://robot");
  ASSERT_TRUE(ep.ok());
  EXPECT_EQ(ep->scheme, "inproc");
  EXPECT_EQ(ep->address, "robot");
}

TEST(CodecEndpoint, RejectsBadUris) {
  for (std::string_view bad : {"", "127.0.0.1:7447", "tcp:/127.0.0.1:1", "://127.0.0.1:1", "tcp://",
                               "tcp://?mode=netpipe", "unix://"}) {
    SCOPED_TRACE(std::string(bad));
    auto ep = flatpipe::Endpoint::parse(bad);
    ASSERT_FALSE(ep.ok());
    EXPECT_EQ(ep.code(), StatusCode::invalid_argument);
  }
}

TEST(CodecEndpoint, SplitHostPort) {
  auto hp = flatpipe::split_host_port("127.0.0.1:7447");
  ASSERT_TRUE(hp.ok()) << hp.status().to_string();
  EXPECT_EQ(hp->first, "127.0.0.1");
  EXPECT_EQ(hp->second, 7447);

  hp = flatpipe::split_host_port("[::1]:65535");
  ASSERT_TRUE(hp.ok()) << hp.status().to_string();
  EXPECT_EQ(hp->first, "::1");
  EXPECT_EQ(hp->second, 65535);

  hp = flatpipe::split_host_port("robot.local:0");
  ASSERT_TRUE(hp.ok()) << hp.status().to_string();
  EXPECT_EQ(hp->first, "robot.local");
  EXPECT_EQ(hp->second, 0);

  for (std::string_view bad : {"", "127.0.0.1", ":7447", "host:", "host:65536", "host:12a", "host:-1", "host: 1",
                               "[::1]7447", "[::1]:", "[::1", "[::1]", "host:99999999999999999999"}) {
    SCOPED_TRACE(std::string(bad));
    auto r = flatpipe::split_host_port(bad);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.code(), StatusCode::invalid_argument);
  }
}

}  // namespace
