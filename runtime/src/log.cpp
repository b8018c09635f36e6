#include "flatpipe/log.hpp"

#include <atomic>
#include <cstdio>
#include <mutex>
#include <string>

namespace flatpipe {
namespace {

std::mutex g_mu;
LogSink g_sink;
std::atomic<int> g_min{static_cast<int>(LogLevel::warn)};

const char* level_name(LogLevel level) {
  switch (level) {
    case LogLevel::debug: return "debug";
    case LogLevel::info: return "info";
    case LogLevel::warn: return "warn";
    case LogLevel::error: return "error";
    case LogLevel::off: return "off";
  }
  return "?";
}

}  // namespace

void set_log_sink(LogSink sink, LogLevel min_level) {
  std::lock_guard lk(g_mu);
  g_sink = std::move(sink);
  g_min.store(static_cast<int>(min_level));
}

void log(LogLevel level, std::string_view message) {
  if (static_cast<int>(level) < g_min.load(std::memory_order_relaxed)) return;
  std::lock_guard lk(g_mu);
  if (g_sink) {
    g_sink(level, message);
    return;
  }
  std::fprintf(stderr, "flatpipe %s: %.*s\n", level_name(level), static_cast<int>(message.size()),
               message.data());
}

}  // namespace flatpipe
