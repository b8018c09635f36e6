// Raw-byte peers for tests: a blocking POSIX-socket client (RawPeer) and a one-connection server
// (RawServer) that speak netpipe's V2 frames byte by byte, without any of flatpipe's code, so a
// test can send exactly what a netpipe program (or a broken one) would, and see exactly what
// flatpipe answers.
//
// Every wait is bounded (poll with a timeout); nothing here can hang a test. Writes use
// MSG_NOSIGNAL, so a peer that closed never raises SIGPIPE.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace rawpeer {

using Bytes = std::vector<std::uint8_t>;
using Millis = std::chrono::milliseconds;

// ---- bytes ----

inline void put_be16(Bytes& out, std::uint16_t v) {
  out.push_back(static_cast<std::uint8_t>(v >> 8));
  out.push_back(static_cast<std::uint8_t>(v));
}
inline void put_be32(Bytes& out, std::uint32_t v) {
  out.push_back(static_cast<std::uint8_t>(v >> 24));
  out.push_back(static_cast<std::uint8_t>(v >> 16));
  out.push_back(static_cast<std::uint8_t>(v >> 8));
  out.push_back(static_cast<std::uint8_t>(v));
}
inline std::uint16_t be16(const std::uint8_t* p) {
  return static_cast<std::uint16_t>((unsigned{p[0]} << 8) | unsigned{p[1]});
}
inline std::uint32_t be32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
         std::uint32_t{p[3]};
}

// "00000013 02 00 0000" → bytes; whitespace is ignored. An odd digit count or a non-hex
// character yields an empty vector (so a typo in a vector makes the test fail loudly).
inline Bytes from_hex(std::string_view hex) {
  Bytes out;
  int high = -1;
  for (char c : hex) {
    int v;
    if (c >= '0' && c <= '9') {
      v = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      v = c - 'a' + 10;
    } else if (c >= 'A' && c <= 'F') {
      v = c - 'A' + 10;
    } else if (c == ' ' || c == '\n' || c == '\t') {
      continue;
    } else {
      return {};
    }
    if (high < 0) {
      high = v;
    } else {
      out.push_back(static_cast<std::uint8_t>((high << 4) | v));
      high = -1;
    }
  }
  if (high >= 0) return {};
  return out;
}

inline std::string to_hex(std::span<const std::uint8_t> bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (std::uint8_t b : bytes) {
    out.push_back(kDigits[b >> 4]);
    out.push_back(kDigits[b & 0x0f]);
  }
  return out;
}

inline Bytes to_bytes(std::string_view text) { return Bytes(text.begin(), text.end()); }

// Frame types and flags, spelled out here rather than taken from the runtime, so the tests do
// not share a mistake with the code under test.
namespace type {
inline constexpr std::uint8_t request = 0;
inline constexpr std::uint8_t response = 1;
inline constexpr std::uint8_t error = 2;
inline constexpr std::uint8_t notification = 3;
inline constexpr std::uint8_t stream_data = 4;
inline constexpr std::uint8_t stream_end = 5;
inline constexpr std::uint8_t stream_error = 6;
inline constexpr std::uint8_t cancel = 7;
inline constexpr std::uint8_t hello = 16;
inline constexpr std::uint8_t hello_ack = 17;
inline constexpr std::uint8_t ping = 18;
inline constexpr std::uint8_t pong = 19;
inline constexpr std::uint8_t credit = 20;
inline constexpr std::uint8_t goaway = 21;
}  // namespace type

namespace flag {
inline constexpr std::uint16_t compressed = 0x0001;
inline constexpr std::uint16_t streaming = 0x0002;
inline constexpr std::uint16_t requires_ack = 0x0004;
inline constexpr std::uint16_t final = 0x0008;
inline constexpr std::uint16_t status = 0x0010;
inline constexpr std::uint16_t headers = 0x0020;
}  // namespace flag

