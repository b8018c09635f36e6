// raw_bench server --listen URI
// raw_bench client --connect URI [--samples N] [--seconds S] [--warmup S] [--only KIND]
//
// The baselines: what this machine does with no framework at all, plain C++ between two
// processes, doing the same application work as every other system (a fresh FlatBufferBuilder
// per message, the Verifier on receipt).
//
//   tcp://127.0.0.1:PORT, unix:///path   blocking sockets (TCP_NODELAY), frames of an 8-byte
//                                        header (length, kind) and the FlatBuffer; a request or
//                                        reply leaves in one write, stream messages are gathered
//                                        in a 64 KiB buffer (larger ones: one writev each); reads
//                                        go through a 256 KiB buffer
//   shm://NAME                           a POSIX shared-memory segment (shm_open) holding two
//                                        single-producer single-consumer rings with atomic
//                                        head/tail; waiting spins 20 us, then spins yielding the
//                                        CPU up to 2 ms, then sleeps on a futex (a wake-up costs
//                                        ~100 us on a VM: a shorter spin lets both sides fall
//                                        asleep on every message). The receiver verifies messages
//                                        in place in the ring.
//
// Figures: raw.<transport>.pingpong.{p50,p99}.{64B,4KiB} (a request, a fresh reply of the same
// size) and raw.<transport>.stream.{msgs,bytes}.{1KiB,1MiB} (the server writes for a fixed time).
// The server serves one client at a time until its standard input closes, then prints its peak
// RSS and thread count (it has a second thread that waits on standard input).
#include <fcntl.h>
#include <linux/futex.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sched.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "bench_common.hpp"

namespace {

using bench::Clock;

const std::string kSystem = "raw";

enum Kind : std::uint32_t {
  kRequest = 1,      // a Blob; answered with kReply
  kReply = 2,
  kStreamOpen = 3,   // a StreamRequest; answered with kStreamData... then kStreamEnd
  kStreamData = 4,
  kStreamEnd = 5,
  kWrap = 6,         // shm only: the rest of the ring is padding
};

struct Header {
  std::uint32_t length;  // payload bytes after the header
  std::uint32_t kind;
};

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "raw_bench: %s: %s\n", what.c_str(), std::strerror(errno));
  std::printf("error raw: %s\n", what.c_str());
  std::fflush(stdout);
  std::_Exit(1);
}

// A message-oriented channel: send() a frame, next() the next one (valid until the next next()).
class Channel {
 public:
  virtual ~Channel() = default;
  // Queues a frame; small frames may wait in a buffer until flush() or until it fills.
  virtual void send(std::uint32_t kind, const std::uint8_t* data, std::size_t size) = 0;
  virtual void flush() {}
  // False at the end (peer gone).
  virtual bool next(Header& h, const std::uint8_t*& payload) = 0;
};

// ---- sockets -------------------------------------------------------------------------------

class SocketChannel final : public Channel {
 public:
  explicit SocketChannel(int fd) : fd_(fd), buf_(256 * 1024) { out_.reserve(kOutBuffer); }
  ~SocketChannel() override { ::close(fd_); }

  // Frames are gathered in a 64 KiB output buffer (what a plain C++ program streaming small
  // messages does); a frame that does not fit goes out at once with one writev.
  void send(std::uint32_t kind, const std::uint8_t* data, std::size_t size) override {
    const Header h{static_cast<std::uint32_t>(size), kind};
    if (out_.size() + sizeof h + size <= kOutBuffer) {
      const auto* hp = reinterpret_cast<const std::uint8_t*>(&h);
      out_.insert(out_.end(), hp, hp + sizeof h);
      if (size) out_.insert(out_.end(), data, data + size);
      return;
    }
    flush();
    iovec iov[2] = {{const_cast<Header*>(&h), sizeof h}, {const_cast<std::uint8_t*>(data), size}};
    write_all(iov, size ? 2 : 1);
  }

  void flush() override {
    if (out_.empty()) return;
    iovec iov[1] = {{out_.data(), out_.size()}};
    write_all(iov, 1);
    out_.clear();
  }

