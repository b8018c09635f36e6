// The typed layer generated code sits on (docs/compiler.md): messages of a schema's tables in
// and out of Client, ClientStream and ServerCall, verified before user code sees them.
//
//   Payload<T>            a message of type T to send (from a builder, an object-API value, a
//                         received Message<T>, or the bytes of a finished T)
//   Reply<T>              what a unary or client-streaming handler answers: a Payload<T> or an error
//   ClientReader<Res>     server streaming, caller's side: read, finish
//   ClientWriter<Req,Res> client streaming, caller's side: write, write_done, finish (the response)
//   ClientReaderWriter    bidi, caller's side: read, write, write_done, finish
//   ServerWriter<Res>, ServerReader<Req>, ServerReaderWriter<Req,Res>: the handler's side
//
// Verification: every received message is checked by the FlatBuffers verifier (Message<T>::verify)
// before it is handed out. A message the caller receives that fails is the peer's fault: the read
// or call fails with INTERNAL and an open stream is cancelled. A message a handler receives that
// fails ends the call with INVALID_ARGUMENT (docs/protocol.md, "Bad input"); the handler sees the
// same status from its read, and is never given the message.
//
// Every blocking member must not run on the Runtime's I/O thread (FAILED_PRECONDITION there);
// every async_ member takes any asio completion token (default: asio::use_awaitable) and completes
// on the token's associated executor. Handles are cheap to copy (server side) or move (client
// side) and thread-safe like the objects they wrap.
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include <asio/awaitable.hpp>
#include <asio/co_spawn.hpp>
#include <asio/use_awaitable.hpp>
#include <flatbuffers/flatbuffers.h>

#include "flatpipe/buffer.hpp"
#include "flatpipe/message.hpp"
#include "flatpipe/rpc/async.hpp"
#include "flatpipe/rpc/call.hpp"
#include "flatpipe/rpc/client.hpp"
#include "flatpipe/rpc/server_call.hpp"
#include "flatpipe/status.hpp"

namespace flatpipe {

// A message of type T to send. Holds finished FlatBuffer bytes; building one never blocks.
template <class T>
class Payload {
 public:
  // The bytes of a finished T, trusted as such (the receiver verifies them).
  explicit Payload(Buffer bytes) noexcept : bytes_(std::move(bytes)) {}
  // A finished builder (Finish() called): its bytes are taken without copying, the builder is
  // left empty. With a MessageBuilder from builder() the bytes are in the connection's memory.
  Payload(flatbuffers::FlatBufferBuilder&& builder) : bytes_(Buffer::adopt(builder)) {}  // NOLINT
  // A received message, forwarded without copying.
  Payload(const Message<T>& message) noexcept : bytes_(message.buffer()) {}  // NOLINT
  // An object-API value (flatc --gen-object-api), packed at once into a heap builder.
  template <class U = T>
    requires requires { typename U::NativeTableType; }
  Payload(const typename U::NativeTableType& value) {  // NOLINT
    MessageBuilder builder;
    builder.Finish(U::Pack(builder, &value));
    bytes_ = builder.release();
  }

  const Buffer& bytes() const& noexcept { return bytes_; }
  Buffer take() && noexcept { return std::move(bytes_); }

 private:
  Buffer bytes_;
};

namespace detail {
// Marks the reply of a handler the skeleton did not override (see serve_unary).
struct DeferToCoroutine {};
}  // namespace detail

// What a unary or client-streaming handler answers: a message of type T, or a non-OK Status.
// An OK Status without a message is answered as INTERNAL (a response message is required).
template <class T>
class Reply {
 public:
  Reply(Status status)  // NOLINT
      : outcome_(status.ok() ? Status(StatusCode::internal, "the handler returned OK without a response message")
                             : std::move(status)) {}
  Reply(Payload<T> payload) : outcome_(std::move(payload).take()) {}  // NOLINT
  Reply(flatbuffers::FlatBufferBuilder&& builder) : Reply(Payload<T>(std::move(builder))) {}  // NOLINT
  Reply(const Message<T>& message) : Reply(Payload<T>(message)) {}  // NOLINT
  template <class U = T>
    requires requires { typename U::NativeTableType; }
  Reply(const typename U::NativeTableType& value) : Reply(Payload<T>(value)) {}  // NOLINT
  Reply(detail::DeferToCoroutine) : outcome_(Status(StatusCode::unimplemented, "")), deferred_(true) {}  // NOLINT

