#include "transport/shm/shm_connection.hpp"

#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <cstdio>
#include <iterator>
#include <thread>
#include <utility>

#include <asio/post.hpp>

#include "flatpipe/util/spin.hpp"

namespace flatpipe::shm {
namespace {

using namespace std::chrono_literals;

constexpr int kBatch = 64;                 // frames handed to the sink per poll round
constexpr std::size_t kMaxHeldFds = 64;    // message memfds received ahead of their descriptors
constexpr auto kFairSlice = 50us;          // a poll chain link's longest run (see poll())
constexpr auto kYieldEvery = 10us;         // idle polling offers the CPU (sched_yield) this often
constexpr auto kCloseFlushLimit = 2s;      // close(flush) gives queued frames this long

std::uint64_t round_up(std::uint64_t v, std::uint64_t to) noexcept { return (v + to - 1) / to * to; }

// How much of a received payload decode() asks the CPU to fetch ahead (see there).
constexpr std::size_t kPrefetchBytes = 1024;

// Starts fetching the cache lines of [p, p + min(n, kPrefetchBytes)). A hint: never faults.
void prefetch_lines(const std::uint8_t* p, std::size_t n) noexcept {
  if (n == 0) return;
  const auto first = reinterpret_cast<std::uintptr_t>(p) & ~std::uintptr_t{63};
  const auto end = reinterpret_cast<std::uintptr_t>(p) + std::min(n, kPrefetchBytes);
  for (std::uintptr_t line = first; line < end; line += 64) __builtin_prefetch(reinterpret_cast<const void*>(line));
}

}  // namespace

// Single-object allocations of up to kBytes, kept for reuse once freed: the nodes of the heap's
// maps, which a message allocates and frees a few of. Not thread-safe (the user locks). Freed
// nodes stay until the list dies.
class NodeList {
 public:
  static constexpr std::size_t kBytes = 64;
  NodeList() = default;
  NodeList(const NodeList&) = delete;
  NodeList& operator=(const NodeList&) = delete;
  ~NodeList() {
    while (head_) ::operator delete(std::exchange(head_, head_->next));
  }
  void* take() {
    if (!head_) return ::operator new(kBytes);
    return std::exchange(head_, head_->next);
  }
  void give(void* p) noexcept { head_ = ::new (p) Free{head_}; }

 private:
  struct Free {
    Free* next;
  };
  Free* head_ = nullptr;
};

template <class T>
struct NodeAllocator {
  using value_type = T;
  NodeList* list;
  explicit NodeAllocator(NodeList* l) noexcept : list(l) {}
  template <class U>
  NodeAllocator(const NodeAllocator<U>& o) noexcept : list(o.list) {}
  static constexpr bool kFits = sizeof(T) <= NodeList::kBytes && alignof(T) <= alignof(std::max_align_t);
  T* allocate(std::size_t n) {
    if (kFits && n == 1) return static_cast<T*>(list->take());
    return std::allocator<T>().allocate(n);
  }
  void deallocate(T* p, std::size_t n) noexcept {
    if (kFits && n == 1) {
      list->give(p);
    } else {
      std::allocator<T>().deallocate(p, n);
    }
  }
  template <class U>
  bool operator==(const NodeAllocator<U>& o) const noexcept { return list == o.list; }
};

// The state that outlives the connection object: both mappings, this side's heap allocator and
// lease table, and the releasing of the peer's leases. Kept alive by the connection, by every
// received payload (its lease) and by every body allocator, so memory handed out stays valid
// after close. Thread-safe.
class Shared {
 public:
  Shared(OwnSegment mine, PeerSegment peer, int socket_fd)
      : mine_(std::move(mine.map)),
        peer_(std::move(peer.map)),
        my_hdr(reinterpret_cast<SegmentHeader*>(mine_.data())),
        my_ring(reinterpret_cast<Desc*>(mine_.data() + mine.layout.desc_offset)),
        my_release_ring(reinterpret_cast<std::uint64_t*>(mine_.data() + mine.layout.release_offset)),
        my_heap(mine_.data() + mine.layout.heap_offset),
        my_heap_size(mine.layout.heap_size),
        peer_hdr(reinterpret_cast<const SegmentHeader*>(peer_.data())),
        peer_ring(reinterpret_cast<const Desc*>(peer_.data() + peer.layout.desc_offset)),
        peer_release_ring(reinterpret_cast<const std::uint64_t*>(peer_.data() + peer.layout.release_offset)),
        peer_heap(peer_.data() + peer.layout.heap_offset),
        peer_heap_size(peer.layout.heap_size),
        fd(socket_fd) {
    free_.emplace(0, my_heap_size);
    leases_.resize(kMaxLeases);
    free_leases_.reserve(kMaxLeases);
    for (std::uint32_t i = kMaxLeases; i > 0; --i) free_leases_.push_back(i - 1);
  }

  // ---- this side's heap (heap_mu) ----

  bool in_heap(const void* p, std::size_t n) const noexcept {
    const auto* b = static_cast<const std::uint8_t*>(p);
    return b >= my_heap && b < my_heap + my_heap_size && n <= static_cast<std::size_t>(my_heap + my_heap_size - b);
  }