  bool next(Header& h, const std::uint8_t*& payload) override {
    begin_ += consumed_;
    consumed_ = 0;
    if (!fill(sizeof(Header))) return false;
    std::memcpy(&h, buf_.data() + begin_, sizeof h);
    if (!fill(sizeof(Header) + h.length)) return false;
    payload = buf_.data() + begin_ + sizeof(Header);
    consumed_ = sizeof(Header) + h.length;
    return true;
  }

 private:
  // Makes `want` bytes available at begin_; reads as much as the socket has.
  bool fill(std::size_t want) {
    while (end_ - begin_ < want) {
      if (buf_.size() - begin_ < want) {
        std::memmove(buf_.data(), buf_.data() + begin_, end_ - begin_);
        end_ -= begin_;
        begin_ = 0;
        // Room for several frames of this size, so the tail of a read is rarely moved.
        if (buf_.size() < 4 * want) buf_.resize(4 * want);
      }
      const ssize_t n = ::recv(fd_, buf_.data() + end_, buf_.size() - end_, 0);
      if (n == 0) return false;
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == ECONNRESET) return false;
        die("recv");
      }
      end_ += static_cast<std::size_t>(n);
    }
    return true;
  }

  void write_all(iovec* iov, int count) {
    int first = 0;
    while (count > 0) {
      const ssize_t n = ::writev(fd_, iov + first, count);
      if (n < 0) {
        if (errno == EINTR) continue;
        die("writev");
      }
      auto left = static_cast<std::size_t>(n);
      while (count > 0 && left >= iov[first].iov_len) {
        left -= iov[first].iov_len;
        ++first;
        --count;
      }
      if (count > 0) {
        iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + left;
        iov[first].iov_len -= left;
      }
    }
  }

  static constexpr std::size_t kOutBuffer = 64 * 1024;

  int fd_;
  std::vector<std::uint8_t> out_;
  std::vector<std::uint8_t> buf_;
  std::size_t begin_ = 0, end_ = 0, consumed_ = 0;
};

struct SocketAddress {
  sockaddr_storage storage{};
  socklen_t length = 0;
  int family = AF_INET;
};

// tcp://HOST:PORT or unix:///path.
SocketAddress parse_socket_uri(const std::string& uri) {
  SocketAddress a;
  if (uri.rfind("tcp://", 0) == 0) {
    const std::string hp = uri.substr(6);
    const auto colon = hp.rfind(':');
    sockaddr_in in{};
    in.sin_family = AF_INET;
    in.sin_port = htons(static_cast<std::uint16_t>(std::stoi(hp.substr(colon + 1))));
    if (::inet_pton(AF_INET, hp.substr(0, colon).c_str(), &in.sin_addr) != 1) die("bad address " + uri);
    std::memcpy(&a.storage, &in, sizeof in);
    a.length = sizeof in;
    a.family = AF_INET;
  } else if (uri.rfind("unix://", 0) == 0) {
    const std::string path = uri.substr(7);
    sockaddr_un un{};
    un.sun_family = AF_UNIX;
    if (path.size() >= sizeof un.sun_path) die("path too long: " + path);
    std::memcpy(un.sun_path, path.c_str(), path.size() + 1);
    std::memcpy(&a.storage, &un, sizeof un);
    a.length = sizeof un;
    a.family = AF_UNIX;
  } else {
    errno = EINVAL;
    die("unknown endpoint " + uri);
  }
  return a;
}

sockaddr* as_sockaddr(sockaddr_storage& s) { return reinterpret_cast<sockaddr*>(&s); }

void set_nodelay(int fd, int family) {
  if (family != AF_INET) return;
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

// ---- shared memory -------------------------------------------------------------------------

constexpr std::size_t kRingBytes = 16u << 20;

long futex(std::atomic<std::uint32_t>* word, int op, std::uint32_t value) {
  return ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), op, value, nullptr, nullptr, 0);
}

// Something one side waits for and the other announces: spin, then sleep on a futex.
struct alignas(64) Signal {
  std::atomic<std::uint32_t> seq{0};
  std::atomic<std::uint32_t> waiting{0};

