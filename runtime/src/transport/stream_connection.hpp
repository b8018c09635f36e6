// StreamConnection<Socket>: FrameConnection over any asio byte stream (tcp, unix, and later the
// secure layer, which only has to look like an asio stream socket).
//
// Reading: one read at a time into a FrameAssembler; every complete frame of a read goes to the
// sink before the next read (many frames per read, payloads viewing the receive slab).
// Writing: send() queues; when no write is in flight, the queue is written at once from the
// calling thread with one non-blocking gathered sendmsg(); what the kernel does not take goes out
// through asio's async_write on the I/O thread, and frames queued meanwhile are coalesced into
// the next gathered write. While the reader hands a batch of frames to the sink, sends are held
// (corked) and flushed together when the batch ends, so replies to one read leave in one write.
#pragma once

#include <sys/socket.h>
#include <sys/uio.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <asio/buffer.hpp>
#include <asio/dispatch.hpp>
#include <asio/post.hpp>
#include <asio/io_context.hpp>
#include <asio/write.hpp>

#include "flatpipe/transport/transport.hpp"

namespace flatpipe::detail {

template <class Socket>
class StreamConnection final : public FrameConnection,
                               public std::enable_shared_from_this<StreamConnection<Socket>> {
 public:
  StreamConnection(Socket socket, const ConnectionLimits& limits, std::string peer)
      : socket_(std::move(socket)),
        limits_(limits),
        assembler_(limits.max_frame),
        peer_(std::move(peer)),
        executor_(socket_.get_executor()),
        fd_(socket_.native_handle()) {}

  void start(std::shared_ptr<FrameSink> sink) override {
    {
      std::lock_guard lk(mu_);
      sink_ = std::move(sink);
      reading_ = true;
    }
    asio::dispatch(socket_.get_executor(), [self = this->shared_from_this()] { self->read_more(); });
  }

  SendResult send(wire::OutFrame&& frame) override {
    std::unique_lock lk(mu_);
    if (closing_) return SendResult::closed;
    queued_bytes_ += frame.size();
    queue_.push_back(std::move(frame));
    if (!writing_ && !corked_) {
      if (on_io_thread()) {
        // Frames produced on the I/O thread outside a read batch (stream writers, coroutine
        // callers) leave together: one flush after the handlers already queued have run.
        if (!flush_posted_) {
          flush_posted_ = true;
          asio::post(executor_, [self = this->shared_from_this()] {
            std::lock_guard guard(self->mu_);
            self->flush_posted_ = false;
            if (!self->writing_ && !self->corked_ && !self->queue_.empty()) self->flush_locked();
          });
        }
      } else {
        flush_locked();  // another thread: write now, no hop to the I/O thread
      }
    }
    if (queued_bytes_ > limits_.high_water) {
      above_high_ = true;
      return SendResult::above_high_water;
    }
    return SendResult::ok;
  }

  void set_read_paused(bool paused) override {
    std::lock_guard lk(mu_);
    paused_ = paused;
    if (!paused && !reading_ && !closing_ && sink_) {
      reading_ = true;
      asio::post(socket_.get_executor(), [self = this->shared_from_this()] { self->read_more(); });
    }
  }

  void set_max_frame(std::uint32_t max_frame) override {
    std::lock_guard lk(mu_);
    pending_max_frame_ = max_frame;
  }

  void close(const Status& why, bool flush) override {
    std::lock_guard lk(mu_);
    if (closing_) return;
    closing_ = true;
    close_reason_ = why;
    if (flush && (writing_ || !queue_.empty())) {
      close_after_flush_ = true;
      if (!writing_) flush_locked();
      return;
    }
    post_shutdown_locked();
  }

  std::size_t queued_bytes() const override {
    std::lock_guard lk(mu_);
    return queued_bytes_;
  }
  std::string peer() const override { return peer_; }
  asio::any_io_executor executor() const override { return executor_; }

 private:
  bool on_io_thread() const noexcept {
    const auto* ex = executor_.template target<asio::io_context::executor_type>();
    return ex && ex->running_in_this_thread();
  }

  // ---- reading (I/O thread) ----

  void read_more() {
    {
      std::unique_lock lk(mu_);
      if (fd_ < 0) {
        // Closed while the last read was being handled: nobody else will finish.
        reading_ = false;
        lk.unlock();
        finish(Status(StatusCode::unavailable, "connection closed"));
        return;
      }
      if (paused_) {
        reading_ = false;
        return;
      }
      if (pending_max_frame_) {
        assembler_.set_max_body(pending_max_frame_);
        pending_max_frame_ = 0;
      }
    }
    auto space = assembler_.prepare();
    socket_.async_read_some(asio::buffer(space.data(), space.size()),
                            [self = this->shared_from_this()](const std::error_code& ec, std::size_t n) {
                              self->on_read(ec, n);
                            });
  }

  void on_read(const std::error_code& ec, std::size_t n) {
    bool closed;
    {
      std::lock_guard lk(mu_);
      closed = fd_ < 0;
    }
    if (closed) {  // bytes read just before close(): the connection is over, drop them
      finish(Status(StatusCode::unavailable, "connection closed"));
      return;
    }
    if (ec) {
      std::string why;
      if (ec == asio::error::eof) {
        why = "peer closed the connection";
      } else if (ec == asio::error::operation_aborted) {
        why = "connection closed";
      } else {
        why = "read failed: " + ec.message();
      }
      if (assembler_.pending_bytes() > 0) {
        why += " in the middle of a frame (" + std::to_string(assembler_.pending_bytes()) +
               " bytes of an unfinished frame dropped)";
      }
      finish(Status(StatusCode::unavailable, why));
      return;
    }
    assembler_.commit(n);
    std::shared_ptr<FrameSink> sink;
    {
      std::lock_guard lk(mu_);
      sink = sink_;
      corked_ = true;
    }
    wire::Frame frame;
    while (sink && assembler_.next(frame)) sink->on_frame(std::move(frame));
    {
      std::lock_guard lk(mu_);
      corked_ = false;
      if (!writing_ && !queue_.empty()) flush_locked();
    }
    if (assembler_.error() != wire::FrameError::none) {
      {
        std::lock_guard lk(mu_);
        reading_ = false;
      }
      if (sink) {
        const auto code = assembler_.error() == wire::FrameError::too_large ? StatusCode::resource_exhausted
                                                                            : StatusCode::invalid_argument;
        sink->on_frame_error(Status(code,
                                    wire::describe(assembler_.error(), assembler_.error_length(),
                                                   assembler_.max_body())));
      }
      return;
    }
    read_more();
  }

  // ---- writing ----

  // Writes as much of the queue as the kernel takes now, without blocking; the rest goes to an
  // asynchronous write. Requires mu_ held, !writing_.
  void flush_locked() {
    while (!queue_.empty() && fd_ >= 0) {
      iovec iov[kMaxIov];
      int count = 0;
      std::size_t skip = front_offset_;
      for (auto it = queue_.begin(); it != queue_.end() && count + 3 <= kMaxIov; ++it) {
        add_iov(iov, count, skip, it->head.data(), it->head.size());
        add_iov(iov, count, skip, it->extra.data(), it->extra.size());
        add_iov(iov, count, skip, it->body.data(), it->body.size());
      }
      msghdr msg{};
      msg.msg_iov = iov;
      msg.msg_iovlen = static_cast<std::size_t>(count);
      const ssize_t wrote = ::sendmsg(fd_, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (wrote < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        write_failed_locked(std::string("write failed: ") + std::strerror(errno));
        return;
      }
      consume_locked(static_cast<std::size_t>(wrote));
    }
    if (!queue_.empty() && fd_ >= 0) {
      writing_ = true;
      asio::post(socket_.get_executor(), [self = this->shared_from_this()] { self->async_write_queue(); });
      return;
    }
    written_all_locked();
  }

  static void add_iov(iovec* iov, int& count, std::size_t& skip, const void* data, std::size_t size) {
    if (size <= skip) {
      skip -= size;
      return;
    }
    iov[count].iov_base = const_cast<char*>(static_cast<const char*>(data) + skip);
    iov[count].iov_len = size - skip;
    skip = 0;
    ++count;
  }

  // Drops `n` written bytes from the front of the queue.
  void consume_locked(std::size_t n) {
    queued_bytes_ -= n;
    n += front_offset_;
    while (!queue_.empty() && n >= queue_.front().size()) {
      n -= queue_.front().size();
      queue_.pop_front();
    }
    front_offset_ = n;
  }

  void written_all_locked() {
    if (above_high_ && queued_bytes_ <= limits_.low_water) {
      above_high_ = false;
      if (sink_) {
        asio::post(socket_.get_executor(), [sink = sink_] { sink->on_writable(); });
      }
    }
    if (queue_.empty() && close_after_flush_) {
      close_after_flush_ = false;
      post_shutdown_locked();
    }
  }

  // I/O thread: one gathered asynchronous write of everything queued.
  void async_write_queue() {
    std::vector<asio::const_buffer> bufs;
    {
      std::lock_guard lk(mu_);
      if (fd_ < 0 || queue_.empty()) {
        writing_ = false;
        return;
      }
      std::size_t skip = front_offset_;
      bufs.reserve(queue_.size() * 3);
      auto add = [&](const void* data, std::size_t size) {
        if (size <= skip) {
          skip -= size;
          return;
        }
        bufs.emplace_back(static_cast<const char*>(data) + skip, size - skip);
        skip = 0;
      };
      for (const auto& f : queue_) {
        add(f.head.data(), f.head.size());
        add(f.extra.data(), f.extra.size());
        add(f.body.data(), f.body.size());
      }
    }
    // The queued frames stay in queue_ (deque: stable elements) until consumed below.
    asio::async_write(socket_, bufs,
                      [self = this->shared_from_this()](const std::error_code& ec, std::size_t n) {
                        std::lock_guard lk(self->mu_);
                        self->writing_ = false;
                        if (ec) {
                          self->write_failed_locked("write failed: " + ec.message());
                          return;
                        }
                        self->consume_locked(n);
                        if (!self->queue_.empty()) {
                          if (!self->corked_) self->flush_locked();
                        } else {
                          self->written_all_locked();
                        }
                      });
  }

  void write_failed_locked(std::string why) {
    if (!closing_) {
      closing_ = true;
      close_reason_ = Status(StatusCode::unavailable, std::move(why));
    }
    queue_.clear();
    queued_bytes_ = 0;
    front_offset_ = 0;
    post_shutdown_locked();
  }

  // ---- closing ----

  void post_shutdown_locked() {
    asio::post(socket_.get_executor(), [self = this->shared_from_this()] {
      std::error_code ignored;
      {
        std::lock_guard lk(self->mu_);
        if (self->fd_ < 0) return;
        self->fd_ = -1;  // direct writes stop before the descriptor can be reused
        self->socket_.shutdown(Socket::shutdown_both, ignored);
        self->socket_.close(ignored);
      }
      // A pending read completes with operation_aborted and calls finish(); if none is
      // pending (paused or stopped after a frame error), finish here.
      bool reading;
      {
        std::lock_guard lk(self->mu_);
        reading = self->reading_;
      }
      if (!reading) self->finish(Status(StatusCode::unavailable, "connection closed"));
    });
  }

  // I/O thread: the end. Tells the sink once and lets it go.
  void finish(Status why) {
    std::shared_ptr<FrameSink> sink;
    {
      std::lock_guard lk(mu_);
      reading_ = false;
      if (finished_) return;
      finished_ = true;
      if (close_reason_) why = *close_reason_;
      closing_ = true;
      if (!writing_) {  // an asynchronous write still owns the queue's buffers until it completes
        queue_.clear();
        queued_bytes_ = 0;
      }
      if (fd_ >= 0) {
        fd_ = -1;
        std::error_code ignored;
        socket_.close(ignored);
      }
      sink = std::move(sink_);
    }
    if (sink) sink->on_closed(why);
  }

  static constexpr int kMaxIov = IOV_MAX < 256 ? IOV_MAX : 256;

  Socket socket_;
  const ConnectionLimits limits_;
  wire::FrameAssembler assembler_;  // I/O thread only
  const std::string peer_;
  const asio::any_io_executor executor_;

  mutable std::mutex mu_;
  int fd_;  // -1 once closed; guarded by mu_
  std::shared_ptr<FrameSink> sink_;
  std::deque<wire::OutFrame> queue_;
  std::size_t front_offset_ = 0;  // bytes of queue_.front() already written
  std::size_t queued_bytes_ = 0;
  std::uint32_t pending_max_frame_ = 0;
  std::optional<Status> close_reason_;
  bool writing_ = false;
  bool corked_ = false;
  bool flush_posted_ = false;
  bool above_high_ = false;
  bool closing_ = false;
  bool close_after_flush_ = false;
  bool paused_ = false;
  bool reading_ = false;
  bool finished_ = false;
};

}  // namespace flatpipe::detail