  // A block of at least `n` bytes with one reference, or nullopt when the heap has no room.
  std::optional<std::uint64_t> alloc_locked(std::uint64_t n) {
    n = round_up(std::max<std::uint64_t>(n, 1), kHeapAlign);
    for (auto it = free_.begin(); it != free_.end(); ++it) {
      if (it->second < n) continue;
      const std::uint64_t off = it->first;
      const std::uint64_t len = it->second;
      if (len > n) {
        // The rest keeps the free entry's node, in the same place in the order.
        const auto next = std::next(it);
        auto node = free_.extract(it);
        node.key() = off + n;
        node.mapped() = len - n;
        free_.insert(next, std::move(node));
      } else {
        free_.erase(it);
      }
      used_.emplace(off, Block{n, 1});
      return off;
    }
    return std::nullopt;
  }

  // Drops one reference of the block at `off`; frees it (coalescing) at zero.
  void unref_locked(std::uint64_t off) {
    auto it = used_.find(off);
    if (it == used_.end()) return;
    if (--it->second.refs > 0) return;
    std::uint64_t len = it->second.len;
    used_.erase(it);
    auto next = free_.lower_bound(off);
    if (next != free_.end() && off + len == next->first) {
      len += next->second;
      next = free_.erase(next);
    }
    if (next != free_.begin()) {
      auto prev = std::prev(next);
      if (prev->first + prev->second == off) {
        prev->second += len;
        return;
      }
    }
    free_.emplace(off, len);
  }

  // The block holding [off, off + n), if one is allocated.
  std::optional<std::uint64_t> block_of_locked(std::uint64_t off, std::uint64_t n) const {
    auto it = used_.upper_bound(off);
    if (it == used_.begin()) return std::nullopt;
    --it;
    if (off + n > it->first + it->second.len || it->second.refs == 0) return std::nullopt;
    return it->first;
  }

  void ref_locked(std::uint64_t block) { ++used_.at(block).refs; }

  bool lease_available_locked() const noexcept { return !free_leases_.empty(); }

  // A lease holding one reference of each of `blocks` (references the caller hands over).
  std::uint64_t new_lease_locked(const std::uint64_t* blocks, int n) {
    const std::uint32_t idx = free_leases_.back();
    free_leases_.pop_back();
    LeaseSlot& s = leases_[idx];
    s.used = true;
    s.count = static_cast<std::uint8_t>(n);
    for (int i = 0; i < n; ++i) s.blocks[i] = blocks[i];
    return (std::uint64_t{s.gen} << 32) | idx;
  }

  // The peer gave lease `id` back. False when the peer does not hold such a lease.
  bool end_lease_locked(std::uint64_t id) {
    const std::uint64_t idx = id & 0xffffffffu;
    const auto gen = static_cast<std::uint32_t>(id >> 32);
    if (idx >= leases_.size()) return false;
    LeaseSlot& s = leases_[idx];
    if (!s.used || s.gen != gen) return false;
    for (int i = 0; i < s.count; ++i) unref_locked(s.blocks[i]);
    s.used = false;
    s.count = 0;
    s.gen = s.gen == UINT32_MAX ? 1 : s.gen + 1;
    free_leases_.push_back(static_cast<std::uint32_t>(idx));
    return true;
  }

  // Takes the lease ids the peer gave back and frees what they held. Any thread. Returns
  // whether there were any; `fault` names a broken release ring or an id the peer did not hold.
  bool drain_peer_releases(std::string& fault) {
    // Nothing new (the common case of a polling reader): no lock. A drain racing on another
    // thread takes what this one would have.
    if (peer_hdr->release_head.load(std::memory_order_acquire) == rel_tail.load(std::memory_order_relaxed)) {
      return false;
    }
    std::lock_guard lk(heap_mu);
    std::uint64_t tail = rel_tail.load(std::memory_order_relaxed);
    // Read again under the lock, after `tail`: a head read before it may be behind a tail that a
    // racing drain (the I/O thread's, a sender's out of room) has moved on since, which would
    // look like a head out of range.
    const std::uint64_t head = peer_hdr->release_head.load(std::memory_order_acquire);
    if (head == tail) return false;
    if (head - tail > kReleaseSlots) {
      fault = "shm: the peer's release ring head " + std::to_string(head) + " is out of range";
      return false;
    }
    for (; tail != head; ++tail) {
      std::uint64_t id;
      std::memcpy(&id, &peer_release_ring[tail % kReleaseSlots], sizeof id);
      if (!end_lease_locked(id)) {
        char text[24];
        std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(id));
        fault = std::string("shm: the peer released lease ") + text + ", which it does not hold";
        ++tail;
        break;
      }
    }
    rel_tail.store(tail, std::memory_order_relaxed);
    my_hdr->release_tail.store(tail, std::memory_order_release);
    return true;
  }

  // The body allocator's side: memory in the heap (one reference, owned by the builder) or
  // nullptr when the heap has no room.
  std::uint8_t* alloc(std::size_t n) {
    std::lock_guard lk(heap_mu);
    auto off = alloc_locked(n);
    return off ? my_heap + *off : nullptr;
  }
  void dealloc(const std::uint8_t* p) {
    std::lock_guard lk(heap_mu);
    unref_locked(static_cast<std::uint64_t>(p - my_heap));
  }

  // ---- the peer's leases (any thread) ----

  // Gives lease `id` back to the peer: appends it to this side's release ring and rings the
  // doorbell when the peer waits for room. After close, or when the ring is full (only a peer
  // that breaks the lease limit fills it), the id is dropped.
  //
  // While this connection's I/O thread hands a received frame to the session (HandlingScope),
  // the id is only noted and goes out when that returns. A received message is typically dropped
  // just before the next one is sent (a caller's loop: check the reply, call again); writing the
  // release then would put the release ring's lines, which the peer holds, between this side and
  // its next descriptor, and the peer would read them before that descriptor.
  void release_peer(std::uint64_t id) {
    if (handling_owner == this) {
      deferred_releases_.push_back(id);
      return;
    }
    release_peer_ids(&id, 1);
  }