// A V2 frame as bytes: length, version 2, type, flags, request_id, method_id, payload_len,
// payload. `length_override` replaces the length prefix (payload_len stays the real size), to
// build frames that lie about their size.
inline Bytes encode_frame(std::uint8_t frame_type, std::uint16_t flags, std::uint32_t request_id,
                          std::uint32_t method_id, std::span<const std::uint8_t> payload = {},
                          std::optional<std::uint32_t> length_override = std::nullopt,
                          std::uint8_t version = 2) {
  Bytes out;
  out.reserve(20 + payload.size());
  put_be32(out, length_override.value_or(static_cast<std::uint32_t>(16 + payload.size())));
  out.push_back(version);
  out.push_back(frame_type);
  put_be16(out, flags);
  put_be32(out, request_id);
  put_be32(out, method_id);
  put_be32(out, static_cast<std::uint32_t>(payload.size()));
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

// The 24-byte HELLO / HELLO_ACK payload (docs/protocol.md section 5.1).
inline Bytes hello_payload(std::uint32_t features = 0x3f, std::uint32_t max_frame = 16u << 20,
                           std::uint32_t initial_credit = 64, std::uint32_t keepalive_ms = 0,
                           std::uint8_t major = 1, std::uint8_t minor = 0) {
  Bytes out = {'F', 'P', 'I', 'P', major, minor, 0, 0};
  put_be32(out, features);
  put_be32(out, max_frame);
  put_be32(out, initial_credit);
  put_be32(out, keepalive_ms);
  return out;
}

// One frame as read off the wire.
struct RawFrame {
  std::uint32_t length = 0;
  std::uint8_t version = 0;
  std::uint8_t type = 0;
  std::uint16_t flags = 0;
  std::uint32_t request_id = 0;
  std::uint32_t method_id = 0;
  std::uint32_t payload_len = 0;
  Bytes payload;
  Bytes bytes;  // the whole frame, prefix included

  std::string text() const { return std::string(payload.begin(), payload.end()); }
  std::string hex() const { return to_hex(bytes); }
};

enum class ReadStatus { ok, timeout, closed, error };

inline const char* read_status_name(ReadStatus s) {
  switch (s) {
    case ReadStatus::ok: return "ok";
    case ReadStatus::timeout: return "timeout";
    case ReadStatus::closed: return "closed";
    case ReadStatus::error: return "error";
  }
  return "?";
}

struct ReadOutcome {
  ReadStatus status = ReadStatus::error;
  RawFrame frame;
  std::string why;
  bool ok() const { return status == ReadStatus::ok; }
};

// Unique filesystem socket paths: /tmp/fpt-<pid>-<counter>-<tag>.sock.
inline std::string unique_socket_path(std::string_view tag = "s") {
  static std::atomic<unsigned> counter{0};
  std::string path = "/tmp/fpt-" + std::to_string(::getpid()) + "-" + std::to_string(counter.fetch_add(1)) +
                     "-" + std::string(tag) + ".sock";
  if (path.size() >= sizeof(sockaddr_un{}.sun_path)) path.resize(sizeof(sockaddr_un{}.sun_path) - 1);
  return path;
}

// A connected stream socket (either end), with blocking, bounded reads and writes.
class RawPeer {
 public:
  static constexpr Millis kDefaultWait{5000};

  RawPeer() = default;
  explicit RawPeer(int fd) : fd_(fd) {}
  RawPeer(RawPeer&& o) noexcept : fd_(std::exchange(o.fd_, -1)), in_(std::move(o.in_)), eof_(o.eof_) {}
  RawPeer& operator=(RawPeer&& o) noexcept {
    if (this != &o) {
      close();
      fd_ = std::exchange(o.fd_, -1);
      in_ = std::move(o.in_);
      eof_ = o.eof_;
    }
    return *this;
  }
  RawPeer(const RawPeer&) = delete;
  RawPeer& operator=(const RawPeer&) = delete;
  ~RawPeer() { close(); }

  bool valid() const { return fd_ >= 0; }
  int fd() const { return fd_; }

  // ---- connecting ----

  static RawPeer connect_tcp(std::uint16_t port, const char* host = "127.0.0.1") {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return RawPeer();
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    if (::inet_pton(AF_INET, host, &addr.sin_addr) != 1 ||
        ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
      ::close(fd);
      return RawPeer();
    }
    const int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return RawPeer(fd);
  }

  static RawPeer connect_unix(const std::string& path) {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return RawPeer();
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.size() >= sizeof addr.sun_path) {
      ::close(fd);
      return RawPeer();
    }
    std::memcpy(addr.sun_path, path.data(), path.size());
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
      ::close(fd);
      return RawPeer();
    }
    return RawPeer(fd);
  }

  // "tcp://127.0.0.1:PORT" or "unix:///path" (query ignored). An invalid peer on failure.
  static RawPeer connect_uri(std::string_view uri) {
    const auto q = uri.find('?');
    if (q != std::string_view::npos) uri = uri.substr(0, q);
    if (uri.starts_with("tcp://")) {
      const std::string_view rest = uri.substr(6);
      const auto colon = rest.rfind(':');
      if (colon == std::string_view::npos) return RawPeer();
      const std::string host(rest.substr(0, colon));
      unsigned long port = 0;
      try {
        port = std::stoul(std::string(rest.substr(colon + 1)));
      } catch (...) {
        return RawPeer();
      }
      if (port > 65535) return RawPeer();
      return connect_tcp(static_cast<std::uint16_t>(port), host.c_str());
    }
    if (uri.starts_with("unix://")) return connect_unix(std::string(uri.substr(7)));
    return RawPeer();
  }

  // ---- writing ----

  bool write_bytes(std::span<const std::uint8_t> bytes) {
    std::size_t done = 0;
    const auto until = std::chrono::steady_clock::now() + kDefaultWait;
    while (done < bytes.size()) {
      if (fd_ < 0) return false;
      const ssize_t n = ::send(fd_, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        done += static_cast<std::size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        const auto left = std::chrono::duration_cast<Millis>(until - std::chrono::steady_clock::now());
        if (left.count() <= 0) return false;
        pollfd p{fd_, POLLOUT, 0};
        ::poll(&p, 1, static_cast<int>(left.count()));
        continue;
      }
      return false;
    }
    return true;
  }
  bool write_bytes(std::string_view text) {
    return write_bytes(std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(text.data()), text.size()));
  }

  // Writes `bytes` in pieces of `piece` bytes with `pause` between them (a slow or fragmenting
  // writer, like netpipe's separate prefix and body writes).
  bool write_pieces(std::span<const std::uint8_t> bytes, std::size_t piece, Millis pause) {
    if (piece == 0) piece = 1;
    for (std::size_t off = 0; off < bytes.size(); off += piece) {
      if (off > 0 && pause.count() > 0) std::this_thread::sleep_for(pause);
      if (!write_bytes(bytes.subspan(off, std::min(piece, bytes.size() - off)))) return false;
    }
    return true;
  }

  bool write_frame(std::uint8_t frame_type, std::uint16_t flags, std::uint32_t request_id, std::uint32_t method_id,
                   std::span<const std::uint8_t> payload = {},
                   std::optional<std::uint32_t> length_override = std::nullopt) {
    return write_bytes(encode_frame(frame_type, flags, request_id, method_id, payload, length_override));
  }
  bool write_frame(std::uint8_t frame_type, std::uint16_t flags, std::uint32_t request_id, std::uint32_t method_id,
                   std::string_view payload) {
    return write_frame(frame_type, flags, request_id, method_id,
                       std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(payload.data()),
                                                     payload.size()));
  }

  // ---- reading ----

  // Reads one whole frame within `wait`. `closed` on EOF (any partial frame stays unread),
  // `timeout` when the frame did not complete in time, `error` on a socket error or a length
  // prefix above 64 MiB (no test expects such a frame).
  ReadOutcome read_frame(Millis wait = kDefaultWait) {
    ReadOutcome r;
    const auto until = std::chrono::steady_clock::now() + wait;
    for (;;) {
      if (in_.size() >= 4) {
        const std::uint32_t len = be32(in_.data());
        if (len > (64u << 20)) {
          r.status = ReadStatus::error;
          r.why = "frame length " + std::to_string(len) + " is implausible";
          return r;
        }
        if (in_.size() >= 4 + std::size_t{len} && len >= 16) {
          RawFrame& f = r.frame;
          f.length = len;
          f.version = in_[4];
          f.type = in_[5];
          f.flags = be16(in_.data() + 6);
          f.request_id = be32(in_.data() + 8);
          f.method_id = be32(in_.data() + 12);
          f.payload_len = be32(in_.data() + 16);
          f.payload.assign(in_.begin() + 20, in_.begin() + 4 + len);
          f.bytes.assign(in_.begin(), in_.begin() + 4 + len);
          in_.erase(in_.begin(), in_.begin() + 4 + len);
          r.status = ReadStatus::ok;
          return r;
        }
        if (in_.size() >= 4 && len < 16) {
          r.status = ReadStatus::error;
          r.why = "frame length " + std::to_string(len) + " below the header size";
          return r;
        }
      }
      const ReadStatus got = fill(until);
      if (got != ReadStatus::ok) {
        r.status = got;
        r.why = std::string(read_status_name(got)) + " with " + std::to_string(in_.size()) + " bytes buffered";
        return r;
      }
    }
  }

  // True when the peer closes the connection (EOF or reset) within `wait`. Bytes that arrive
  // meanwhile are kept (see buffered()).
  bool closed_within(Millis wait) {
    const auto until = std::chrono::steady_clock::now() + wait;
    for (;;) {
      const ReadStatus got = fill(until);
      if (got == ReadStatus::closed || got == ReadStatus::error) return true;
      if (got == ReadStatus::timeout) return false;
    }
  }

  // True when nothing at all (no byte, no EOF) arrives within `wait`.
  bool silent_for(Millis wait) {
    if (!in_.empty() || eof_) return false;
    const auto until = std::chrono::steady_clock::now() + wait;
    return fill(until) == ReadStatus::timeout && in_.empty();
  }

  const Bytes& buffered() const { return in_; }
  bool saw_eof() const { return eof_; }

  // Half-close: the peer sees EOF, we can still read.
  void shutdown_write() {
    if (fd_ >= 0) ::shutdown(fd_, SHUT_WR);
  }
  void close() {
    if (fd_ >= 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }

 private:
  // Waits for more bytes until `until`; appends them to in_.
  ReadStatus fill(std::chrono::steady_clock::time_point until) {
    if (fd_ < 0 || eof_) return ReadStatus::closed;
    for (;;) {
      const auto left = std::chrono::duration_cast<Millis>(until - std::chrono::steady_clock::now());
      pollfd p{fd_, POLLIN, 0};
      const int pr = ::poll(&p, 1, static_cast<int>(std::max<Millis::rep>(0, left.count())));
      if (pr < 0) {
        if (errno == EINTR) continue;
        return ReadStatus::error;
      }
      if (pr == 0) return ReadStatus::timeout;
      std::uint8_t buf[65536];
      const ssize_t n = ::recv(fd_, buf, sizeof buf, MSG_DONTWAIT);
      if (n > 0) {
        in_.insert(in_.end(), buf, buf + n);
        return ReadStatus::ok;
      }
      if (n == 0) {
        eof_ = true;
        return ReadStatus::closed;
      }
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
      if (errno == ECONNRESET) {
        eof_ = true;
        return ReadStatus::closed;
      }
      return ReadStatus::error;
    }
  }

  int fd_ = -1;
  Bytes in_;
  bool eof_ = false;
};