  template <class Ready>
  void wait(Ready ready) {
    // Pure spin for ~20 us (the peer is running and answers within that on a quiet machine),
    // then spin with sched_yield() up to 2 ms (a busy machine: let whatever waits for this CPU,
    // maybe the peer, run), then sleep.
    const auto start = Clock::now();
    const auto yield_from = start + std::chrono::microseconds(20);
    const auto sleep_from = start + std::chrono::milliseconds(2);
    for (;;) {
      for (int i = 0; i < 128; ++i) {
        if (ready()) return;
        asm volatile("" ::: "memory");  // no PAUSE: under a hypervisor, PAUSE loops may trap
      }
      const auto now = Clock::now();
      if (now >= sleep_from) break;
      if (now >= yield_from) sched_yield();
    }
    for (;;) {
      waiting.store(1);
      const std::uint32_t v = seq.load();
      if (ready()) {
        waiting.store(0);
        return;
      }
      futex(&seq, FUTEX_WAIT, v);
    }
  }
  void notify() {
    if (waiting.load()) {
      waiting.store(0);
      seq.fetch_add(1);
      futex(&seq, FUTEX_WAKE, INT_MAX);
    }
  }
};

struct RingControl {
  alignas(64) std::atomic<std::uint64_t> head{0};  // consumer position
  alignas(64) std::atomic<std::uint64_t> tail{0};  // producer position
  Signal data;   // the consumer waits for data
  Signal space;  // the producer waits for room
};

struct Segment {
  RingControl to_server;
  RingControl to_client;
  alignas(64) std::uint8_t to_server_bytes[kRingBytes];
  alignas(64) std::uint8_t to_client_bytes[kRingBytes];
};

class ShmChannel final : public Channel {
 public:
  ShmChannel(RingControl& out, std::uint8_t* out_bytes, RingControl& in, std::uint8_t* in_bytes)
      : out_(out), out_bytes_(out_bytes), in_(in), in_bytes_(in_bytes) {}

  void send(std::uint32_t kind, const std::uint8_t* data, std::size_t size) override {
    const std::size_t record = sizeof(Header) + ((size + 7) & ~std::size_t{7});
    if (record > kRingBytes / 2) die("message too large for the ring");
    const std::uint64_t tail = out_.tail.load(std::memory_order_relaxed);
    const std::size_t pos = tail % kRingBytes;
    const std::size_t pad = kRingBytes - pos < record ? kRingBytes - pos : 0;
    out_.space.wait([&] { return kRingBytes - (tail - out_.head.load()) >= pad + record; });
    if (pad) {
      const Header wrap{0, kWrap};
      std::memcpy(out_bytes_ + pos, &wrap, sizeof wrap);
    }
    std::uint8_t* at = out_bytes_ + (tail + pad) % kRingBytes;
    const Header h{static_cast<std::uint32_t>(size), kind};
    std::memcpy(at, &h, sizeof h);
    if (size) std::memcpy(at + sizeof h, data, size);
    out_.tail.store(tail + pad + record);
    out_.data.notify();
  }

  bool next(Header& h, const std::uint8_t*& payload) override {
    std::uint64_t head = in_.head.load(std::memory_order_relaxed);
    if (consumed_) {
      head += consumed_;
      consumed_ = 0;
      in_.head.store(head);
      in_.space.notify();
    }
    for (;;) {
      in_.data.wait([&] { return in_.tail.load() != head; });
      const std::size_t pos = head % kRingBytes;
      std::memcpy(&h, in_bytes_ + pos, sizeof h);
      if (h.kind == kWrap) {
        head += kRingBytes - pos;
        in_.head.store(head);
        in_.space.notify();
        continue;
      }
      payload = in_bytes_ + pos + sizeof h;
      consumed_ = sizeof(Header) + ((h.length + 7) & ~std::size_t{7});
      return true;
    }
  }

 private:
  RingControl& out_;
  std::uint8_t* out_bytes_;
  RingControl& in_;
  std::uint8_t* in_bytes_;
  std::size_t consumed_ = 0;
};