  // Marks the handling of one received frame on this connection's I/O thread; the releases made
  // in it go out at its end, after whatever it sent. Not reentrant for one connection.
  class HandlingScope {
   public:
    explicit HandlingScope(Shared& sh) noexcept : sh_(sh), outer_(std::exchange(handling_owner, &sh)) {}
    HandlingScope(const HandlingScope&) = delete;
    HandlingScope& operator=(const HandlingScope&) = delete;
    ~HandlingScope() {
      handling_owner = outer_;
      if (!sh_.deferred_releases_.empty()) {
        sh_.release_peer_ids(sh_.deferred_releases_.data(), sh_.deferred_releases_.size());
        sh_.deferred_releases_.clear();
      }
    }

   private:
    Shared& sh_;
    Shared* const outer_;
  };

  void mark_closed() {
    std::lock_guard lk(release_mu);
    closed = true;
  }

  // Appends `n` lease ids to the release ring with one store of its head, then rings when the
  // peer waits for room.
  void release_peer_ids(const std::uint64_t* ids, std::size_t n) {
    {
      std::lock_guard lk(release_mu);
      if (closed) return;
      for (std::size_t i = 0; i < n; ++i) {
        // The peer's counter is read only when the ring looks full by the last value read: it is
        // a line the peer writes on every drain, so reading it per release would be a cache miss.
        if (release_head_ - peer_release_tail_seen_ >= kReleaseSlots) {
          const std::uint64_t tail = peer_hdr->release_tail.load(std::memory_order_acquire);
          // Only grows, never past what was published; anything else is the peer's fault, and
          // the ring is treated as full (the peer learns of no further releases).
          if (tail >= peer_release_tail_seen_ && tail <= release_head_) peer_release_tail_seen_ = tail;
          if (release_head_ - peer_release_tail_seen_ >= kReleaseSlots) {
            dropped_releases += n - i;
            break;
          }
        }
        std::memcpy(&my_release_ring[release_head_ % kReleaseSlots], &ids[i], sizeof ids[i]);
        ++release_head_;
      }
      my_hdr->release_head.store(release_head_, std::memory_order_seq_cst);
    }
    ring_if_peer_waits();
  }

  // ---- doorbell (any thread) ----

  // One record on the socket (a doorbell, or `pass_fd` with it). Returns 0 or errno.
  int send_record(char tag, int pass_fd) {
    std::lock_guard lk(fd_mu);
    if (fd < 0) return EPIPE;
    const char byte = tag;
    return shm::send_with_fd(fd, &byte, 1, pass_fd, MSG_DONTWAIT | MSG_NOSIGNAL) >= 0 ? 0 : errno;
  }
  void ring() { (void)send_record('D', -1); }

  // Rings when the peer's wait word says it waits for room, once per wait.
  void ring_if_peer_waits() {
    const std::uint32_t w = peer_hdr->wait_word.load(std::memory_order_seq_cst);
    if ((w & 1u) && rung_wait.exchange(w) != w) ring();
  }

 private:
  Mapping mine_;
  Mapping peer_;

 public:
  SegmentHeader* const my_hdr;
  Desc* const my_ring;
  std::uint64_t* const my_release_ring;
  std::uint8_t* const my_heap;
  const std::uint64_t my_heap_size;
  const SegmentHeader* const peer_hdr;
  const Desc* const peer_ring;
  const std::uint64_t* const peer_release_ring;
  const std::uint8_t* const peer_heap;
  const std::uint64_t peer_heap_size;

  std::mutex heap_mu;
  std::mutex release_mu;
  std::mutex fd_mu;
  int fd;  // fd_mu; -1 once the connection closed it
  bool closed = false;  // release_mu
  std::atomic<std::uint32_t> rung_wait{0};
  std::atomic<std::uint64_t> dropped_releases{0};
  std::atomic<std::uint64_t> rel_tail{0};  // peer releases consumed; written under heap_mu

 private:
  struct Block {
    std::uint64_t len;
    std::uint32_t refs;
  };
  struct LeaseSlot {
    std::uint32_t gen = 1;
    bool used = false;
    std::uint8_t count = 0;
    std::uint64_t blocks[2] = {0, 0};
  };
  // Both maps recycle their nodes through one list (heap_mu guards both): a message's
  // allocation and its release cost no trip to malloc.
  NodeList nodes_;
  std::map<std::uint64_t, std::uint64_t, std::less<>, NodeAllocator<std::pair<const std::uint64_t, std::uint64_t>>>
      free_{NodeAllocator<std::pair<const std::uint64_t, std::uint64_t>>(&nodes_)};  // offset -> length, coalesced
  std::map<std::uint64_t, Block, std::less<>, NodeAllocator<std::pair<const std::uint64_t, Block>>> used_{
      NodeAllocator<std::pair<const std::uint64_t, Block>>(&nodes_)};  // offset -> block
  std::vector<LeaseSlot> leases_;
  std::vector<std::uint32_t> free_leases_;
  // The connection whose received frame this thread is handling (HandlingScope), if any.
  static inline thread_local Shared* handling_owner = nullptr;
  std::vector<std::uint64_t> deferred_releases_;  // I/O thread: deferred by release_peer
  std::uint64_t release_head_ = 0;            // release_mu
  std::uint64_t peer_release_tail_seen_ = 0;  // release_mu: the peer's release_tail as last read
};