// Plays a netpipe server: listens on an ephemeral tcp port or a unix path, accepts connections
// one at a time (bounded wait), and hands each out as a RawPeer.
class RawServer {
 public:
  RawServer() = default;
  RawServer(const RawServer&) = delete;
  RawServer& operator=(const RawServer&) = delete;
  ~RawServer() {
    if (fd_ >= 0) ::close(fd_);
    if (!path_.empty()) ::unlink(path_.c_str());
  }

  // 127.0.0.1, port chosen by the kernel.
  bool listen_tcp() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) return false;
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = 0;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::bind(fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0 || ::listen(fd_, 8) != 0) return false;
    socklen_t len = sizeof addr;
    if (::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return false;
    uri_ = "tcp://127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
    return true;
  }

  bool listen_unix(const std::string& path) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) return false;
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.size() >= sizeof addr.sun_path) return false;
    std::memcpy(addr.sun_path, path.data(), path.size());
    ::unlink(path.c_str());
    if (::bind(fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0 || ::listen(fd_, 8) != 0) return false;
    path_ = path;
    uri_ = "unix://" + path;
    return true;
  }

  // "tcp://127.0.0.1:PORT" or "unix:///path".
  const std::string& uri() const { return uri_; }

  // The next connection within `wait`; an invalid RawPeer on timeout.
  RawPeer accept(Millis wait = RawPeer::kDefaultWait) {
    if (fd_ < 0) return RawPeer();
    pollfd p{fd_, POLLIN, 0};
    const auto until = std::chrono::steady_clock::now() + wait;
    for (;;) {
      const auto left = std::chrono::duration_cast<Millis>(until - std::chrono::steady_clock::now());
      const int pr = ::poll(&p, 1, static_cast<int>(std::max<Millis::rep>(0, left.count())));
      if (pr < 0 && errno == EINTR) continue;
      if (pr <= 0) return RawPeer();
      const int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) {
        if (errno == EINTR || errno == EAGAIN) continue;
        return RawPeer();
      }
      return RawPeer(c);
    }
  }

 private:
  int fd_ = -1;
  std::string path_;
  std::string uri_;
};

}  // namespace rawpeer
