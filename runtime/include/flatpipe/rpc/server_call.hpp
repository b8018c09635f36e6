// ServerCall: the handler's handle on one incoming call, and MethodTable, the handlers by id.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>

#include <asio/awaitable.hpp>

#include "flatpipe/rpc/async.hpp"
#include "flatpipe/rpc/session.hpp"

namespace flatpipe {

// A copyable handle; the call stays alive while any copy exists. Every member is thread-safe
// and may be used from any thread, after the handler returned too (asynchronous handlers).
class ServerCall {
 public:
  ServerCall(std::shared_ptr<Session> session, std::shared_ptr<detail::CallState> call)
      : session_(std::move(session)), call_(std::move(call)) {}

  CallContext& context() const noexcept { return *call_->context; }
  // The request message (unary and server streaming); empty for the others.
  const Buffer& request() const noexcept { return call_->request; }
  CallKind kind() const noexcept { return call_->kind; }
  std::uint32_t method_id() const noexcept { return call_->method; }

  // Ends the call: unary / client streaming reply with the response or the error; server
  // streaming / bidi end the stream (a value is ignored there; an error becomes StreamError).
  // Later calls are ignored, and so is any call after the caller cancelled.
  void finish(Result<Buffer> outcome) const { session_->finish(call_, std::move(outcome)); }
  void finish(Status status) const {
    if (status.ok()) {
      session_->finish(call_, Buffer{});
    } else {
      session_->finish(call_, std::move(status));
    }
  }

  // Stream writes (server streaming, bidi). Completion: void(Status), OK once the message is
  // sent or within the reader's credit. The Buffer is kept until written.
  template <class Token>
  auto async_write(Buffer message, Token&& token) const {
    return detail::async_op<void(Status)>(
        session_->io().get_executor(), std::forward<Token>(token),
        [s = session_, c = call_, m = std::move(message)](StatusHandler done) mutable {
          s->write(c, std::move(m), std::move(done));
        });
  }
  // Blocks until async_write would complete. FAILED_PRECONDITION on the I/O thread.
  Status write(Buffer message) const;

  // Stream reads (client streaming, bidi). Completion: void(ReadResult): a message, nullopt when
  // the caller ended its stream, or the failure.
  template <class Token>
  auto async_read(Token&& token) const {
    return detail::async_op<void(ReadResult)>(
        session_->io().get_executor(), std::forward<Token>(token),
        [s = session_, c = call_](ReadHandler done) mutable { s->read(c, std::move(done)); });
  }
  // Blocks until async_read would complete. FAILED_PRECONDITION on the I/O thread.
  ReadResult read() const;

  Session& session() const noexcept { return *session_; }
  // A builder for this call's response or stream messages (see Session::builder).
  MessageBuilder builder(std::size_t initial_size = 1024) const { return session_->builder(initial_size); }

  // The session and call state, for layers built on the call (the typed server calls of
  // flatpipe/rpc/typed.hpp).
  const std::shared_ptr<Session>& session_handle() const noexcept { return session_; }
  const std::shared_ptr<detail::CallState>& state() const noexcept { return call_; }

 private:
  std::shared_ptr<Session> session_;
  std::shared_ptr<detail::CallState> call_;
};

// Handlers take the call by value and finish it, now or later, from any thread.
using Handler = std::function<void(ServerCall)>;
// A handler written as a coroutine; it runs on the connection's I/O executor.
using CoroutineHandler = std::function<asio::awaitable<void>(ServerCall)>;

struct MethodInfo {
  std::uint32_t id = 0;
  std::string name;  // "pkg.Service.Method", for errors and introspection
  CallKind kind = CallKind::unary;
  Handler handler;
  // The QoS of the stream the handler writes (server streaming, bidi): `latest` lets a newer
  // message replace one still waiting for the reader's credit. From the schema's `latest`.
  StreamQos qos = StreamQos::reliable;
};

// The methods a side serves. Fill it before serving; it is read without locks afterwards.
class MethodTable {
 public:
  // INVALID_ARGUMENT for id 0 or an empty handler; ALREADY_EXISTS naming both methods when the
  // id is taken.
  Status add(MethodInfo method);
  Status add_coroutine(std::uint32_t id, std::string name, CallKind kind, CoroutineHandler handler,
                       StreamQos qos = StreamQos::reliable);
  // A unary method from a plain function, run where handlers run. A Notification to this id
  // runs it too, and its result is dropped.
  Status add_unary(std::uint32_t id, std::string name,
                   std::function<Result<Buffer>(CallContext&, const Buffer&)> fn);

  const MethodInfo* find(std::uint32_t id) const noexcept;
  std::size_t size() const noexcept { return methods_.size(); }

 private:
  std::unordered_map<std::uint32_t, MethodInfo> methods_;
};

}  // namespace flatpipe