namespace {

// A received payload's owner: gives the lease back when the last Buffer viewing it dies.
struct RxLease {
  std::shared_ptr<Shared> sh;
  std::uint64_t id;
  RxLease(std::shared_ptr<Shared> s, std::uint64_t i) : sh(std::move(s)), id(i) {}
  RxLease(const RxLease&) = delete;
  RxLease& operator=(const RxLease&) = delete;
  ~RxLease() { sh->release_peer(id); }
};

// Heap memory of one connection for a MessageBuilder; the heap when it has no room.
class SegmentAllocator final : public flatbuffers::Allocator {
 public:
  explicit SegmentAllocator(std::shared_ptr<Shared> sh) : sh_(std::move(sh)) {}
  std::uint8_t* allocate(std::size_t size) override {
    if (std::uint8_t* p = sh_->alloc(size)) return p;
    return new std::uint8_t[size];
  }
  void deallocate(std::uint8_t* p, std::size_t) override {
    if (sh_->in_heap(p, 1)) {
      sh_->dealloc(p);
    } else {
      delete[] p;
    }
  }

 private:
  std::shared_ptr<Shared> sh_;
};

}  // namespace

ShmConnection::ShmConnection(asio::io_context& io, UniqueFd socket, OwnSegment mine, PeerSegment peer,
                             const ConnectionLimits& limits, const Tuning& tuning, std::string peer_name)
    : sh_(std::make_shared<Shared>(std::move(mine), std::move(peer), socket.get())),
      limits_(limits),
      tuning_(tuning),
      peer_(std::move(peer_name)),
      executor_(io.get_executor()),
      sock_(io, socket.release()),
      close_timer_(io),
      max_frame_(limits.max_frame) {}

ShmConnection::~ShmConnection() {
  // Allocators and payloads may keep sh_ alive: stop them from using the descriptor sock_ closes.
  std::lock_guard lk(sh_->fd_mu);
  sh_->fd = -1;
}

void ShmConnection::start(std::shared_ptr<FrameSink> sink) {
  asio::post(executor_, [self = shared_from_this(), sink = std::move(sink)]() mutable {
    if (self->finished_) {
      sink->on_closed(Status(StatusCode::unavailable, "connection closed"));
      return;
    }
    self->sink_ = std::move(sink);
    self->started_ = true;
    self->idle_since_ = std::chrono::steady_clock::now();
    self->wake();
  });
}

std::unique_ptr<flatbuffers::Allocator> ShmConnection::make_body_allocator() {
  return std::make_unique<SegmentAllocator>(sh_);
}

bool ShmConnection::in_outgoing_heap(const void* p, std::size_t n) const { return sh_->in_heap(p, n); }

SendStats ShmConnection::send_stats() const {
  std::lock_guard lk(send_mu_);
  return stats_;
}

// ---------------------------------------------------------------------------------------------
// Sending

SendResult ShmConnection::send(wire::OutFrame&& frame) {
  Pending p{std::move(frame), {}, 0, 0};
  p.bytes = p.frame.size();
  p.payload_len = p.frame.payload_size();
  const Buffer& body = p.frame.body;
  if (p.payload_len > sh_->my_heap_size / 4 && !(body.size() > 0 && sh_->in_heap(body.data(), body.size()))) {
    // Too large for the heap: one copy into a sealed memfd, made before taking the lock.
    auto fd = create_message_fd(reinterpret_cast<const std::uint8_t*>(p.frame.extra.data()), p.frame.extra.size(),
                                body.data(), body.size());
    if (!fd) {
      close(Status(StatusCode::unavailable, fd.status().message()), false);
      return SendResult::closed;
    }
    p.memfd = std::move(*fd);
    p.frame.body = Buffer();
    p.frame.extra.clear();
  }
  std::lock_guard lk(send_mu_);
  if (closing_) return SendResult::closed;
  if (queue_.empty() && !tx_broken_ && publish_locked(p) == Publish::done) {
    // Nothing ahead of it and room for it: out without a trip through the queue. (A frame that
    // finds no room is untouched by the attempt and queues below.)
    ring_if_asleep_locked();
    return SendResult::ok;
  }
  queued_bytes_ += p.bytes;
  queue_.push_back(std::move(p));
  flush_locked();
  if (queued_bytes_ > limits_.high_water) {
    above_high_ = true;
    return SendResult::above_high_water;
  }
  return SendResult::ok;
}

// Publishes queued frames in order until one finds no room. Requires send_mu_.
void ShmConnection::flush_locked() {
  bool published = false;
  bool retried = false;
  while (!queue_.empty() && !tx_broken_) {
    const Publish r = publish_locked(queue_.front());
    if (r == Publish::done) {
      queued_bytes_ -= queue_.front().bytes;
      queue_.pop_front();
      published = true;
      continue;
    }
    if (r == Publish::no_room && !retried) {
      // Announce the wait first, then look again (taking the releases that arrived): the peer
      // either sees the wait word and rings, or freed the room before, and the retry finds it.
      wait_for_room_locked();
      std::atomic_thread_fence(std::memory_order_seq_cst);  // pairs with release_peer's store
      std::string fault;
      (void)sh_->drain_peer_releases(fault);
      if (!fault.empty()) {
        tx_broken_ = true;
        peer_fault(std::move(fault));
        break;
      }
      retried = true;
      continue;
    }
    if (r == Publish::socket_busy && !socket_wait_armed_) {
      socket_wait_armed_ = true;
      asio::post(executor_, [self = shared_from_this()] {
        if (self->finished_) return;
        self->sock_.async_wait(asio::posix::stream_descriptor::wait_write, [self](const std::error_code&) {
          std::lock_guard lk(self->send_mu_);
          self->socket_wait_armed_ = false;
          if (!self->finished_) self->flush_locked();
        });
      });
    }
    break;
  }
  if (published) ring_if_asleep_locked();
  queued_.store(!queue_.empty(), std::memory_order_relaxed);
  if (queue_.empty()) {
    if (waiting_room_) {
      waiting_room_ = false;
      sh_->my_hdr->wait_word.store(wait_epoch_ << 1, std::memory_order_relaxed);
    }
    if (close_after_flush_) {
      close_after_flush_ = false;
      asio::post(executor_, [self = shared_from_this()] { self->shutdown(); });
    }
  }
  if (above_high_ && queued_bytes_ <= limits_.low_water) {
    above_high_ = false;
    asio::post(executor_, [self = shared_from_this()] {
      if (!self->finished_ && self->sink_) self->sink_->on_writable();
    });
  }
}

