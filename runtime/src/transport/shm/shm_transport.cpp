// shm://name — frames through shared memory between processes of one machine
// (docs/transports/shm.md).
//
// Rendezvous and liveness: a SOCK_SEQPACKET Unix socket in Linux's abstract namespace,
// "@flatpipe-shm/<name>" (no file: nothing to clean up, gone with the listener). Each side sends
// one HELLO record carrying its segment's memfd (SCM_RIGHTS); the connector first, the acceptor
// answers. The socket then carries doorbells and large-message memfds, and its end is how each
// side learns that the other is gone (including after kill -9).
//
// Query keys: segment=<bytes>[K|M|G] (this side's outgoing segment, default 64M),
// spin_us=<n> (polling after the last work before sleeping, default 50).
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <utility>

#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <asio/posix/stream_descriptor.hpp>
#include <asio/steady_timer.hpp>

#include "flatpipe/transport/transport.hpp"
#include "transport/shm/shm_connection.hpp"
#include "transport/shm/shm_segment.hpp"

namespace flatpipe {
namespace {

using namespace std::chrono_literals;
using shm::UniqueFd;

using shm::HelloRecord;
using shm::kHelloMagic;
using shm::kHelloVersion;
constexpr auto kHandshakeTimeout = 5s;

struct Address {
  sockaddr_un sun{};
  socklen_t len = 0;
};

Result<Address> address_of(const Endpoint& ep) {
  const std::string& name = ep.address;
  if (name.empty()) return Status(StatusCode::invalid_argument, "shm endpoint needs a name: shm://name");
  if (name.find('\0') != std::string::npos) {
    return Status(StatusCode::invalid_argument, "shm endpoint name contains a NUL byte");
  }
  Address a;
  a.sun.sun_family = AF_UNIX;
  const std::string path = std::string(1, '\0') + shm::socket_name(name);
  if (path.size() > sizeof a.sun.sun_path) {
    return Status(StatusCode::invalid_argument,
                  "shm endpoint name '" + name + "' is longer than " +
                      std::to_string(sizeof a.sun.sun_path - path.size() + name.size()) + " bytes");
  }
  std::memcpy(a.sun.sun_path, path.data(), path.size());
  a.len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size());
  return a;
}

Result<shm::Tuning> tuning_of(const Endpoint& ep) {
  shm::Tuning t;
  if (ep.has_param("segment")) {
    const std::uint64_t size = shm::parse_size(ep.param("segment"));
    if (size < shm::kMinSegmentSize || size > shm::kMaxSegmentSize || size % 4096 != 0) {
      return Status(StatusCode::invalid_argument,
                    "shm: segment=" + ep.param("segment") + " is not a multiple of 4096 in [1M, 4G]");
    }
    t.segment_size = size;
  }
  if (ep.has_param("spin_us")) {
    const std::uint64_t us = shm::parse_size(ep.param("spin_us"));
    if ((us == 0 && ep.param("spin_us") != "0") || us > 1'000'000) {
      return Status(StatusCode::invalid_argument, "shm: spin_us=" + ep.param("spin_us") + " is not in [0, 1000000]");
    }
    t.spin = std::chrono::microseconds(us);
  }
  return t;
}

Status sys_status(const std::string& what) {
  return Status(StatusCode::unavailable, "shm: " + what + ": " + std::strerror(errno));
}

// Sends our HELLO with our segment's memfd. The socket is fresh, so the record fits.
Status send_hello(int sock, const shm::OwnSegment& seg) {
  HelloRecord h{kHelloMagic, kHelloVersion, static_cast<std::uint32_t>(::getpid()), seg.layout.segment_size, 0};
  if (shm::send_with_fd(sock, &h, sizeof h, seg.fd.get(), MSG_DONTWAIT | MSG_NOSIGNAL) == static_cast<ssize_t>(sizeof h)) {
    return Status();
  }
  return sys_status("sending the handshake");
}

// Reads the peer's HELLO and maps its segment. `again` is set when nothing has arrived yet.
Result<shm::PeerSegment> recv_hello(int sock, bool& again) {
  again = false;
  HelloRecord h{};
  char extra[16];
  iovec iov[2] = {{&h, sizeof h}, {extra, sizeof extra}};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)];
  msghdr msg{};
  msg.msg_iov = iov;
  msg.msg_iovlen = 2;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n;
  do {
    n = ::recvmsg(sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
    again = true;
    return Status(StatusCode::unavailable, "no handshake yet");
  }
  if (n < 0) return sys_status("reading the handshake");
  UniqueFd seg_fd;
  int fds = 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      UniqueFd owned(fd);
      if (fds++ == 0) seg_fd = std::move(owned);
    }
  }
  if (n == 0) return Status(StatusCode::unavailable, "shm: the peer closed the connection during the handshake");
  if (n != static_cast<ssize_t>(sizeof h) || h.magic != kHelloMagic) {
    return Status(StatusCode::invalid_argument, "shm: the peer's handshake is not a flatpipe shm HELLO");
  }
  if (h.version != kHelloVersion) {
    return Status(StatusCode::failed_precondition,
                  "shm: the peer speaks handshake version " + std::to_string(h.version) + ", we speak 1");
  }
  if (fds != 1 || (msg.msg_flags & MSG_CTRUNC)) {
    return Status(StatusCode::invalid_argument, "shm: the peer's handshake must carry exactly one memfd");
  }
  return shm::map_peer_segment(seg_fd.get());
}

