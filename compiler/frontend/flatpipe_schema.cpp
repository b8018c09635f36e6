// flatpipe_schema: the compiler's front end. Parses a .fbs schema with libflatbuffers' own parser
// (flatbuffers::Parser, the parser flatc uses) and prints a JSON model of its rpc_services for the
// Python generator (compiler/flatpipe_compiler). It holds no grammar of its own.
//
//   flatpipe_schema [-I DIR]... SCHEMA.fbs       the model as JSON on stdout
//   flatpipe_schema [-I DIR]... --deps SCHEMA.fbs every schema file read, one per line
//
// Exit status 0 on success. On a schema error: one line "file:line: error: message" on stderr
// (flatc's own message when the parser refused the schema) and exit status 1; 2 for bad usage.
//
// The model (version 1):
//   { "version": 1, "schema": path, "files": [every schema file read],
//     "services": [ { "name", "full_name", "namespace": [..], "file", "line", "main",
//                     "doc": [lines], "attributes": {name: {"value", "string"}},
//                     "methods": [ { "name", "line", "doc", "attributes",
//                                    "request": TYPE, "response": TYPE } ] } ] }
//   TYPE = { "name", "full_name", "namespace": [..], "file", "is_struct" }
// "main" is true for services declared in SCHEMA itself (not in a file it includes); "line" is
// the 1-based line of the declaration in its file, 0 when it cannot be found.
#include <flatbuffers/idl.h>
#include <flatbuffers/util.h>

#include <cstdio>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace {

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          char esc[8];
          std::snprintf(esc, sizeof esc, "\\u%04x", c);
          out += esc;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