void ShmConnection::wait_for_room_locked() {
  if (waiting_room_) return;
  waiting_room_ = true;
  ++wait_epoch_;
  sh_->my_hdr->wait_word.store((wait_epoch_ << 1) | 1u, std::memory_order_seq_cst);
}

void ShmConnection::ring_if_asleep_locked() {
  // Dekker with sleep(): the descriptors just published are globally visible before the sleep
  // word is read, as the reader's sleep word is before it looks at the ring once more.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  const std::uint32_t w = sh_->peer_hdr->sleep_word.load(std::memory_order_seq_cst);
  if ((w & 1u) && w != rung_sleep_) {
    rung_sleep_ = w;
    sh_->ring();
  }
}

// Reads the peer's consumption counter of our descriptor ring and checks it. False (and the
// connection is faulted) when it is out of range. Requires send_mu_.
bool ShmConnection::refresh_peer_tail_locked() {
  const std::uint64_t tail = sh_->peer_hdr->desc_tail.load(std::memory_order_acquire);
  if (desc_head_ - tail > kDescSlots || tail < peer_tail_seen_) {
    tx_broken_ = true;
    peer_fault("shm: the peer's descriptor ring tail " + std::to_string(tail) + " is out of range (head " +
               std::to_string(desc_head_) + ", last seen " + std::to_string(peer_tail_seen_) + ")");
    return false;
  }
  peer_tail_seen_ = tail;
  return true;
}

ShmConnection::Publish ShmConnection::publish_locked(Pending& p) {
  // The peer's counter is read only when the ring looks full by the last value read (and when
  // the reader goes to sleep, to check it): a line the peer keeps writing would be a cache miss
  // on every send.
  if (desc_head_ - peer_tail_seen_ >= kDescSlots) {
    if (!refresh_peer_tail_locked()) return Publish::broken;
    if (desc_head_ - peer_tail_seen_ == kDescSlots) return Publish::no_room;
  }

  Desc d{};
  std::memcpy(d.head, p.frame.head.data(), sizeof d.head);
  bool zero_copy = false;
  if (p.memfd) {
    d.kind = static_cast<std::uint8_t>(DescKind::memfd);
    d.body_len = static_cast<std::uint32_t>(p.payload_len);
    const int err = sh_->send_record('F', p.memfd.get());
    if (err == EAGAIN || err == EWOULDBLOCK) return Publish::socket_busy;
    if (err != 0) {
      // The peer is gone; the reader sees the socket's end and closes.
      tx_broken_ = true;
      return Publish::broken;
    }
    p.memfd.reset();
  } else if (p.payload_len > 0) {
    const auto& extra = p.frame.extra;
    const Buffer& body = p.frame.body;
    const auto* heap = sh_->my_heap;
    std::lock_guard hk(sh_->heap_mu);
    if (!sh_->lease_available_locked()) return Publish::no_room;
    std::uint64_t blocks[2];
    int nblocks = 0;
    std::optional<std::uint64_t> in_place;
    if (!body.empty() && sh_->in_heap(body.data(), body.size())) {
      in_place = sh_->block_of_locked(static_cast<std::uint64_t>(body.data() - heap), body.size());
    }
    if (in_place) {
      // Zero copy: the body stays where it was built; only a small prefix is copied.
      if (!extra.empty()) {
        auto at = sh_->alloc_locked(extra.size());
        if (!at) return Publish::no_room;
        std::memcpy(sh_->my_heap + *at, extra.data(), extra.size());
        d.prefix_offset = *at;
        d.prefix_len = static_cast<std::uint32_t>(extra.size());
        blocks[nblocks++] = *at;
      }
      sh_->ref_locked(*in_place);
      blocks[nblocks++] = *in_place;
      d.body_offset = static_cast<std::uint64_t>(body.data() - heap);
      d.body_len = static_cast<std::uint32_t>(body.size());
      zero_copy = true;
    } else if (body.empty()) {
      auto at = sh_->alloc_locked(extra.size());
      if (!at) return Publish::no_room;
      std::memcpy(sh_->my_heap + *at, extra.data(), extra.size());
      d.body_offset = *at;
      d.body_len = static_cast<std::uint32_t>(extra.size());
      blocks[nblocks++] = *at;
    } else {
      // One copy; the body starts 16-aligned after the prefix.
      const std::uint64_t gap = round_up(extra.size(), 16);
      auto at = sh_->alloc_locked(gap + body.size());
      if (!at) return Publish::no_room;
      if (!extra.empty()) {
        std::memcpy(sh_->my_heap + *at, extra.data(), extra.size());
        d.prefix_offset = *at;
        d.prefix_len = static_cast<std::uint32_t>(extra.size());
      }
      std::memcpy(sh_->my_heap + *at + gap, body.data(), body.size());
      d.body_offset = *at + gap;
      d.body_len = static_cast<std::uint32_t>(body.size());
      blocks[nblocks++] = *at;
    }
    d.lease = sh_->new_lease_locked(blocks, nblocks);
  }
  publish_desc(&sh_->my_ring[desc_head_ % kDescSlots], d, desc_head_ + 1);
  ++desc_head_;
  if (d.kind == static_cast<std::uint8_t>(DescKind::memfd)) {
    ++stats_.large;
  } else if (zero_copy) {
    ++stats_.zero_copy;
  } else if (p.payload_len > 0) {
    ++stats_.copied;
  }
  return Publish::done;
}

