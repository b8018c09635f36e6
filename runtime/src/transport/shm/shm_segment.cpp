#include "transport/shm/shm_segment.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <new>
#include <vector>

namespace flatpipe::shm {
namespace {

constexpr std::uint64_t kPage = 4096;

std::uint64_t round_up(std::uint64_t v, std::uint64_t to) noexcept { return (v + to - 1) / to * to; }

Status sys_error(const std::string& what) {
  return Status(StatusCode::unavailable, "shm: " + what + ": " + std::strerror(errno));
}

// The process's shm mappings, for region_of(). Changed only when a mapping is made or undone.
struct RegionTable {
  std::mutex mu;
  struct Entry {
    const std::uint8_t* begin;
    const std::uint8_t* end;
    Region region;
  };
  std::vector<Entry> entries;
};
RegionTable& regions() {
  static RegionTable* table = new RegionTable;  // never destroyed: mappings may outlive statics
  return *table;
}

}  // namespace

Layout layout_for(std::uint64_t segment_size) noexcept {
  Layout l;
  l.segment_size = segment_size;
  l.desc_offset = kHeaderBytes;
  l.release_offset = l.desc_offset + std::uint64_t{kDescSlots} * kDescBytes;
  l.heap_offset = round_up(l.release_offset + std::uint64_t{kReleaseSlots} * sizeof(std::uint64_t), kPage);
  l.heap_size = segment_size > l.heap_offset ? segment_size - l.heap_offset : 0;
  return l;
}

void UniqueFd::reset() noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

Mapping::Mapping(std::uint8_t* base, std::size_t size, Region region) noexcept
    : base_(base), size_(size), region_(region) {
  if (!base_) return;
  auto& t = regions();
  std::lock_guard lk(t.mu);
  t.entries.push_back({base_, base_ + size_, region_});
}

Mapping& Mapping::operator=(Mapping&& o) noexcept {
  if (this != &o) {
    reset();
    base_ = std::exchange(o.base_, nullptr);
    size_ = std::exchange(o.size_, 0);
    region_ = o.region_;
  }
  return *this;
}

void Mapping::reset() noexcept {
  if (!base_) return;
  {
    auto& t = regions();
    std::lock_guard lk(t.mu);
    auto it = std::find_if(t.entries.begin(), t.entries.end(), [this](const auto& e) { return e.begin == base_; });
    if (it != t.entries.end()) t.entries.erase(it);
  }
  ::munmap(base_, size_);
  base_ = nullptr;
  size_ = 0;
}

bool Mapping::contains(const void* p, std::size_t n) const noexcept {
  const auto* b = static_cast<const std::uint8_t*>(p);
  return base_ && b >= base_ && b <= base_ + size_ && n <= static_cast<std::size_t>(base_ + size_ - b);
}

Region region_of(const void* p) noexcept {
  const auto* b = static_cast<const std::uint8_t*>(p);
  auto& t = regions();
  std::lock_guard lk(t.mu);
  for (const auto& e : t.entries) {
    if (b >= e.begin && b < e.end) return e.region;
  }
  return Region::none;
}

Result<OwnSegment> create_segment(std::uint64_t segment_size) {
  if (segment_size < kMinSegmentSize || segment_size > kMaxSegmentSize || segment_size % kPage != 0) {
    return Status(StatusCode::invalid_argument,
                  "shm: segment size " + std::to_string(segment_size) + " is not a multiple of 4096 in [1 MiB, 4 GiB]");
  }
  UniqueFd fd(::memfd_create("flatpipe-shm", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd) return sys_error("memfd_create");
  if (::ftruncate(fd.get(), static_cast<off_t>(segment_size)) != 0) return sys_error("ftruncate");
  if (::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) return sys_error("seal");
  void* p = ::mmap(nullptr, segment_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (p == MAP_FAILED) return sys_error("mmap");
  OwnSegment seg{std::move(fd), Mapping(static_cast<std::uint8_t*>(p), segment_size, Region::outgoing),
                 layout_for(segment_size)};
  // The pages are fresh (zero); the header's atomics are constructed in place.
  auto* h = new (seg.map.data()) SegmentHeader{};
  h->magic = kSegmentMagic;
  h->version = kLayoutVersion;
  h->header_bytes = static_cast<std::uint32_t>(kHeaderBytes);
  h->segment_size = segment_size;
  h->desc_slots = kDescSlots;
  h->desc_bytes = static_cast<std::uint32_t>(kDescBytes);
  h->release_slots = kReleaseSlots;
  h->desc_offset = seg.layout.desc_offset;
  h->release_offset = seg.layout.release_offset;
  h->heap_offset = seg.layout.heap_offset;
  h->heap_size = seg.layout.heap_size;
  return seg;
}

Result<PeerSegment> map_peer_segment(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return sys_error("fstat of the peer's segment");
  const auto size = static_cast<std::uint64_t>(st.st_size);
  if (size < kMinSegmentSize || size > kMaxSegmentSize || size % kPage != 0) {
    return Status(StatusCode::invalid_argument, "shm: the peer's segment has an invalid size " + std::to_string(size));
  }
  const int seals = ::fcntl(fd, F_GET_SEALS);
  if (seals < 0 || !(seals & F_SEAL_SHRINK)) {
    return Status(StatusCode::invalid_argument, "shm: the peer's segment is not a memfd sealed against shrinking");
  }
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return sys_error("mmap of the peer's segment");
  PeerSegment seg{Mapping(static_cast<std::uint8_t*>(p), size, Region::incoming), layout_for(size)};
  // Identity fields, read once into a local copy and compared with what the size implies.
  const auto* h = reinterpret_cast<const SegmentHeader*>(seg.map.data());
  struct Identity {
    std::uint64_t magic, segment_size, desc_offset, release_offset, heap_offset, heap_size;
    std::uint32_t version, header_bytes, desc_slots, desc_bytes, release_slots;
  } id{h->magic, h->segment_size, h->desc_offset, h->release_offset, h->heap_offset, h->heap_size,
       h->version, h->header_bytes, h->desc_slots, h->desc_bytes, h->release_slots};
  const Layout& l = seg.layout;
  if (id.magic != kSegmentMagic || id.version != kLayoutVersion) {
    if (id.magic == kSegmentMagic) {
      return Status(StatusCode::invalid_argument, "shm: the peer's segment has layout version " +
                                                      std::to_string(id.version) + ", this side speaks " +
                                                      std::to_string(kLayoutVersion));
    }
    return Status(StatusCode::invalid_argument, "shm: the peer's segment is not a flatpipe shm segment");
  }
  if (id.segment_size != size || id.header_bytes != kHeaderBytes || id.desc_slots != kDescSlots ||
      id.desc_bytes != kDescBytes || id.release_slots != kReleaseSlots || id.desc_offset != l.desc_offset ||
      id.release_offset != l.release_offset || id.heap_offset != l.heap_offset || id.heap_size != l.heap_size ||
      l.heap_size == 0) {
    return Status(StatusCode::invalid_argument, "shm: the peer's segment header does not match its size");
  }
  return seg;
}

Result<UniqueFd> create_message_fd(const std::uint8_t* a, std::size_t a_len, const std::uint8_t* b,
                                   std::size_t b_len) {
  UniqueFd fd(::memfd_create("flatpipe-shm-msg", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd) return sys_error("memfd_create");
  const std::size_t total = a_len + b_len;
  if (::ftruncate(fd.get(), static_cast<off_t>(total)) != 0) return sys_error("ftruncate");
  auto write_all = [&](const std::uint8_t* p, std::size_t n, std::size_t at) -> bool {
    while (n > 0) {
      const ssize_t w = ::pwrite(fd.get(), p, n, static_cast<off_t>(at));
      if (w < 0) {
        if (errno == EINTR) continue;
        return false;
      }
      p += w;
      at += static_cast<std::size_t>(w);
      n -= static_cast<std::size_t>(w);
    }
    return true;
  };
  if (!write_all(a, a_len, 0) || !write_all(b, b_len, a_len)) return sys_error("write of a large message");
  if (::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) != 0) {
    return sys_error("seal of a large message");
  }
  return fd;
}

Result<Mapping> map_message_fd(int fd, std::uint64_t length) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return sys_error("fstat of a large message");
  const int seals = ::fcntl(fd, F_GET_SEALS);
  constexpr int kNeeded = F_SEAL_SHRINK | F_SEAL_WRITE;
  if (seals < 0 || (seals & kNeeded) != kNeeded) {
    return Status(StatusCode::invalid_argument, "shm: a large message is not a memfd sealed against writes");
  }
  if (static_cast<std::uint64_t>(st.st_size) < length || length == 0) {
    return Status(StatusCode::invalid_argument, "shm: a large message's memfd holds " + std::to_string(st.st_size) +
                                                    " bytes, the descriptor claims " + std::to_string(length));
  }
  void* p = ::mmap(nullptr, length, PROT_READ, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return sys_error("mmap of a large message");
  return Mapping(static_cast<std::uint8_t*>(p), length, Region::incoming);
}

std::uint64_t parse_size(const std::string& text) noexcept {
  if (text.empty()) return 0;
  std::uint64_t v = 0;
  std::size_t i = 0;
  for (; i < text.size() && text[i] >= '0' && text[i] <= '9'; ++i) {
    if (v > (UINT64_MAX - 9) / 10) return 0;
    v = v * 10 + static_cast<std::uint64_t>(text[i] - '0');
  }
  if (i == 0) return 0;
  std::uint64_t mul = 1;
  if (i + 1 == text.size()) {
    switch (text[i]) {
      case 'K': case 'k': mul = 1ull << 10; break;
      case 'M': case 'm': mul = 1ull << 20; break;
      case 'G': case 'g': mul = 1ull << 30; break;
      default: return 0;
    }
  } else if (i != text.size()) {
    return 0;
  }
  if (v > UINT64_MAX / mul) return 0;
  return v * mul;
}

}  // namespace flatpipe::shm
