// The shm transport's shared-memory segment: its byte layout, how one is created, and how a
// peer's segment is checked and mapped (docs/transports/shm.md, "Segment layout").
//
// Each side of a connection creates one segment (a sealed memfd) and is its only writer; the
// other side maps it read-only. A segment holds, written by its owner only:
//   - the owner's outgoing descriptor ring (one 64-byte descriptor per frame, each carrying its
//     own sequence number, so a reader polls the slot it expects next and nothing else);
//   - the owner's release ring: ids of the peer's leases the owner no longer uses, and its head;
//   - the owner's consumption counters of the peer's two rings (desc_tail, release_tail);
//   - the owner's sleep and wait words (wakeup protocol);
//   - the heap: the owner's outgoing message bodies.
// Everything a side reads from its peer's segment is untrusted: indices are read once and
// bounds-checked, descriptors are copied out of the ring before they are checked, and every
// (offset, length) is checked against the heap before a pointer is formed.
#pragma once

#include <sys/socket.h>
#include <sys/uio.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>

#include "flatpipe/status.hpp"

namespace flatpipe::shm {

inline constexpr std::uint64_t kSegmentMagic = 0x314d48535450464cull;  // "LFPTSHM1" little-endian
inline constexpr std::uint32_t kLayoutVersion = 2;
inline constexpr std::size_t kHeaderBytes = 4096;
inline constexpr std::uint32_t kDescSlots = 4096;      // descriptors in flight per direction
inline constexpr std::size_t kDescBytes = 64;
inline constexpr std::uint32_t kMaxLeases = 8192;      // leases a sender may have outstanding
inline constexpr std::uint32_t kReleaseSlots = kMaxLeases;  // so a release ring never overflows
inline constexpr std::size_t kHeapAlign = 64;
inline constexpr std::uint64_t kDefaultSegmentSize = 64ull << 20;
inline constexpr std::uint64_t kMinSegmentSize = 1ull << 20;
inline constexpr std::uint64_t kMaxSegmentSize = 4ull << 30;

static_assert(std::atomic<std::uint64_t>::is_always_lock_free, "shared-memory atomics must be lock-free");
static_assert(std::atomic<std::uint32_t>::is_always_lock_free, "shared-memory atomics must be lock-free");

// The first page of a segment. The identity fields are written before the segment is handed to
// the peer and never change; the atomics are written by the owner and read by the peer.
struct SegmentHeader {
  std::uint64_t magic;
  std::uint32_t version;
  std::uint32_t header_bytes;
  std::uint64_t segment_size;
  std::uint32_t desc_slots;
  std::uint32_t desc_bytes;
  std::uint32_t release_slots;
  std::uint32_t reserved0;
  std::uint64_t desc_offset;
  std::uint64_t release_offset;
  std::uint64_t heap_offset;
  std::uint64_t heap_size;