Segment* map_segment(const std::string& name, bool create) {
  const int fd = ::shm_open(name.c_str(), create ? (O_CREAT | O_EXCL | O_RDWR) : O_RDWR, 0600);
  if (fd < 0) die("shm_open " + name);
  if (create && ::ftruncate(fd, sizeof(Segment)) != 0) die("ftruncate");
  // MAP_POPULATE: every page is mapped now, not on first touch in the middle of a figure (a
  // page fault costs tens of microseconds under a hypervisor).
  void* p = ::mmap(nullptr, sizeof(Segment), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
  if (p == MAP_FAILED) die("mmap");
  ::close(fd);
  if (create) new (p) Segment;  // zero-filled by ftruncate; constructs the atomics
  return static_cast<Segment*>(p);
}

std::string shm_name(const std::string& uri) { return "/" + uri.substr(std::strlen("shm://")); }

// ---- server --------------------------------------------------------------------------------

void send_blob(Channel& ch, std::uint32_t kind, std::uint64_t seq, const std::uint8_t* data, std::size_t size) {
  flatbuffers::FlatBufferBuilder fb(bench::builder_size(size));
  bench::build_blob(fb, seq, data, size);
  ch.send(kind, fb.GetBufferPointer(), fb.GetSize());
}

// Serves one client until it goes away.
void serve(Channel& ch) {
  Header h{};
  const std::uint8_t* p = nullptr;
  while (ch.next(h, p)) {
    if (h.kind == kRequest) {
      bench::BlobView v;
      if (!bench::verify_blob(p, h.length, v)) die("bad request");
      send_blob(ch, kReply, v.seq, v.data, v.size);
      ch.flush();
    } else if (h.kind == kStreamOpen) {
      const flatpipe_bench::StreamRequest* sr = nullptr;
      if (!bench::verify_stream_request(p, h.length, sr)) die("bad stream request");
      const std::uint64_t count = sr->count();
      const std::size_t size = sr->size();
      const auto until = Clock::now() + std::chrono::milliseconds(sr->millis());
      for (std::uint64_t i = 0; i < count && Clock::now() < until; ++i) {
        send_blob(ch, kStreamData, i, bench::pattern(), size);
      }
      ch.send(kStreamEnd, nullptr, 0);
      ch.flush();
    } else {
      errno = EPROTO;
      die("unexpected frame kind " + std::to_string(h.kind));
    }
  }
}

int run_server(const std::string& uri) {
  const std::string tr = bench::transport_of(uri);
  std::string shm;
  std::string bound = uri;
  int listen_fd = -1;
  int family = AF_INET;
  Segment* seg = nullptr;
  if (tr == "shm") {
    shm = shm_name(uri);
    seg = map_segment(shm, true);
  } else {
    SocketAddress a = parse_socket_uri(uri);
    family = a.family;
    if (family == AF_UNIX) ::unlink(reinterpret_cast<sockaddr_un*>(&a.storage)->sun_path);
    listen_fd = ::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listen_fd < 0) die("socket");
    int one = 1;
    ::setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(listen_fd, as_sockaddr(a.storage), a.length) != 0) die("bind " + uri);
    if (::listen(listen_fd, 16) != 0) die("listen");
    if (family == AF_INET) {
      sockaddr_in in{};
      socklen_t len = sizeof in;
      ::getsockname(listen_fd, reinterpret_cast<sockaddr*>(&in), &len);
      char host[INET_ADDRSTRLEN];
      ::inet_ntop(AF_INET, &in.sin_addr, host, sizeof host);
      bound = "tcp://" + std::string(host) + ":" + std::to_string(ntohs(in.sin_port));
    }
  }
  std::printf("listening %s\n", bound.c_str());
  std::fflush(stdout);

  // Standard input closed: report and leave, whatever the serving thread is doing.
  std::thread([tr, shm, bound] {
    char buf[256];
    while (::read(0, buf, sizeof buf) > 0) {
    }
    bench::ThreadWatermark threads;
    threads.sample();
    bench::emit_process(kSystem, tr, "server", threads);
    if (!shm.empty()) ::shm_unlink(shm.c_str());
    if (bound.rfind("unix://", 0) == 0) ::unlink(bound.substr(7).c_str());
    std::_Exit(0);
  }).detach();

  if (seg) {
    ShmChannel ch(seg->to_client, seg->to_client_bytes, seg->to_server, seg->to_server_bytes);
    serve(ch);  // the shm "connection" never ends; standard input does
    return 0;
  }
  for (;;) {
    const int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR) continue;
      die("accept");
    }
    set_nodelay(fd, family);
    SocketChannel ch(fd);
    serve(ch);
  }
}

// ---- client --------------------------------------------------------------------------------