void ShmConnection::set_read_paused(bool paused) {
  paused_.store(paused);
  if (!paused) asio::post(executor_, [self = shared_from_this()] { self->wake(); });
}

void ShmConnection::set_max_frame(std::uint32_t max_frame) { max_frame_.store(max_frame); }

void ShmConnection::close(const Status& why, bool flush) {
  std::lock_guard lk(send_mu_);
  if (closing_) return;
  closing_ = true;
  close_reason_ = why;
  if (flush && !queue_.empty() && !tx_broken_) {
    close_after_flush_ = true;
    asio::post(executor_, [self = shared_from_this()] {
      if (self->finished_) return;
      self->close_timer_.expires_after(kCloseFlushLimit);
      self->close_timer_.async_wait([self](const std::error_code& ec) {
        if (!ec) self->shutdown();
      });
    });
    return;
  }
  asio::post(executor_, [self = shared_from_this()] { self->shutdown(); });
}

std::size_t ShmConnection::queued_bytes() const {
  std::lock_guard lk(send_mu_);
  return queued_bytes_;
}

// ---------------------------------------------------------------------------------------------
// Reading (I/O thread)

void ShmConnection::wake() {
  if (finished_ || !started_ || chain_active_) return;
  chain_active_ = true;
  sh_->my_hdr->sleep_word.store(sleep_epoch_ << 1, std::memory_order_relaxed);
  poll();
}

// The reader's loop: work while there is work, poll for tuning_.spin after the last of it, then
// sleep on the socket. Runs as a chain of posted handlers: a link gives the thread back to the
// io_context's other handlers after kFairSlice. Not more often: each return costs the reactor a
// poll of its descriptors (epoll_wait, a system call), and a frame that arrives meanwhile waits
// for it; a return every few microseconds made the two sides of a busy ping-pong delay each
// other in turn.
void ShmConnection::poll() {
  using clock = std::chrono::steady_clock;
  const auto link_start = clock::now();
  const auto link_end = link_start + kFairSlice;
  auto next_yield = std::max(idle_since_, link_start) + kYieldEvery;
  for (;;) {
    if (finished_) {
      chain_active_ = false;
      return;
    }
    const bool did = step();
    if (finished_) {
      chain_active_ = false;
      return;
    }
    const auto now = clock::now();
    if (peer_gone_) {
      if (did) continue;  // deliver what the peer published before it went
      const bool held = paused_.load() && !rx_stopped_ && peer_published();
      chain_active_ = false;
      if (!held) finish(Status(StatusCode::unavailable, "peer closed the connection"));
      return;  // held: set_read_paused(false) wakes the chain again
    }
    if (did) {
      idle_since_ = now;
      next_yield = now + kYieldEvery;
      // A blocking caller was just given its outcome: on a machine with few cores it may be
      // waiting for this very CPU.
      if (std::exchange(detail::woke_waiter, false)) std::this_thread::yield();
      if (now >= link_end) break;
      continue;
    }
    const auto sleep_at = idle_since_ + tuning_.spin;
    if (now >= sleep_at) {
      sleep();
      return;
    }
    if (now >= link_end) break;
    if (now >= next_yield) {
      // Idle for a while: let a thread this one keeps from running (the peer, when there are
      // more busy threads than cores) have the CPU before polling on.
      std::this_thread::yield();
      next_yield = now + kYieldEvery;
    }
    (void)detail::spin_until([this] { return work_visible(); }, std::min({link_end, sleep_at, next_yield}) - now);
  }
  asio::post(executor_, [self = shared_from_this()] { self->poll(); });
}

bool ShmConnection::step() {
  // Frames first: their descriptors are what a caller waits for. Releases (room for this
  // side's sends) after; a send that finds no room drains them itself.
  bool did = deliver_batch();
  if (drain_releases()) did = true;
  if (queued_.load(std::memory_order_relaxed)) {
    std::lock_guard lk(send_mu_);
    if (!queue_.empty() && !tx_broken_) {
      const std::size_t before = queue_.size();
      flush_locked();
      did = did || queue_.size() != before;
    }
  }
  return did;
}

bool ShmConnection::work_visible() const {
  // New frames are looked for first, so a release published just before them (a line the peer
  // just wrote: a cache miss) does not delay their delivery. Releases only while frames wait for
  // room: otherwise they can wait for the next round with work (step() takes them after its
  // frames), and polling their line would put a miss in the way of each new frame.
  if (!paused_.load(std::memory_order_relaxed) && !rx_stopped_ && peer_published()) return true;
  if (!queued_.load(std::memory_order_relaxed)) return false;
  return sh_->peer_hdr->release_head.load(std::memory_order_seq_cst) != sh_->rel_tail.load(std::memory_order_relaxed);
}