  // Each on its own cache line: written by the owner, polled by the peer.
  alignas(64) std::uint64_t reserved1;                  // layout 1's desc_head; unused
  alignas(64) std::atomic<std::uint64_t> release_head;  // releases published by the owner
  alignas(64) std::atomic<std::uint64_t> desc_tail;     // peer descriptors the owner consumed
  alignas(64) std::atomic<std::uint64_t> release_tail;  // peer releases the owner consumed
  alignas(64) std::atomic<std::uint32_t> sleep_word;    // (epoch << 1) | 1: owner's reader sleeps
  alignas(64) std::atomic<std::uint32_t> wait_word;     // (epoch << 1) | 1: owner waits for room
};
static_assert(sizeof(SegmentHeader) <= kHeaderBytes);

// One frame in a descriptor ring. `head` is the frame's V2 length prefix and header exactly as
// a byte-stream transport would send them. `seq` is written last (a release store, see
// publish_desc / desc_seq): descriptor number i (from 0) carries seq i + 1, so a slot whose seq is
// the next expected number holds a complete descriptor, and until then it holds the previous
// lap's number (or 0). One line per frame is all a polling reader touches before the payload.
enum class DescKind : std::uint8_t {
  heap = 0,   // payload = [prefix_offset, +prefix_len) then [body_offset, +body_len) in the heap
  memfd = 1,  // payload = the first body_len bytes of a sealed memfd sent on the socket before it
};
struct Desc {
  std::uint8_t head[20];
  std::uint8_t kind;
  std::uint8_t reserved[3];
  std::uint64_t lease;  // 0: none; else the sender's id, released by the receiver when done
  std::uint64_t prefix_offset;
  std::uint64_t body_offset;
  std::uint32_t prefix_len;
  std::uint32_t body_len;
  std::uint64_t seq;
};
static_assert(sizeof(Desc) == kDescBytes);
static_assert(offsetof(Desc, seq) % 8 == 0);

// Writes `d` into `slot` with sequence number `seq`: every other field first, then seq with a
// release store. The owner's side of a ring.
inline void publish_desc(Desc* slot, const Desc& d, std::uint64_t seq) noexcept {
  std::memcpy(static_cast<void*>(slot), &d, offsetof(Desc, seq));
  __atomic_store_n(&slot->seq, seq, __ATOMIC_RELEASE);
}
// The sequence number in a peer's slot (an acquire load: the fields written before it are then
// visible). The reader's side; the value is untrusted.
inline std::uint64_t desc_seq(const Desc* slot) noexcept { return __atomic_load_n(&slot->seq, __ATOMIC_ACQUIRE); }

// Where the rings and the heap lie in a segment of `segment_size` bytes (a pure function of the
// size, so a receiver recomputes it and compares instead of trusting the header).
struct Layout {
  std::uint64_t segment_size = 0;
  std::uint64_t desc_offset = 0;
  std::uint64_t release_offset = 0;
  std::uint64_t heap_offset = 0;
  std::uint64_t heap_size = 0;
};
Layout layout_for(std::uint64_t segment_size) noexcept;

// An owned file descriptor (closed on destruction).
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) noexcept : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }
  int get() const noexcept { return fd_; }
  int release() noexcept { return std::exchange(fd_, -1); }
  void reset() noexcept;
  explicit operator bool() const noexcept { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

// What a mapping holds, for region_of().
enum class Region : std::uint8_t {
  none,      // not shm memory of this process
  outgoing,  // a segment this process writes (its outgoing heap)
  incoming,  // a peer's segment or a received large message, mapped read-only
};

// An mmap()ed range, unmapped on destruction. Registered for region_of() while it lives.
class Mapping {
 public:
  Mapping() = default;
  Mapping(std::uint8_t* base, std::size_t size, Region region) noexcept;
  Mapping(Mapping&& o) noexcept
      : base_(std::exchange(o.base_, nullptr)), size_(std::exchange(o.size_, 0)), region_(o.region_) {}
  Mapping& operator=(Mapping&& o) noexcept;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() { reset(); }
  void reset() noexcept;

  std::uint8_t* data() const noexcept { return base_; }
  std::size_t size() const noexcept { return size_; }
  bool contains(const void* p, std::size_t n) const noexcept;

 private:
  std::uint8_t* base_ = nullptr;
  std::size_t size_ = 0;
  Region region_ = Region::none;
};

// The handshake record each side sends once on the Unix socket, with its segment's memfd
// attached (SCM_RIGHTS): the connector first, then the acceptor.
inline constexpr std::uint64_t kHelloMagic = 0x4f4c4c45484d5346ull;  // "FSMHELLO" little-endian
inline constexpr std::uint32_t kHelloVersion = 1;
struct HelloRecord {
  std::uint64_t magic;
  std::uint32_t version;
  std::uint32_t pid;
  std::uint64_t segment_size;
  std::uint64_t reserved;
};
// The abstract Unix socket name of shm://name, without the leading NUL.
inline std::string socket_name(const std::string& name) { return "flatpipe-shm/" + name; }

// Which kind of shm memory `p` lies in (tests check zero-copy with it). Thread-safe.
Region region_of(const void* p) noexcept;

// A new segment of `segment_size` bytes: a sealed memfd (it cannot shrink or grow, so a peer's
// mapping can never fault), mapped read-write, header initialised. Errors: UNAVAILABLE with the
// system's reason.
struct OwnSegment {
  UniqueFd fd;  // to hand to the peer; may be closed once sent
  Mapping map;
  Layout layout;
};
Result<OwnSegment> create_segment(std::uint64_t segment_size);

// Maps a peer's segment read-only after checking it: a memfd sealed against shrinking, a size
// within limits, and a header whose every identity field matches the layout its size implies.
// Errors: INVALID_ARGUMENT naming the fault; UNAVAILABLE for system errors.
struct PeerSegment {
  Mapping map;
  Layout layout;
};
Result<PeerSegment> map_peer_segment(int fd);

// A sealed, immutable memfd holding `a` then `b` (the large-message path). UNAVAILABLE on
// system errors.
Result<UniqueFd> create_message_fd(const std::uint8_t* a, std::size_t a_len, const std::uint8_t* b,
                                   std::size_t b_len);
// Maps the first `length` bytes of a received message memfd read-only after checking its seals
// (no shrink, no write) and size. Errors: INVALID_ARGUMENT naming the fault.
Result<Mapping> map_message_fd(int fd, std::uint64_t length);

// Parses a size with an optional K/M/G suffix ("64M"). nullopt-like: 0 when malformed.
std::uint64_t parse_size(const std::string& text) noexcept;

// One sendmsg of [data, data + n) on `sock`, with `fd` attached (SCM_RIGHTS) when fd >= 0;
// retried on EINTR only. Returns what sendmsg returned (-1 with errno set on failure). The caller
// keeps `fd` open: the kernel duplicates it into the record.
inline ssize_t send_with_fd(int sock, const void* data, std::size_t n, int fd, int flags) {
  iovec iov{const_cast<void*>(data), n};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
  if (fd >= 0) {
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
  }
  for (;;) {
    const ssize_t sent = ::sendmsg(sock, &msg, flags);
    if (sent >= 0 || errno != EINTR) return sent;
  }
}

}  // namespace flatpipe::shm