// One side's handshake in progress: waits (bounded) for the peer's HELLO on `sock`.
class Handshake : public std::enable_shared_from_this<Handshake> {
 public:
  using Done = std::function<void(Result<shm::PeerSegment>, UniqueFd socket)>;

  Handshake(asio::io_context& io, UniqueFd sock, Done done)
      : sd_(io, sock.release()), timer_(io), done_(std::move(done)) {}

  void start() {
    timer_.expires_after(kHandshakeTimeout);
    timer_.async_wait([self = shared_from_this()](const std::error_code& ec) {
      if (ec || self->finished_) return;
      self->timed_out_ = true;
      std::error_code ignored;
      self->sd_.cancel(ignored);
    });
    wait();
  }

 private:
  void wait() {
    sd_.async_wait(asio::posix::stream_descriptor::wait_read, [self = shared_from_this()](const std::error_code& ec) {
      if (self->timed_out_) {
        self->complete(Status(StatusCode::unavailable, "shm: the peer did not complete the handshake within 5 s"));
        return;
      }
      if (ec) {
        self->complete(Status(StatusCode::unavailable, "shm: handshake failed: " + ec.message()));
        return;
      }
      bool again = false;
      auto peer = recv_hello(self->sd_.native_handle(), again);
      if (again) {
        self->wait();
        return;
      }
      self->complete(std::move(peer));
    });
  }

  void complete(Result<shm::PeerSegment> peer) {
    finished_ = true;
    timer_.cancel();
    UniqueFd sock(sd_.release());
    done_(std::move(peer), std::move(sock));
  }

  asio::posix::stream_descriptor sd_;
  asio::steady_timer timer_;
  Done done_;
  bool timed_out_ = false;
  bool finished_ = false;
};

class ShmListener final : public Listener, public std::enable_shared_from_this<ShmListener> {
 public:
  ShmListener(asio::io_context& io, UniqueFd lfd, std::string name, ConnectionLimits limits, shm::Tuning tuning,
              AcceptHandler on_accept)
      : io_(io),
        sd_(io, lfd.release()),
        backoff_(io),
        name_(std::move(name)),
        limits_(limits),
        tuning_(tuning),
        on_accept_(std::move(on_accept)) {}

  void start() { accept_next(); }

  std::string local_endpoint() const override { return "shm://" + name_; }

  void close() override {
    asio::post(io_, [self = shared_from_this()] {
      std::error_code ignored;
      self->closed_ = true;
      self->sd_.close(ignored);
      self->backoff_.cancel();
    });
  }

