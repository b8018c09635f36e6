// echo_client --connect URI [--netpipe] [--timeout MS] METHOD HEXPAYLOAD
//
// Calls the echo service once and prints what happened:
//   unary (1, 2, 3):        "ok <hex>" or "err <text>"
//   server streaming (4):   one hex line per message, then "end" (or "err <text>")
//   client streaming (5):   HEXPAYLOAD is comma-separated messages; "ok <hex>" or "err <text>"
//   bidi (6):               HEXPAYLOAD is comma-separated messages; one hex line per echo, "end"
// With --netpipe the client speaks only what a netpipe server understands (no handshake).
// Exit status: 0 success, 1 the call failed, 2 usage or connection error.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "echo_service.hpp"
#include "flatpipe/flatpipe.hpp"

namespace {

void usage() {
  std::fprintf(stderr,
               "usage: echo_client --connect URI [--netpipe] [--timeout MS] METHOD HEXPAYLOAD\n"
               "  METHOD 1 echo, 2 reverse, 3 fail, 4 split (server stream),\n"
               "         5 concat (client stream, HEXPAYLOAD like 01,0203), 6 echo stream (bidi)\n");
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool parse_hex(const std::string& hex, std::string& out) {
  if (hex.size() % 2 != 0) return false;
  out.clear();
  for (std::size_t i = 0; i < hex.size(); i += 2) {
    const int hi = hex_value(hex[i]);
    const int lo = hex_value(hex[i + 1]);
    if (hi < 0 || lo < 0) return false;
    out.push_back(static_cast<char>(hi * 16 + lo));
  }
  return true;
}

std::string to_hex(const flatpipe::Buffer& b) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (std::uint8_t c : b.span()) {
    out.push_back(digits[c >> 4]);
    out.push_back(digits[c & 15]);
  }
  return out;
}

int fail(const flatpipe::Status& st) {
  std::printf("err %s\n", st.to_string().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::string uri;
  bool netpipe = false;
  long timeout_ms = 5000;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--connect" && i + 1 < argc) {
      uri = argv[++i];
    } else if (arg == "--netpipe") {
      netpipe = true;
    } else if (arg == "--timeout" && i + 1 < argc) {
      timeout_ms = std::strtol(argv[++i], nullptr, 10);
    } else if (arg == "-h" || arg == "--help") {
      usage();
      return 0;
    } else {
      positional.push_back(arg);
    }
  }
  if (uri.empty() || positional.size() != 2) {
    usage();
    return 2;
  }
  const auto method = static_cast<std::uint32_t>(std::strtoul(positional[0].c_str(), nullptr, 10));
  std::vector<flatpipe::Buffer> messages;
  {
    std::string text = positional[1];
    std::size_t start = 0;
    for (;;) {
      const std::size_t comma = text.find(',', start);
      std::string bytes;
      if (!parse_hex(text.substr(start, comma - start), bytes)) {
        std::fprintf(stderr, "echo_client: '%s' is not hex bytes\n", text.c_str());
        return 2;
      }
      messages.push_back(flatpipe::Buffer::adopt(std::move(bytes)));
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
  }

  flatpipe::Runtime runtime;
  flatpipe::ClientOptions options;
  options.session.netpipe_compat = netpipe;
  auto client = flatpipe::Client::connect(runtime, uri, options);
  if (!client) {
    std::fprintf(stderr, "echo_client: %s\n", client.status().to_string().c_str());
    return 2;
  }
  const auto call_options = flatpipe::CallOptions::with_timeout(std::chrono::milliseconds(timeout_ms));
  const flatpipe::CallKind kind = echo::kind_of(method);

  if (kind == flatpipe::CallKind::unary) {
    flatpipe::Buffer request;
    for (const auto& m : messages) request = flatpipe::Buffer::copy(std::string(request.view()) + m.to_string());
    auto reply = client->call(method, request, call_options);
    if (!reply) return fail(reply.status());
    std::printf("ok %s\n", to_hex(*reply).c_str());
    return 0;
  }

  flatpipe::Buffer request = kind == flatpipe::CallKind::server_stream ? messages.front() : flatpipe::Buffer{};
  auto stream = client->open(method, kind, request, call_options);
  if (!stream) return fail(stream.status());

  if (kind == flatpipe::CallKind::client_stream || kind == flatpipe::CallKind::bidi) {
    for (auto& m : messages) {
      if (auto st = stream->write(m); !st.ok()) return fail(st);
      if (kind == flatpipe::CallKind::bidi) {
        auto echoed = stream->read();
        if (!echoed) return fail(echoed.status());
        if (!*echoed) break;
        std::printf("%s\n", to_hex(**echoed).c_str());
      }
    }
    stream->write_done();
  }
  if (kind == flatpipe::CallKind::server_stream) {
    for (;;) {
      auto msg = stream->read();
      if (!msg) return fail(msg.status());
      if (!*msg) break;
      std::printf("%s\n", to_hex(**msg).c_str());
    }
  }
  auto done = stream->finish();
  if (!done) return fail(done.status());
  if (kind == flatpipe::CallKind::client_stream) {
    std::printf("ok %s\n", to_hex(*done).c_str());
  } else {
    std::printf("end\n");
  }
  return 0;
}