  bool ok() const noexcept { return outcome_.ok(); }
  Status status() const { return outcome_.status(); }
  // The generated skeleton's default plain handler: run the coroutine form instead.
  bool deferred() const noexcept { return deferred_; }
  Result<Buffer> take() && { return std::move(outcome_); }

 private:
  Result<Buffer> outcome_;
  bool deferred_ = false;
};

// A stream read: a verified message, nullopt at the end of the stream, or the failure.
template <class T>
using ReadOutcome = Result<std::optional<Message<T>>>;

namespace detail {

// Stands for the message type of a direction a stream does not have.
struct NoMessage {};

// A message the caller received (response or stream message): INTERNAL when it is not a T.
template <class T>
Result<Message<T>> received(Result<Buffer> outcome) {
  if (!outcome) return outcome.status();
  auto message = Message<T>::verify(std::move(*outcome));
  if (!message) return Status(StatusCode::internal, "the peer sent a bad message: " + message.status().message());
  return message;
}

// A stream read on the caller's side; a message that fails verification cancels the call.
template <class T>
ReadOutcome<T> client_read(Session& session, const std::shared_ptr<CallState>& call, ReadResult read) {
  if (!read) return read.status();
  if (!*read) return std::optional<Message<T>>();
  auto message = received<T>(std::move(**read));
  if (!message) {
    session.cancel(call, message.status());
    return message.status();
  }
  return std::optional<Message<T>>(std::move(*message));
}

// A stream read on the handler's side; a message that fails verification ends the call.
template <class T>
ReadOutcome<T> server_read(Session& session, const std::shared_ptr<CallState>& call, ReadResult read) {
  if (!read) return read.status();
  if (!*read) return std::optional<Message<T>>();
  auto message = Message<T>::verify(std::move(**read));
  if (!message) {
    session.finish(call, message.status());
    return message.status();
  }
  return std::optional<Message<T>>(std::move(*message));
}

inline Status to_status(Result<Buffer> outcome) { return outcome.ok() ? Status() : outcome.status(); }

inline CallOptions with_qos(CallOptions options, StreamQos qos) {
  options.qos = qos;
  return options;
}

// The caller's side of a typed stream; the public classes below expose the members their kind has.
template <class Req, class Res>
class TypedClientStream {
 public:
  TypedClientStream() = default;
  explicit TypedClientStream(ClientStream stream) noexcept : stream_(std::move(stream)) {}

  bool valid() const noexcept { return stream_.valid(); }
  // Abandons the call: it fails with CANCELLED here and the peer's handler sees cancelled().
  // Never blocks.
  void cancel() const { stream_.cancel(); }
  // The peer's trailing metadata (full mode), once the call finished.
  const Metadata& trailing_metadata() const noexcept { return stream_.trailing_metadata(); }
  // A builder for the next message, in the connection's memory.
  MessageBuilder builder(std::size_t initial_size = 1024) const { return stream_.builder(initial_size); }
  // The untyped stream underneath.
  const ClientStream& stream() const noexcept { return stream_; }

