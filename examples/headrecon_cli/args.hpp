#pragma once
// Minimal command-line parsing for the headrecon tool: --flag VALUE options
// (some repeatable), --switches and positionals; every misuse is an Error.

#include <cerrno>
#include <cstdlib>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "headrecon/error.hpp"

namespace headrecon::cli {

class Args {
 public:
  /// `valued` flags take a value; `switches` do not. Unknown flags are errors.
  Args(int argc, char** argv, int first, const std::set<std::string>& valued, const std::set<std::string>& switches) {
    for (int i = first; i < argc; ++i) {
      const std::string a = argv[i];
      if (a.rfind("--", 0) == 0) {
        if (switches.count(a)) {
          switches_.insert(a);
        } else if (valued.count(a)) {
          if (i + 1 >= argc) detail::fail("option ", a, " needs a value");
          values_[a].push_back(argv[++i]);
        } else {
          detail::fail("unknown option ", a);
        }
      } else {
        positional_.push_back(a);
      }
    }
  }
  bool has(const std::string& f) const { return switches_.count(f) || values_.count(f); }
  const std::vector<std::string>& positional() const { return positional_; }
  std::vector<std::string> all(const std::string& f) const {
    auto it = values_.find(f);
    return it == values_.end() ? std::vector<std::string>{} : it->second;
  }
  std::string str(const std::string& f, const std::string& def) const {
    auto it = values_.find(f);
    if (it == values_.end()) return def;
    if (it->second.size() > 1) detail::fail("option ", f, " given ", it->second.size(), " times");
    return it->second[0];
  }
  std::string required(const std::string& f) const {
    if (!values_.count(f)) detail::fail("missing required option ", f);
    return str(f, "");
  }
  double num(const std::string& f, double def) const {
    if (!values_.count(f)) return def;
    return parse_double(f, str(f, ""));
  }
  long integer(const std::string& f, long def, long lo, long hi) const {
    if (!values_.count(f)) return def;
    const std::string s = str(f, "");
    char* end = nullptr;
    errno = 0;
    const long v = std::strtol(s.c_str(), &end, 10);
    if (s.empty() || *end != '\0') detail::fail("option ", f, ": '", s, "' is not an integer");
    // Out of range (strtol clamps to LONG_MIN/MAX on overflow): name the value as given.
    if (errno == ERANGE || v < lo || v > hi) detail::fail("option ", f, ": ", s, " is outside [", lo, ", ", hi, "]");
    return v;
  }
  static double parse_double(const std::string& f, const std::string& s) {
    char* end = nullptr;
    const double v = std::strtod(s.c_str(), &end);
    if (s.empty() || *end != '\0' || !(v == v)) detail::fail("option ", f, ": '", s, "' is not a number");
    return v;
  }

 private:
  std::map<std::string, std::vector<std::string>> values_;
  std::set<std::string> switches_;
  std::vector<std::string> positional_;
};

}  // namespace headrecon::cli
