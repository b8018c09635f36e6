// SocketListener: an asio acceptor that accepts until closed and hands each socket, wrapped as
// a FrameConnection, to the AcceptHandler. Shared by the socket transports (tcp, unix).
#pragma once

#include <sys/stat.h>
#include <unistd.h>

#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include <asio/post.hpp>
#include <asio/steady_timer.hpp>

#include "flatpipe/transport/transport.hpp"

namespace flatpipe::detail {

template <class Acceptor, class Socket>
class SocketListener final : public Listener,
                             public std::enable_shared_from_this<SocketListener<Acceptor, Socket>> {
 public:
  using Wrap = std::shared_ptr<FrameConnection> (*)(Socket, const ConnectionLimits&);

  // `unlink_path`: a filesystem socket path removed when the listener closes ("" for none).
  SocketListener(Acceptor acceptor, std::string local, ConnectionLimits limits, AcceptHandler on_accept,
                 Wrap wrap, std::string unlink_path)
      : acceptor_(std::move(acceptor)),
        backoff_(acceptor_.get_executor()),
        local_(std::move(local)),
        limits_(limits),
        on_accept_(std::move(on_accept)),
        wrap_(wrap),
        unlink_path_(std::move(unlink_path)) {}

  ~SocketListener() override { remove_path(); }

  void start() { accept_next(); }

  std::string local_endpoint() const override { return local_; }

  void close() override {
    asio::post(acceptor_.get_executor(), [self = this->shared_from_this()] {
      std::error_code ignored;
      self->closed_ = true;
      self->acceptor_.close(ignored);
      self->backoff_.cancel();
      self->remove_path();
    });
  }

 private:
  void accept_next() {
    acceptor_.async_accept([self = this->shared_from_this()](const std::error_code& ec, Socket socket) {
      if (self->closed_ || ec == asio::error::operation_aborted) return;
      if (!ec) {
        self->on_accept_(self->wrap_(std::move(socket), self->limits_));
        self->accept_next();
        return;
      }
      // Other errors (EMFILE and the like) are transient for a listener: try again shortly
      // instead of spinning.
      self->backoff_.expires_after(std::chrono::milliseconds(20));
      self->backoff_.async_wait([self](const std::error_code&) {
        if (!self->closed_) self->accept_next();
      });
    });
  }

  void remove_path() {
    std::lock_guard lk(path_mu_);
    if (!unlink_path_.empty()) {
      ::unlink(unlink_path_.c_str());
      unlink_path_.clear();
    }
  }

  Acceptor acceptor_;
  asio::steady_timer backoff_;
  const std::string local_;
  const ConnectionLimits limits_;
  AcceptHandler on_accept_;
  Wrap wrap_;
  std::mutex path_mu_;
  std::string unlink_path_;
  bool closed_ = false;  // I/O thread only
};

}  // namespace flatpipe::detail
