// Client: calls over one connection, in three styles per call kind (blocking, callback or any
// asio completion token, C++20 coroutine via asio::use_awaitable).
//
// A Client is a cheap, copyable handle; the connection closes when the last copy of the Client
// that connected it (and of its streams) is gone, or on close(). Every member is thread-safe.
// Blocking members must not be called on the Runtime's I/O thread (they return
// FAILED_PRECONDITION there instead of deadlocking).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include "flatpipe/rpc/async.hpp"
#include "flatpipe/rpc/server_call.hpp"
#include "flatpipe/rpc/session.hpp"
#include "flatpipe/runtime.hpp"

namespace flatpipe {

struct ClientOptions {
  SessionOptions session;
  // Methods this side serves to the peer (both ends of a connection may open calls).
  std::shared_ptr<const MethodTable> methods;
};

namespace detail {
// Closes the session when the last owner lets go.
struct SessionOwner {
  std::shared_ptr<Session> session;
  bool owning = true;
  ~SessionOwner() {
    if (owning && session) session->close(Status(StatusCode::cancelled, "client closed"));
  }
};
}  // namespace detail

// A streaming call seen from the side that opened it. Move-only. Destroying a stream whose call
// is still open cancels the call.
class ClientStream {
 public:
  ClientStream() = default;
  ClientStream(std::shared_ptr<detail::SessionOwner> owner, std::shared_ptr<detail::CallState> call)
      : owner_(std::move(owner)), call_(std::move(call)) {}
  ClientStream(ClientStream&&) noexcept = default;
  ClientStream& operator=(ClientStream&& other) noexcept;
  ~ClientStream();

  // Client streaming and bidi. Completion void(Status): OK once sent or within credit; a
  // reliable write without credit completes when the reader grants more.
  template <class Token>
  auto async_write(Buffer message, Token&& token) const {
    return detail::async_op<void(Status)>(
        owner_->session->io().get_executor(), std::forward<Token>(token),
        [s = owner_->session, c = call_, m = std::move(message)](StatusHandler done) mutable {
          s->write(c, std::move(m), std::move(done));
        });
  }
  Status write(Buffer message) const;
  // Ends this side's stream. Never blocks.
  void write_done() const;

  // Server streaming and bidi. Completion void(ReadResult): a message; nullopt at the end of the
  // stream; the call's failure otherwise (messages that arrived before it are read first).
  template <class Token>
  auto async_read(Token&& token) const {
    return detail::async_op<void(ReadResult)>(
        owner_->session->io().get_executor(), std::forward<Token>(token),
        [s = owner_->session, c = call_](ReadHandler done) mutable { s->read(c, std::move(done)); });
  }
  ReadResult read() const;

  // The end of the call: the response of a client stream, an empty Buffer for server streaming
  // and bidi, or the failure. Completion void(Result<Buffer>).
  template <class Token>
  auto async_finish(Token&& token) const {
    return detail::async_op<void(Result<Buffer>)>(
        owner_->session->io().get_executor(), std::forward<Token>(token),
        [s = owner_->session, c = call_](ResponseHandler done) mutable { s->await_response(c, std::move(done)); });
  }
  Result<Buffer> finish() const;

  // Abandons the call: it fails with CANCELLED here and the peer is told. Never blocks.
  void cancel() const;
  // Trailing metadata from the peer (full mode), once the call finished.
  const Metadata& trailing_metadata() const noexcept { return call_->trailing; }
  bool valid() const noexcept { return call_ != nullptr; }
  // A builder for this stream's next message (see Session::builder).
  MessageBuilder builder(std::size_t initial_size = 1024) const { return owner_->session->builder(initial_size); }

  // The session and call state, for layers built on the stream (the typed streams of
  // flatpipe/rpc/typed.hpp). Valid while valid() is true.
  const std::shared_ptr<Session>& session() const noexcept { return owner_->session; }
  const std::shared_ptr<detail::CallState>& state() const noexcept { return call_; }

 private:
  std::shared_ptr<detail::SessionOwner> owner_;
  std::shared_ptr<detail::CallState> call_;
};

class Client {
 public:
  Client() = default;
  // A handle on an existing session (e.g. a server's connection); it does not close it.
  static Client attach(std::shared_ptr<Session> session);

  // Connects and handshakes; blocks until ready. `uri`: tcp://host:port, unix:///path, ...
  // (?mode=netpipe for a netpipe server). Errors: INVALID_ARGUMENT (bad URI or unknown scheme),
  // UNAVAILABLE (cannot connect), DEADLINE_EXCEEDED (no handshake answer). Not on the I/O thread.
  static Result<Client> connect(Runtime& runtime, std::string_view uri, ClientOptions options = {});
  // The same without blocking. Completion void(Result<Client>).
  template <class Token>
  static auto async_connect(Runtime& runtime, std::string_view uri, ClientOptions options, Token&& token) {
    return detail::async_op<void(Result<Client>)>(
        runtime.io().get_executor(), std::forward<Token>(token),
        [&runtime, u = std::string(uri), o = std::move(options)](UniqueFunction<void(Result<Client>)> done) mutable {
          start_connect(runtime, u, std::move(o), std::move(done));
        });
  }

  bool connected() const;

  // Unary. Completion void(Result<Buffer>).
  template <class Token>
  auto async_call(std::uint32_t method, Buffer request, const CallOptions& options, Token&& token) const {
    return detail::async_op<void(Result<Buffer>)>(
        owner_->session->io().get_executor(), std::forward<Token>(token),
        [s = owner_->session, method, r = std::move(request), o = options](ResponseHandler done) mutable {
          s->start_unary(method, std::move(r), o, std::move(done));
        });
  }
  Result<Buffer> call(std::uint32_t method, Buffer request, const CallOptions& options = {}) const;

  // Opens a streaming call (`request` is the request of a server stream). Never blocks.
  Result<ClientStream> open(std::uint32_t method, CallKind kind, Buffer request = {},
                            const CallOptions& options = {}) const;
  // One-way message.
  Status notify(std::uint32_t method, Buffer payload) const;

  // Closes the connection; open calls fail with UNAVAILABLE. Never blocks.
  void close() const;
  const std::shared_ptr<Session>& session() const noexcept { return owner_->session; }
  // A builder for a request on this connection (see Session::builder).
  MessageBuilder builder(std::size_t initial_size = 1024) const { return owner_->session->builder(initial_size); }

 private:
  explicit Client(std::shared_ptr<detail::SessionOwner> owner) : owner_(std::move(owner)) {}
  static void start_connect(Runtime& runtime, const std::string& uri, ClientOptions options,
                            UniqueFunction<void(Result<Client>)> done);

  std::shared_ptr<detail::SessionOwner> owner_;
};

}  // namespace flatpipe