void ShmConnection::sleep() {
  chain_active_ = false;
  ++sleep_epoch_;
  sh_->my_hdr->sleep_word.store((sleep_epoch_ << 1) | 1u, std::memory_order_seq_cst);
  bool blocked;
  {
    // A writer waiting for room needs a fresh wait epoch: the peer rings once per epoch, and
    // the last one may have been spent on a wakeup that found too little room.
    std::lock_guard lk(send_mu_);
    if (!tx_broken_) (void)refresh_peer_tail_locked();  // idle: a good time to check it (a fault is posted)
    blocked = waiting_room_;
    if (blocked) {
      ++wait_epoch_;
      sh_->my_hdr->wait_word.store((wait_epoch_ << 1) | 1u, std::memory_order_seq_cst);
    }
  }
  // Look once more after both words are out: what the peer did before it could see them. The
  // fence pairs with the sender's in ring_if_asleep_locked (the slot's seq is read with acquire
  // only, which alone would not keep it after the sleep word's store).
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (work_visible() || (blocked && step())) {
    chain_active_ = true;
    sh_->my_hdr->sleep_word.store(sleep_epoch_ << 1, std::memory_order_relaxed);
    asio::post(executor_, [self = shared_from_this()] { self->poll(); });
    return;
  }
  if (armed_) return;
  armed_ = true;
  sock_.async_wait(asio::posix::stream_descriptor::wait_read,
                   [self = shared_from_this()](const std::error_code& ec) { self->on_doorbell(ec); });
}

void ShmConnection::on_doorbell(const std::error_code& ec) {
  armed_ = false;
  if (finished_ || ec == asio::error::operation_aborted) return;
  if (ec) peer_gone_ = true;
  sh_->my_hdr->sleep_word.store(sleep_epoch_ << 1, std::memory_order_relaxed);
  read_socket();
  idle_since_ = std::chrono::steady_clock::now();
  if (!chain_active_) {
    chain_active_ = true;
    poll();
  }
}

// Takes every record waiting on the socket: doorbells (dropped), message memfds (kept in
// order), or the end of the stream (the peer is gone). Never blocks.
void ShmConnection::read_socket() {
  const int fd = sock_.native_handle();
  for (;;) {
    char buf[16];
    iovec iov{buf, sizeof buf};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 8)];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    const ssize_t n = ::recvmsg(fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) peer_gone_ = true;
      return;
    }
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (std::size_t i = 0; i < count; ++i) {
        int received;
        std::memcpy(&received, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        rx_fds_.emplace_back(received);
      }
    }
    if (n == 0) {
      peer_gone_ = true;
      return;
    }
    if ((msg.msg_flags & MSG_CTRUNC) || rx_fds_.size() > kMaxHeldFds) {
      rx_fds_.clear();
      frame_error(Status(StatusCode::invalid_argument, "shm: the peer sent more memfds than its descriptors announce"));
      return;
    }
  }
}

bool ShmConnection::drain_releases() {
  std::string fault;
  const bool did = sh_->drain_peer_releases(fault);
  if (!fault.empty()) peer_fault(std::move(fault));
  return did;
}

std::uint64_t ShmConnection::stale_seq() const noexcept {
  return rx_tail_ >= kDescSlots ? rx_tail_ + 1 - kDescSlots : 0;
}

bool ShmConnection::peer_published() const noexcept {
  return desc_seq(&sh_->peer_ring[rx_tail_ % kDescSlots]) != stale_seq();
}

bool ShmConnection::deliver_batch() {
  if (paused_.load() || rx_stopped_ || !sink_ || !peer_published()) return false;
  const std::shared_ptr<FrameSink> sink = sink_;
  for (int n = 0; n < kBatch; ++n) {
    const Desc* slot = &sh_->peer_ring[rx_tail_ % kDescSlots];
    const std::uint64_t seq = desc_seq(slot);
    if (seq != rx_tail_ + 1) {
      if (seq == stale_seq()) break;  // not published yet
      sh_->my_hdr->desc_tail.store(rx_tail_, std::memory_order_seq_cst);
      frame_error(Status(StatusCode::invalid_argument,
                         "shm: the peer's descriptor slot " + std::to_string(rx_tail_ % kDescSlots) +
                             " holds sequence number " + std::to_string(seq) + ", expected " +
                             std::to_string(rx_tail_ + 1) + " (or " + std::to_string(stale_seq()) +
                             " before it is written)"));
      return true;
    }
    Desc d;
    std::memcpy(&d, slot, sizeof d);  // read once, then check
    ++rx_tail_;
    wire::Frame frame;
    Status why;
    if (!decode(d, frame, why)) {
      sh_->my_hdr->desc_tail.store(rx_tail_, std::memory_order_seq_cst);
      frame_error(std::move(why));
      return true;
    }
    {
      const Shared::HandlingScope handling(*sh_);
      sink->on_frame(std::move(frame));
    }
    if (finished_ || rx_stopped_ || paused_.load()) break;
  }
  sh_->my_hdr->desc_tail.store(rx_tail_, std::memory_order_seq_cst);
  sh_->ring_if_peer_waits();
  return true;
}