std::string json_strings(const std::vector<std::string>& v) {
  std::string out = "[";
  for (std::size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + json_string(v[i]);
  return out + "]";
}

std::vector<std::string> namespace_of(const flatbuffers::Definition& def) {
  return def.defined_namespace ? def.defined_namespace->components : std::vector<std::string>{};
}

std::string qualified(const std::vector<std::string>& ns, const std::string& name) {
  std::string out;
  for (const auto& c : ns) out += c + ".";
  return out + name;
}

std::string attributes_json(const flatbuffers::Definition& def) {
  std::string out = "{";
  bool first = true;
  for (const auto& [name, value] : def.attributes.dict) {
    out += std::string(first ? "" : ", ") + json_string(name) + ": {\"value\": " + json_string(value->constant) +
           ", \"string\": " + (value->type.base_type == flatbuffers::BASE_TYPE_STRING ? "true" : "false") + "}";
    first = false;
  }
  return out + "}";
}

std::string type_json(const flatbuffers::StructDef* type) {
  if (!type) return "null";
  const auto ns = namespace_of(*type);
  return "{\"name\": " + json_string(type->name) + ", \"full_name\": " + json_string(qualified(ns, type->name)) +
         ", \"namespace\": " + json_strings(ns) + ", \"file\": " + json_string(type->file) +
         ", \"is_struct\": " + (type->fixed ? "true" : "false") + "}";
}

bool read_file(const std::string& path, std::string& out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::ostringstream ss;
  ss << in.rdbuf();
  out = ss.str();
  return true;
}

// Where declarations are: the parser does not keep line numbers, so the declaring file's lines
// are searched for the service's and then the method's name (comments skipped). Only used to
// point error messages at a line; 0 when not found.
class LineFinder {
 public:
  int service_line(const std::string& file, const std::string& service) {
    const auto& lines = lines_of(file);
    const std::regex re("(^|[^A-Za-z0-9_])rpc_service\\s+" + service + "([^A-Za-z0-9_]|$)");
    for (std::size_t i = 0; i < lines.size(); ++i) {
      if (std::regex_search(code_part(lines[i]), re)) return static_cast<int>(i + 1);
    }
    return 0;
  }
  int method_line(const std::string& file, int service_line, const std::string& method) {
    const auto& lines = lines_of(file);
    const std::regex re("(^|[^A-Za-z0-9_])" + method + "\\s*\\(");
    for (std::size_t i = service_line > 0 ? static_cast<std::size_t>(service_line - 1) : 0; i < lines.size(); ++i) {
      if (std::regex_search(code_part(lines[i]), re)) return static_cast<int>(i + 1);
    }
    return 0;
  }

 private:
  static std::string code_part(const std::string& line) {
    const auto at = line.find("//");
    return at == std::string::npos ? line : line.substr(0, at);
  }
  const std::vector<std::string>& lines_of(const std::string& file) {
    for (const auto& [name, lines] : cache_) {
      if (name == file) return lines;
    }
    std::vector<std::string> lines;
    std::string text;
    if (read_file(file, text)) {
      std::istringstream in(text);
      for (std::string line; std::getline(in, line);) lines.push_back(line);
    }
    cache_.emplace_back(file, std::move(lines));
    return cache_.back().second;
  }
  std::vector<std::pair<std::string, std::vector<std::string>>> cache_;
};

// flatc refuses an attribute that was not declared; say which line fixes it.
std::string explain(std::string error) {
  const std::string marker = "user define attributes must be declared before use: ";
  const auto at = error.find(marker);
  if (at == std::string::npos) return error;
  const std::string name = error.substr(at + marker.size());
  return error.substr(0, at) + "attribute \"" + name + "\" is not declared; add the line `attribute \"" + name +
         "\";` to the schema before its first use";
}

// flatc reports "file:line: col: error: msg" (or "file(line, col): error: msg" on Windows);
// print "file:line: error: msg" like the rest of the toolchain. A type that is not defined is
// reported at the end of the file with where it was used: point at that use instead.
std::string normalize_location(const std::string& error) {
  static const std::regex located("^(.*?)(?::([0-9]+): ([0-9]+)|\\(([0-9]+), ([0-9]+)\\)): (error|warning): ");
  std::smatch m;
  if (!std::regex_search(error, m, located)) return error;
  std::string file = m[1].str();
  std::string line = m[2].matched ? m[2].str() : m[4].str();
  std::string message = m.suffix().str();
  static const std::regex undefined("^type referenced but not defined \\(check namespace\\): (\\S+), originally at: (.*):([0-9]+)$");
  std::smatch u;
  if (std::regex_search(message, u, undefined)) {
    line = u[3].str();
    message = "type '" + u[1].str() + "' is referenced but not defined (check its spelling, its namespace and the includes)";
  }
  return file + ":" + line + ": " + m[6].str() + ": " + message;
}

int usage() {
  std::fprintf(stderr, "usage: flatpipe_schema [-I DIR]... [--deps] SCHEMA.fbs\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> include_dirs;
  std::string schema;
  bool deps = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "-I" && i + 1 < argc) {
      include_dirs.push_back(argv[++i]);
    } else if (arg.size() > 2 && arg.rfind("-I", 0) == 0) {
      include_dirs.push_back(arg.substr(2));
    } else if (arg == "--deps") {
      deps = true;
    } else if (arg == "-h" || arg == "--help") {
      usage();
      return 0;
    } else if (!arg.empty() && arg[0] == '-') {
      std::fprintf(stderr, "flatpipe_schema: error: unknown option '%s'\n", arg.c_str());
      return usage();
    } else if (schema.empty()) {
      schema = arg;
    } else {
      std::fprintf(stderr, "flatpipe_schema: error: one schema at a time ('%s' and '%s')\n", schema.c_str(),
                   arg.c_str());
      return 2;
    }
  }
  if (schema.empty()) return usage();

  std::string source;
  if (!read_file(schema, source)) {
    std::fprintf(stderr, "%s:0: error: cannot read the schema file\n", schema.c_str());
    return 1;
  }
  // As flatc does: the schema's own directory is searched last for includes.
  std::vector<std::string> dirs;
  for (const auto& d : include_dirs) dirs.push_back(flatbuffers::PosixPath(d.c_str()));
  dirs.push_back(flatbuffers::StripFileName(schema));
  std::vector<const char*> dir_ptrs;
  for (const auto& d : dirs) dir_ptrs.push_back(d.c_str());
  dir_ptrs.push_back(nullptr);

  flatbuffers::Parser parser;
  const std::string schema_path = flatbuffers::PosixPath(schema.c_str());
  if (!parser.Parse(source.c_str(), dir_ptrs.data(), schema_path.c_str())) {
    std::string error = normalize_location(explain(parser.error_));
    while (!error.empty() && (error.back() == '\n' || error.back() == ' ')) error.pop_back();
    std::fprintf(stderr, "%s\n", error.c_str());
    return 1;
  }

  std::set<std::string> files{schema_path};
  for (const auto& [including, included] : parser.files_included_per_file_) {
    for (const auto& inc : included) files.insert(inc.filename);
  }
  if (deps) {
    for (const auto& f : files) std::printf("%s\n", f.c_str());
    return 0;
  }

  LineFinder lines;
  std::string out = "{\n  \"version\": 1,\n  \"schema\": " + json_string(schema_path) + ",\n  \"files\": " +
                    json_strings({files.begin(), files.end()}) + ",\n  \"services\": [";
  bool first_service = true;
  for (const flatbuffers::ServiceDef* svc : parser.services_.vec) {
    const auto ns = namespace_of(*svc);
    const int svc_line = lines.service_line(svc->file, svc->name);
    out += std::string(first_service ? "\n" : ",\n") + "    {\"name\": " + json_string(svc->name) +
           ", \"full_name\": " + json_string(qualified(ns, svc->name)) + ", \"namespace\": " + json_strings(ns) +
           ", \"file\": " + json_string(svc->file) + ", \"line\": " + std::to_string(svc_line) +
           ", \"main\": " + (svc->file == schema_path ? "true" : "false") +
           ",\n     \"doc\": " + json_strings(svc->doc_comment) + ", \"attributes\": " + attributes_json(*svc) +
           ",\n     \"methods\": [";
    first_service = false;
    bool first_method = true;
    for (const flatbuffers::RPCCall* call : svc->calls.vec) {
      out += std::string(first_method ? "\n" : ",\n") + "       {\"name\": " + json_string(call->name) +
             ", \"line\": " + std::to_string(lines.method_line(svc->file, svc_line, call->name)) +
             ", \"doc\": " + json_strings(call->doc_comment) + ", \"attributes\": " + attributes_json(*call) +
             ",\n        \"request\": " + type_json(call->request) + ",\n        \"response\": " +
             type_json(call->response) + "}";
      first_method = false;
    }
    out += "]}";
  }
  out += "]\n}\n";
  std::fputs(out.c_str(), stdout);
  return 0;
}
