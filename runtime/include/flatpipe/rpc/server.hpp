// Server: serves a MethodTable on one or more endpoints.
//
// Register methods, then listen() on as many endpoints as wanted (any transport of the Runtime),
// and the Runtime's threads serve them; there is no run() loop to call. Every member is
// thread-safe. Methods must be added before the first listen().
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "flatpipe/rpc/client.hpp"
#include "flatpipe/rpc/server_call.hpp"
#include "flatpipe/rpc/session.hpp"
#include "flatpipe/runtime.hpp"

namespace flatpipe {

struct ServerOptions {
  SessionOptions session;
};

class Server {
 public:
  explicit Server(Runtime& runtime, ServerOptions options = {});
  // Closes every listener and connection at once (shutdown(0)).
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Registration (before listen). Errors as MethodTable::add, or FAILED_PRECONDITION once
  // listening.
  Status add(MethodInfo method);
  Status add_unary(std::uint32_t id, std::string name, std::function<Result<Buffer>(CallContext&, const Buffer&)> fn);
  Status add_coroutine(std::uint32_t id, std::string name, CallKind kind, CoroutineHandler handler,
                       StreamQos qos = StreamQos::reliable);

  // Binds and starts serving `uri`; returns the endpoint actually bound (port 0 filled in).
  // Errors: INVALID_ARGUMENT (bad URI, unknown scheme), ALREADY_EXISTS (in use), UNAVAILABLE.
  Result<std::string> listen(std::string_view uri);

  // Called on the I/O thread for each new connection, with a handle that can call the peer
  // (both ends of a connection may open calls). Set before listen().
  void on_connection(std::function<void(Client)> fn);

  // Graceful shutdown: stops listening, refuses new calls (GOAWAY to full-mode peers), lets
  // open calls finish for up to `grace`, then closes every connection. Blocks until done, except
  // on the I/O thread, where it starts the same sequence and returns.
  void shutdown(std::chrono::milliseconds grace = std::chrono::seconds(5));

  std::size_t connection_count() const;
  std::vector<std::string> endpoints() const;
  // Counters summed over the open connections.
  SessionStats stats() const;

 private:
  // What connection callbacks share with the Server; they hold it weakly, so a callback that
  // runs while or after the Server is destroyed finds it gone instead of touching freed memory.
  struct State {
    Runtime* runtime;
    ServerOptions options;
    std::shared_ptr<MethodTable> methods = std::make_shared<MethodTable>();
    std::mutex mu;
    bool listening = false;
    bool stopping = false;
    std::vector<std::shared_ptr<Listener>> listeners;
    std::set<std::shared_ptr<Session>> sessions;
    std::function<void(Client)> on_connection;
  };
  static void accept(const std::shared_ptr<State>& state, std::shared_ptr<FrameConnection> conn);

  std::shared_ptr<State> state_;
};

}  // namespace flatpipe