 protected:
  // Blocks until a message, the end (nullopt) or the failure.
  ReadOutcome<Res> read() const {
    return client_read<Res>(*stream_.session(), stream_.state(), stream_.read());
  }
  // Completion void(ReadOutcome<Res>).
  template <class Token = const asio::use_awaitable_t<>&>
  auto async_read(Token&& token = asio::use_awaitable) const {
    return async_op<void(ReadOutcome<Res>)>(
        stream_.session()->io().get_executor(), std::forward<Token>(token),
        [s = stream_.session(), c = stream_.state()](UniqueFunction<void(ReadOutcome<Res>)> done) mutable {
          Session& session = *s;
          session.read(c, [s = std::move(s), c, done = std::move(done)](ReadResult r) mutable {
            done(client_read<Res>(*s, c, std::move(r)));
          });
        });
  }
  // Blocks until the message is sent or within the reader's credit (`latest` never waits).
  Status write(Payload<Req> message) const { return stream_.write(std::move(message).take()); }
  // Completion void(Status).
  template <class Token = const asio::use_awaitable_t<>&>
  auto async_write(Payload<Req> message, Token&& token = asio::use_awaitable) const {
    return stream_.async_write(std::move(message).take(), std::forward<Token>(token));
  }
  // Ends this side's stream. Never blocks.
  void write_done() const { stream_.write_done(); }

  // Client streaming: blocks until the response or the failure.
  Result<Message<Res>> finish_response() const { return received<Res>(stream_.finish()); }
  template <class Token>
  auto async_finish_response(Token&& token) const {
    return async_op<void(Result<Message<Res>>)>(
        stream_.session()->io().get_executor(), std::forward<Token>(token),
        [s = stream_.session(), c = stream_.state()](UniqueFunction<void(Result<Message<Res>>)> done) mutable {
          s->await_response(c, [done = std::move(done)](Result<Buffer> r) mutable { done(received<Res>(std::move(r))); });
        });
  }
  // Server streaming and bidi: blocks until the call ended; OK or its failure.
  Status finish_status() const { return to_status(stream_.finish()); }
  template <class Token>
  auto async_finish_status(Token&& token) const {
    return async_op<void(Status)>(
        stream_.session()->io().get_executor(), std::forward<Token>(token),
        [s = stream_.session(), c = stream_.state()](UniqueFunction<void(Status)> done) mutable {
          s->await_response(c, [done = std::move(done)](Result<Buffer> r) mutable { done(to_status(std::move(r))); });
        });
  }

 private:
  ClientStream stream_;
};

// The handler's side of a typed stream.
template <class Req, class Res>
class TypedServerStream {
 public:
  explicit TypedServerStream(ServerCall call) noexcept : call_(std::move(call)) {}

  // cancelled(), on_cancel(), deadline(), metadata(), add_trailing_metadata().
  CallContext& context() const noexcept { return call_.context(); }
  // A builder for the next message, in the connection's memory.
  MessageBuilder builder(std::size_t initial_size = 1024) const { return call_.builder(initial_size); }
  // The untyped call underneath.
  const ServerCall& call() const noexcept { return call_; }

 protected:
  ReadOutcome<Req> read() const { return server_read<Req>(*call_.session_handle(), call_.state(), call_.read()); }
  template <class Token = const asio::use_awaitable_t<>&>
  auto async_read(Token&& token = asio::use_awaitable) const {
    return async_op<void(ReadOutcome<Req>)>(
        call_.session().io().get_executor(), std::forward<Token>(token),
        [s = call_.session_handle(), c = call_.state()](UniqueFunction<void(ReadOutcome<Req>)> done) mutable {
          Session& session = *s;
          session.read(c, [s = std::move(s), c, done = std::move(done)](ReadResult r) mutable {
            done(server_read<Req>(*s, c, std::move(r)));
          });
        });
  }
  Status write(Payload<Res> message) const { return call_.write(std::move(message).take()); }
  template <class Token = const asio::use_awaitable_t<>&>
  auto async_write(Payload<Res> message, Token&& token = asio::use_awaitable) const {
    return call_.async_write(std::move(message).take(), std::forward<Token>(token));
  }

