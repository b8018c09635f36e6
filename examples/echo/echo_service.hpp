// The echo service's contract, shared by echo_server and echo_client: the flatpipe twin of
// netpipe's echo example, on the raw API (method ids and payload bytes, no schema).
#pragma once

#include <cstdint>

#include "flatpipe/rpc/call.hpp"

namespace echo {

inline constexpr std::uint32_t kEcho = 1;          // unary: replies with the payload
inline constexpr std::uint32_t kReverse = 2;       // unary: replies with the payload reversed
inline constexpr std::uint32_t kFail = 3;          // unary: fails with "boom"
inline constexpr std::uint32_t kSplit = 4;         // server streaming: each payload byte as a message
inline constexpr std::uint32_t kConcat = 5;        // client streaming: replies with the concatenation
inline constexpr std::uint32_t kEchoStream = 6;    // bidi: echoes each message back

inline flatpipe::CallKind kind_of(std::uint32_t method) {
  switch (method) {
    case kSplit: return flatpipe::CallKind::server_stream;
    case kConcat: return flatpipe::CallKind::client_stream;
    case kEchoStream: return flatpipe::CallKind::bidi;
    default: return flatpipe::CallKind::unary;
  }
}

}  // namespace echo
