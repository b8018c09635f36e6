// Logging: flatpipe reports what it cannot report through a Status (a connection closed for a
// protocol violation, a listener error) to one process-wide sink. Default: warnings and errors
// to stderr. Thread-safe.
#pragma once

#include <functional>
#include <string_view>

namespace flatpipe {

enum class LogLevel { debug = 0, info = 1, warn = 2, error = 3, off = 4 };

using LogSink = std::function<void(LogLevel level, std::string_view message)>;

// Replaces the sink (nullptr restores stderr). Messages below `min_level` are dropped.
void set_log_sink(LogSink sink, LogLevel min_level = LogLevel::warn);
void log(LogLevel level, std::string_view message);

}  // namespace flatpipe