 private:
  ServerCall call_;
};

}  // namespace detail

// ---- the caller's side ----

// Server streaming: the responses, then the call's status.
template <class Res>
class ClientReader : public detail::TypedClientStream<detail::NoMessage, Res> {
  using Base = detail::TypedClientStream<detail::NoMessage, Res>;

 public:
  using Base::Base;
  using Base::async_read;
  using Base::read;
  // Blocks until the call ended: OK after the last message, or the failure.
  Status finish() const { return Base::finish_status(); }
  // Completion void(Status).
  template <class Token = const asio::use_awaitable_t<>&>
  auto async_finish(Token&& token = asio::use_awaitable) const {
    return Base::async_finish_status(std::forward<Token>(token));
  }
};

// Client streaming: write requests, write_done(), then finish() for the response.
template <class Req, class Res>
class ClientWriter : public detail::TypedClientStream<Req, Res> {
  using Base = detail::TypedClientStream<Req, Res>;

 public:
  using Base::Base;
  using Base::async_write;
  using Base::write;
  using Base::write_done;
  // Blocks until the response or the failure (call write_done() first, or the peer may wait).
  Result<Message<Res>> finish() const { return Base::finish_response(); }
  // Completion void(Result<Message<Res>>).
  template <class Token = const asio::use_awaitable_t<>&>
  auto async_finish(Token&& token = asio::use_awaitable) const {
    return Base::async_finish_response(std::forward<Token>(token));
  }
};

// Bidirectional: read and write independently; write_done() ends this side; finish() the status.
template <class Req, class Res>
class ClientReaderWriter : public detail::TypedClientStream<Req, Res> {
  using Base = detail::TypedClientStream<Req, Res>;

 public:
  using Base::Base;
  using Base::async_read;
  using Base::async_write;
  using Base::read;
  using Base::write;
  using Base::write_done;
  Status finish() const { return Base::finish_status(); }
  template <class Token = const asio::use_awaitable_t<>&>
  auto async_finish(Token&& token = asio::use_awaitable) const {
    return Base::async_finish_status(std::forward<Token>(token));
  }
};

// ---- the handler's side (the call ends with the handler's co_return value) ----

template <class Res>
class ServerWriter : public detail::TypedServerStream<detail::NoMessage, Res> {
  using Base = detail::TypedServerStream<detail::NoMessage, Res>;

 public:
  using Base::Base;
  using Base::async_write;
  using Base::write;
};

template <class Req>
class ServerReader : public detail::TypedServerStream<Req, detail::NoMessage> {
  using Base = detail::TypedServerStream<Req, detail::NoMessage>;

 public:
  using Base::Base;
  using Base::async_read;
  using Base::read;
};

template <class Req, class Res>
class ServerReaderWriter : public detail::TypedServerStream<Req, Res> {
  using Base = detail::TypedServerStream<Req, Res>;