bool ShmConnection::decode(const Desc& d, wire::Frame& out, Status& why) {
  const std::uint32_t length = wire::get_u32(d.head);
  const std::uint32_t limit = max_frame_.load(std::memory_order_relaxed);
  auto fail = [&](wire::FrameError e, StatusCode code, std::uint32_t value) {
    why = Status(code, wire::describe(e, value, limit));
    return false;
  };
  if (length > limit) return fail(wire::FrameError::too_large, StatusCode::resource_exhausted, length);
  if (length < wire::kHeaderSize) return fail(wire::FrameError::too_short, StatusCode::invalid_argument, length);
  const wire::FrameHeader h = wire::decode_header(d.head + wire::kPrefixSize);
  if (h.version != wire::kVersion) return fail(wire::FrameError::bad_version, StatusCode::invalid_argument, h.version);
  if (h.payload_len != length - wire::kHeaderSize) {
    return fail(wire::FrameError::length_mismatch, StatusCode::invalid_argument, length);
  }
  auto bad = [&](std::string text) {
    why = Status(StatusCode::invalid_argument, "shm: " + std::move(text));
    return false;
  };
  out.header = h;
  out.payload = Buffer();
  out.prefix = Buffer();
  if (d.kind == static_cast<std::uint8_t>(DescKind::heap)) {
    if (std::uint64_t{d.prefix_len} + d.body_len != h.payload_len) {
      return bad("descriptor lengths " + std::to_string(d.prefix_len) + " + " + std::to_string(d.body_len) +
                 " do not add up to payload_len " + std::to_string(h.payload_len));
    }
    const std::uint64_t heap = sh_->peer_heap_size;
    auto inside = [heap](std::uint64_t off, std::uint64_t len) { return off <= heap && len <= heap - off; };
    if ((d.prefix_len && !inside(d.prefix_offset, d.prefix_len)) || (d.body_len && !inside(d.body_offset, d.body_len))) {
      return bad("descriptor points outside the peer's heap of " + std::to_string(heap) + " bytes (prefix " +
                 std::to_string(d.prefix_offset) + "+" + std::to_string(d.prefix_len) + ", body " +
                 std::to_string(d.body_offset) + "+" + std::to_string(d.body_len) + ")");
    }
    if (h.payload_len == 0) return true;
    if (d.lease == 0) return bad("a descriptor with a payload carries no lease");
    // The peer has just written these lines, so each one is a transfer from its core, and the
    // reader (split_headers, then a verifier) would ask for them one dependent load after
    // another. Asked for now, together, they arrive while the session works on the frame.
    prefetch_lines(sh_->peer_heap + d.prefix_offset, d.prefix_len);
    prefetch_lines(sh_->peer_heap + d.body_offset, d.body_len);
    auto lease = std::make_shared<RxLease>(sh_, d.lease);
    if (d.prefix_len) out.prefix = Buffer(lease, sh_->peer_heap + d.prefix_offset, d.prefix_len);
    if (d.body_len) out.payload = Buffer(std::move(lease), sh_->peer_heap + d.body_offset, d.body_len);
    return true;
  }
  if (d.kind == static_cast<std::uint8_t>(DescKind::memfd)) {
    if (d.prefix_len != 0 || d.body_len != h.payload_len || h.payload_len == 0) {
      return bad("a large-message descriptor's lengths do not match its header");
    }
    if (rx_fds_.empty()) read_socket();
    if (rx_fds_.empty()) return bad("a large-message descriptor arrived without its memfd");
    UniqueFd fd = std::move(rx_fds_.front());
    rx_fds_.pop_front();
    auto map = map_message_fd(fd.get(), h.payload_len);
    if (!map) {
      why = Status(StatusCode::invalid_argument, map.status().message());
      return false;
    }
    auto owner = std::make_shared<Mapping>(std::move(*map));
    const std::uint8_t* data = owner->data();
    out.payload = Buffer(std::move(owner), data, h.payload_len);
    return true;
  }
  return bad("unknown descriptor kind " + std::to_string(d.kind));
}

// The peer's input cannot be decoded: reading stops for good and the sink decides how to close.
void ShmConnection::frame_error(Status why) {
  if (rx_stopped_ || finished_) return;
  rx_stopped_ = true;
  if (sink_) sink_->on_frame_error(why);
}

// The peer broke its side of our rings (any thread): reported like a frame error.
void ShmConnection::peer_fault(std::string why) {
  asio::post(executor_, [self = shared_from_this(), why = std::move(why)]() mutable {
    {
      std::lock_guard lk(self->send_mu_);
      self->tx_broken_ = true;
    }
    self->frame_error(Status(StatusCode::invalid_argument, std::move(why)));
  });
}

void ShmConnection::shutdown() {
  if (finished_) return;
  finish(Status(StatusCode::unavailable, "connection closed"));
}

void ShmConnection::finish(Status why) {
  if (finished_) return;
  finished_ = true;
  close_timer_.cancel();
  std::deque<Pending> dropped;
  {
    std::lock_guard lk(send_mu_);
    closing_ = true;
    if (close_reason_) why = *close_reason_;
    dropped.swap(queue_);
    queued_.store(false, std::memory_order_relaxed);
    queued_bytes_ = 0;
  }
  {
    std::lock_guard lk(sh_->fd_mu);
    if (sh_->fd >= 0) ::shutdown(sh_->fd, SHUT_RDWR);  // the peer sees the end now
    sh_->fd = -1;
  }
  std::error_code ignored;
  sock_.close(ignored);
  sh_->mark_closed();
  rx_fds_.clear();
  dropped.clear();
  std::shared_ptr<FrameSink> sink = std::move(sink_);
  if (sink) sink->on_closed(why);
}

}  // namespace flatpipe::shm