std::vector<std::int64_t> pingpong(Channel& ch, std::size_t size, int warmup, int samples) {
  std::vector<std::int64_t> ns;
  ns.reserve(static_cast<std::size_t>(samples));
  Header h{};
  const std::uint8_t* p = nullptr;
  for (int i = 0; i < warmup + samples; ++i) {
    const auto t0 = Clock::now();
    const auto seq = static_cast<std::uint64_t>(i);
    send_blob(ch, kRequest, seq, bench::pattern(), size);
    ch.flush();
    if (!ch.next(h, p) || h.kind != kReply) die("no reply");
    if (!bench::check_blob(p, h.length, seq, size)) die("bad reply");
    if (i >= warmup) ns.push_back((Clock::now() - t0).count());
  }
  return ns;
}

// Messages per second of a server stream of `size`-byte Blobs lasting `seconds`.
double stream(Channel& ch, std::size_t size, double seconds) {
  flatbuffers::FlatBufferBuilder fb(64);
  bench::build_stream_request(fb, ~std::uint64_t{0}, size, static_cast<std::uint32_t>(seconds * 1000.0));
  const auto t0 = Clock::now();
  ch.send(kStreamOpen, fb.GetBufferPointer(), fb.GetSize());
  ch.flush();
  Header h{};
  const std::uint8_t* p = nullptr;
  std::uint64_t n = 0;
  for (;;) {
    if (!ch.next(h, p)) die("stream cut");
    if (h.kind == kStreamEnd) break;
    if (h.kind != kStreamData || !bench::check_blob(p, h.length, n, size)) die("bad stream message");
    ++n;
  }
  return static_cast<double>(n) / bench::seconds_since(t0);
}

int run_client(const std::string& uri, const bench::Params& params) {
  const std::string tr = bench::transport_of(uri);
  std::unique_ptr<Channel> ch;
  if (tr == "shm") {
    Segment* seg = map_segment(shm_name(uri), false);
    ch = std::make_unique<ShmChannel>(seg->to_server, seg->to_server_bytes, seg->to_client, seg->to_client_bytes);
  } else {
    SocketAddress a = parse_socket_uri(uri);
    const int fd = ::socket(a.family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    if (::connect(fd, as_sockaddr(a.storage), a.length) != 0) die("connect " + uri);
    set_nodelay(fd, a.family);
    ch = std::make_unique<SocketChannel>(fd);
  }
  bench::ThreadWatermark threads;
  threads.sample();

  if (bench::wanted(params, "pingpong")) {
    for (std::size_t size : bench::kLatencySizes) {
      if (!bench::wanted_size(params, size)) continue;
      auto ns = pingpong(*ch, size, params.latency_warmup, params.latency_samples);
      bench::emit(kSystem, tr, "pingpong", "p50", bench::size_label(size), bench::percentile_us(ns, 0.50), "us");
      bench::emit(kSystem, tr, "pingpong", "p99", bench::size_label(size), bench::percentile_us(ns, 0.99), "us");
    }
  }
  if (bench::wanted(params, "stream")) {
    for (std::size_t size : bench::kServerStreamSizes) {
      if (!bench::wanted_size(params, size)) continue;
      stream(*ch, size, params.warmup_seconds);
      const double msgs = stream(*ch, size, params.seconds);
      bench::emit(kSystem, tr, "stream", "msgs", bench::size_label(size), msgs, "msg/s");
      bench::emit(kSystem, tr, "stream", "bytes", bench::size_label(size), msgs * static_cast<double>(size) / 1e6,
                  "MB/s");
    }
  }
  threads.sample();
  bench::emit_process(kSystem, tr, "client", threads);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr,
                 "usage: raw_bench server --listen URI\n"
                 "       raw_bench client --connect URI [--samples N] [--seconds S] [--warmup S] [--only KIND]\n"
                 "  URI: tcp://127.0.0.1:PORT, unix:///path, shm://NAME\n");
    return 2;
  }
  const std::string mode = argv[1];
  std::string uri;
  bench::Params params;
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    if ((arg == "--listen" || arg == "--connect") && i + 1 < argc) {
      uri = argv[++i];
    } else if (!bench::parse_param(params, i, argc, argv)) {
      std::fprintf(stderr, "raw_bench: unexpected argument '%s'\n", arg.c_str());
      return 2;
    }
  }
  if (mode == "server") return run_server(uri);
  if (mode == "client") return run_client(uri, params);
  std::fprintf(stderr, "raw_bench: mode must be server or client\n");
  return 2;
}