 private:
  void accept_next() {
    sd_.async_wait(asio::posix::stream_descriptor::wait_read, [self = shared_from_this()](const std::error_code& ec) {
      if (self->closed_ || ec == asio::error::operation_aborted) return;
      if (ec) {
        self->retry_later();
        return;
      }
      for (;;) {
        const int fd = ::accept4(self->sd_.native_handle(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
          self->handshake(UniqueFd(fd));
          continue;
        }
        if (errno == EINTR || errno == ECONNABORTED) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        self->retry_later();  // EMFILE and the like: transient for a listener
        return;
      }
      self->accept_next();
    });
  }

  void retry_later() {
    backoff_.expires_after(20ms);
    backoff_.async_wait([self = shared_from_this()](const std::error_code&) {
      if (!self->closed_) self->accept_next();
    });
  }

  void handshake(UniqueFd sock) {
    std::weak_ptr<ShmListener> weak = shared_from_this();
    auto hs = std::make_shared<Handshake>(
        io_, std::move(sock), [weak, &io = io_](Result<shm::PeerSegment> peer, UniqueFd s) {
          auto self = weak.lock();
          if (!self || self->closed_ || !peer) return;  // a failed handshake just drops that socket
          auto mine = shm::create_segment(self->tuning_.segment_size);
          if (!mine) return;
          if (!send_hello(s.get(), *mine).ok()) return;
          mine->fd.reset();  // the peer holds it now; the mapping keeps the memory
          auto conn = std::make_shared<shm::ShmConnection>(io, std::move(s), std::move(*mine), std::move(*peer),
                                                           self->limits_, self->tuning_, "shm://" + self->name_);
          self->on_accept_(std::move(conn));
        });
    hs->start();
  }

  asio::io_context& io_;
  asio::posix::stream_descriptor sd_;
  asio::steady_timer backoff_;
  const std::string name_;
  const ConnectionLimits limits_;
  const shm::Tuning tuning_;
  AcceptHandler on_accept_;
  bool closed_ = false;  // I/O thread only
};

class ShmTransport final : public Transport {
 public:
  std::string_view scheme() const override { return "shm"; }

  Result<std::shared_ptr<Listener>> listen(const Endpoint& endpoint, const TransportContext& ctx,
                                           AcceptHandler on_accept) override {
    auto addr = address_of(endpoint);
    if (!addr) return addr.status();
    auto tuning = tuning_of(endpoint);
    if (!tuning) return tuning.status();
    UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd) return sys_status("socket");
    if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr->sun), addr->len) != 0) {
      if (errno == EADDRINUSE) {
        return Status(StatusCode::already_exists, "an shm server is already listening on " + endpoint.to_string());
      }
      return sys_status("cannot listen on " + endpoint.to_string());
    }
    if (::listen(fd.get(), SOMAXCONN) != 0) return sys_status("listen on " + endpoint.to_string());
    auto listener = std::make_shared<ShmListener>(ctx.io, std::move(fd), endpoint.address, ctx.limits, *tuning,
                                                  std::move(on_accept));
    listener->start();
    return std::shared_ptr<Listener>(std::move(listener));
  }

  void async_connect(const Endpoint& endpoint, const TransportContext& ctx, ConnectHandler done) override {
    auto fail = [&ctx, &done](Status st) {
      asio::post(ctx.io, [done = std::move(done), st = std::move(st)]() mutable { done(std::move(st)); });
    };
    auto addr = address_of(endpoint);
    if (!addr) return fail(addr.status());
    auto tuning = tuning_of(endpoint);
    if (!tuning) return fail(tuning.status());
    UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd) return fail(sys_status("socket"));
    int rc;
    do {
      rc = ::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr->sun), addr->len);
    } while (rc != 0 && errno == EINTR);
    if (rc != 0) {
      const std::string where = endpoint.to_string();
      if (errno == ECONNREFUSED || errno == ENOENT) {
        return fail(Status(StatusCode::unavailable, "cannot connect to " + where + ": no shm server is listening"));
      }
      return fail(Status(StatusCode::unavailable, "cannot connect to " + where + ": " + std::strerror(errno)));
    }
    auto mine = shm::create_segment(tuning->segment_size);
    if (!mine) return fail(mine.status());
    if (Status st = send_hello(fd.get(), *mine); !st.ok()) return fail(st);
    mine->fd.reset();  // the peer has it (or never will: then the mapping is all that is left)
    auto seg = std::make_shared<shm::OwnSegment>(std::move(*mine));
    auto done_ptr = std::make_shared<ConnectHandler>(std::move(done));
    auto hs = std::make_shared<Handshake>(
        ctx.io, std::move(fd),
        [seg, done_ptr, &io = ctx.io, limits = ctx.limits, tuning = *tuning, where = endpoint.to_string(),
         name = endpoint.address](Result<shm::PeerSegment> peer, UniqueFd s) {
          if (!peer) {
            (*done_ptr)(Status(peer.code(), "cannot connect to " + where + ": " + peer.status().message()));
            return;
          }
          (*done_ptr)(std::shared_ptr<FrameConnection>(std::make_shared<shm::ShmConnection>(
              io, std::move(s), std::move(*seg), std::move(*peer), limits, tuning, "shm://" + name)));
        });
    hs->start();
  }
};

}  // namespace

std::shared_ptr<Transport> make_shm_transport() { return std::make_shared<ShmTransport>(); }

}  // namespace flatpipe
