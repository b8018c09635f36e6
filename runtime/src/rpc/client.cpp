#include "flatpipe/rpc/client.hpp"

namespace flatpipe {

namespace {

Status io_thread_error(const char* what) {
  return Status(StatusCode::failed_precondition,
                std::string("blocking ") + what +
                    " called on the I/O thread would deadlock; use the async_ form (callback or co_await)");
}

}  // namespace

// ---- ClientStream ----

ClientStream& ClientStream::operator=(ClientStream&& other) noexcept {
  if (this != &other) {
    if (call_ && owner_) owner_->session->cancel(call_, Status(StatusCode::cancelled, "stream abandoned"));
    owner_ = std::move(other.owner_);
    call_ = std::move(other.call_);
  }
  return *this;
}

ClientStream::~ClientStream() {
  if (call_ && owner_) owner_->session->cancel(call_, Status(StatusCode::cancelled, "stream abandoned"));
}

Status ClientStream::write(Buffer message) const {
  if (owner_->session->on_io_thread()) return io_thread_error("write");
  detail::SyncSlot<Status> slot;
  owner_->session->write(call_, std::move(message), [&slot](Status st) { slot.set(std::move(st)); });
  return slot.wait(owner_->session->blocking_spin());
}

void ClientStream::write_done() const { owner_->session->write_done(call_); }

ReadResult ClientStream::read() const {
  if (owner_->session->on_io_thread()) return io_thread_error("read");
  detail::SyncSlot<ReadResult> slot;
  owner_->session->read(call_, [&slot](ReadResult r) { slot.set(std::move(r)); });
  return slot.wait(owner_->session->blocking_spin());
}

Result<Buffer> ClientStream::finish() const {
  if (owner_->session->on_io_thread()) return io_thread_error("finish");
  detail::SyncSlot<Result<Buffer>> slot;
  owner_->session->await_response(call_, [&slot](Result<Buffer> r) { slot.set(std::move(r)); });
  return slot.wait(owner_->session->blocking_spin());
}

void ClientStream::cancel() const {
  owner_->session->cancel(call_, Status(StatusCode::cancelled, "cancelled by the caller"));
}

// ---- Client ----

Client Client::attach(std::shared_ptr<Session> session) {
  auto owner = std::make_shared<detail::SessionOwner>();
  owner->session = std::move(session);
  owner->owning = false;
  return Client(std::move(owner));
}

void Client::start_connect(Runtime& runtime, const std::string& uri, ClientOptions options,
                           UniqueFunction<void(Result<Client>)> done) {
  auto ep = Endpoint::parse(uri);
  if (!ep) {
    done(ep.status());
    return;
  }
  Transport* transport = runtime.transports().find(ep->scheme);
  if (!transport) {
    std::string known;
    for (const auto& s : runtime.transports().schemes()) known += (known.empty() ? "" : ", ") + s;
    done(Status(StatusCode::invalid_argument, "no transport for scheme '" + ep->scheme + "' (known: " + known + ")"));
    return;
  }
  const std::string mode = ep->param("mode");
  if (mode == "netpipe") {
    options.session.netpipe_compat = true;
  } else if (!mode.empty() && mode != "full") {
    done(Status(StatusCode::invalid_argument, "unknown mode '" + mode + "' in " + uri + " (netpipe or full)"));
    return;
  }
  TransportContext ctx{runtime.io(), {}};
  ctx.limits.max_frame = options.session.max_frame;
  auto handler_ex = runtime.handler_executor();
  asio::io_context& io = runtime.io();
  transport->async_connect(
      *ep, ctx,
      [&io, options = std::move(options), handler_ex, spin = runtime.idle_spin(),
       done = std::move(done)](Result<std::shared_ptr<FrameConnection>> conn) mutable {
        if (!conn) {
          done(conn.status());
          return;
        }
        auto session = std::make_shared<Session>(Session::Role::connector, std::move(*conn), io, options.session,
                                                 options.methods, handler_ex, spin);
        auto owner = std::make_shared<detail::SessionOwner>();
        owner->session = session;
        auto shared_done = std::make_shared<UniqueFunction<void(Result<Client>)>>(std::move(done));
        session->start([owner, shared_done](Status st) mutable {
          if (st.ok()) {
            (*shared_done)(Client(std::move(owner)));
          } else {
            owner->owning = false;  // already closed
            (*shared_done)(st);
          }
        });
      });
}

Result<Client> Client::connect(Runtime& runtime, std::string_view uri, ClientOptions options) {
  if (runtime.io().get_executor().running_in_this_thread()) return io_thread_error("connect");
  detail::SyncSlot<Result<Client>> slot;
  start_connect(runtime, std::string(uri), std::move(options), [&slot](Result<Client> r) { slot.set(std::move(r)); });
  return slot.wait();
}

bool Client::connected() const { return owner_ && owner_->session->is_open(); }

Result<Buffer> Client::call(std::uint32_t method, Buffer request, const CallOptions& options) const {
  if (!owner_) return Status(StatusCode::failed_precondition, "client is not connected");
  if (owner_->session->on_io_thread()) return io_thread_error("call");
  detail::SyncSlot<Result<Buffer>> slot;
  owner_->session->start_unary(method, std::move(request), options,
                               [&slot](Result<Buffer> r) { slot.set(std::move(r)); });
  return slot.wait(owner_->session->blocking_spin());
}

Result<ClientStream> Client::open(std::uint32_t method, CallKind kind, Buffer request,
                                  const CallOptions& options) const {
  if (!owner_) return Status(StatusCode::failed_precondition, "client is not connected");
  auto call = owner_->session->open_stream(method, kind, std::move(request), options);
  if (!call) return call.status();
  return ClientStream(owner_, std::move(*call));
}

Status Client::notify(std::uint32_t method, Buffer payload) const {
  if (!owner_) return Status(StatusCode::failed_precondition, "client is not connected");
  return owner_->session->notify(method, std::move(payload));
}

void Client::close() const {
  if (owner_) owner_->session->close(Status(StatusCode::cancelled, "client closed"));
}

}  // namespace flatpipe