 public:
  using Base::Base;
  using Base::async_read;
  using Base::async_write;
  using Base::read;
  using Base::write;
};

// ---- what generated stubs and skeletons call ----

namespace detail {

template <class Res>
Result<Message<Res>> call_unary(const Client& client, std::uint32_t method, Buffer request,
                                const CallOptions& options) {
  return received<Res>(client.call(method, std::move(request), options));
}

template <class Res, class Token>
auto async_call_unary(const Client& client, std::uint32_t method, Buffer request, const CallOptions& options,
                      Token&& token) {
  return async_op<void(Result<Message<Res>>)>(
      client.session()->io().get_executor(), std::forward<Token>(token),
      [s = client.session(), method, r = std::move(request), o = options](
          UniqueFunction<void(Result<Message<Res>>)> done) mutable {
        s->start_unary(method, std::move(r), o,
                       [done = std::move(done)](Result<Buffer> b) mutable { done(received<Res>(std::move(b))); });
      });
}

template <class Stream>
Result<Stream> open_typed(const Client& client, std::uint32_t method, CallKind kind, Buffer request,
                          const CallOptions& options) {
  auto stream = client.open(method, kind, std::move(request), options);
  if (!stream) return stream.status();
  return Stream(std::move(*stream));
}

inline Status unimplemented(const char* method) {
  return Status(StatusCode::unimplemented, std::string("method ") + method + " is not implemented by this server");
}

inline void finish_after_exception(const ServerCall& call, const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const std::exception& e) {
    call.finish(Status(StatusCode::internal, std::string("handler threw: ") + e.what()));
  } catch (...) {
    call.finish(Status(StatusCode::internal, "handler threw an exception"));
  }
}

// A request that fails verification ends the call with INVALID_ARGUMENT; the handler never runs.
inline Status bad_request(const Status& why) {
  return Status(StatusCode::invalid_argument, "bad request: " + why.message());
}

template <class Req, class Res, class Impl>
asio::awaitable<void> run_unary_coroutine(std::shared_ptr<Impl> impl,
                                          asio::awaitable<Reply<Res>> (Impl::*coroutine)(ServerCall, Message<Req>),
                                          ServerCall call, Message<Req> request) {
  Reply<Res> reply = co_await ((*impl).*coroutine)(call, std::move(request));
  if (reply.deferred()) reply = Status(StatusCode::internal, "the coroutine handler deferred its reply");
  call.finish(std::move(reply).take());
}

// Unary: the plain handler first; when the skeleton's default answered "defer", the coroutine
// handler on the connection's I/O executor.
template <class Req, class Res, class Impl>
void serve_unary(const std::shared_ptr<Impl>& impl, Reply<Res> (Impl::*plain)(const ServerCall&, Message<Req>),
                 asio::awaitable<Reply<Res>> (Impl::*coroutine)(ServerCall, Message<Req>), ServerCall call) {
  auto request = Message<Req>::verify(call.request());
  if (!request) {
    call.finish(bad_request(request.status()));
    return;
  }
  try {
    Reply<Res> reply = ((*impl).*plain)(call, *request);
    if (!reply.deferred()) {
      call.finish(std::move(reply).take());
      return;
    }
  } catch (...) {
    finish_after_exception(call, std::current_exception());
    return;
  }
  auto executor = call.session().io().get_executor();
  asio::co_spawn(executor, run_unary_coroutine<Req, Res, Impl>(impl, coroutine, call, std::move(*request)),
                 [call](std::exception_ptr error) {
                   if (error) finish_after_exception(call, error);
                 });
}

template <class Req, class Res, class Impl>
asio::awaitable<void> serve_server_stream(std::shared_ptr<Impl> impl,
                                          asio::awaitable<Status> (Impl::*handler)(ServerWriter<Res>, Message<Req>),
                                          ServerCall call) {
  auto request = Message<Req>::verify(call.request());
  if (!request) {
    call.finish(bad_request(request.status()));
    co_return;
  }
  Status end = co_await ((*impl).*handler)(ServerWriter<Res>(call), std::move(*request));
  call.finish(std::move(end));
}

template <class Req, class Res, class Impl>
asio::awaitable<void> serve_client_stream(std::shared_ptr<Impl> impl,
                                          asio::awaitable<Reply<Res>> (Impl::*handler)(ServerReader<Req>),
                                          ServerCall call) {
  Reply<Res> reply = co_await ((*impl).*handler)(ServerReader<Req>(call));
  if (reply.deferred()) reply = Status(StatusCode::internal, "the handler deferred its reply");
  call.finish(std::move(reply).take());
}

template <class Req, class Res, class Impl>
asio::awaitable<void> serve_bidi(std::shared_ptr<Impl> impl,
                                 asio::awaitable<Status> (Impl::*handler)(ServerReaderWriter<Req, Res>),
                                 ServerCall call) {
  Status end = co_await ((*impl).*handler)(ServerReaderWriter<Req, Res>(call));
  call.finish(std::move(end));
}

}  // namespace detail
}  // namespace flatpipe
