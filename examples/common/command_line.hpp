#pragma once
// The command line both tools share (headrecon and headrecon-engine): CLI11
// subcommands, each registered by its command header, and one exit policy:
// --help (on the tool or any command) prints the options and exits 0; an
// unknown command or option, a bad value or a failed run prints
// "TOOL COMMAND: error: ..." naming the option and value, and exits 1.

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <exception>
#include <functional>
#include <iostream>
#include <string>
#include <utility>
#include <vector>

namespace headrecon::cli {

/// The exit status of every failure, usage errors included.
constexpr int exit_failure = 1;

/// Accepts a finite number only (CLI11 itself converts "nan" and "inf").
inline CLI::Validator finite() {
  return CLI::Validator(
      [](std::string& s) -> std::string {
        char* end = nullptr;
        errno = 0;
        const double v = std::strtod(s.c_str(), &end);
        if (s.empty() || *end != '\0') return "'" + s + "' is not a number";
        if (!std::isfinite(v) || errno == ERANGE) return "'" + s + "' is not a finite number";
        return {};
      },
      "", "finite");
}

/// Accepts a decimal integer in [lo, hi] (the message names the value as given).
inline CLI::Validator integer_in(long long lo, long long hi) {
  return CLI::Validator(
      [lo, hi](std::string& s) -> std::string {
        char* end = nullptr;
        errno = 0;
        const long long v = std::strtoll(s.c_str(), &end, 10);
        if (s.empty() || *end != '\0') return "'" + s + "' is not an integer";
        if (errno == ERANGE || v < lo || v > hi)
          return s + " is outside [" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
        return {};
      },
      "in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]", "integer_in");
}

/// A command-line tool: commands added by their headers, then main() parses,
/// dispatches and turns every failure into a message and exit_failure.
class Tool {
 public:
  Tool(const std::string& name, const std::string& description) : name_(name), app_(description, name) {
    app_.option_defaults()->always_capture_default();
    app_.require_subcommand(1);
  }

  /// Adds command `name`; `run` is called when it is chosen, after its options are parsed and checked.
  CLI::App* add(const std::string& name, const std::string& description, std::function<int()> run) {
    CLI::App* c = app_.add_subcommand(name, description);
    commands_.push_back({c, std::move(run)});
    return c;
  }
  CLI::App& app() { return app_; }

  int main(int argc, char** argv) {
    if (argc < 2) {
      std::cerr << app_.help();
      return exit_failure;
    }
    const std::string first = argv[1];
    if (first == "help") {
      std::cout << app_.help();
      return 0;
    }
    if (first.rfind("-", 0) != 0 && !find(first)) {
      std::cerr << name_ << ": unknown command '" << first << "' (" << name_ << " --help lists them)\n";
      return exit_failure;
    }
    try {
      app_.parse(argc, argv);
    } catch (const CLI::Success& e) {  // --help
      return app_.exit(e);
    } catch (const CLI::ParseError& e) {
      std::cerr << name_ << (first.rfind("-", 0) != 0 ? " " + first : std::string()) << ": error: " << e.what()
                << " (" << name_ << (first.rfind("-", 0) != 0 ? " " + first : std::string())
                << " --help lists the options)\n";
      return exit_failure;
    }
    for (const auto& [c, run] : commands_) {
      if (!c->parsed()) continue;
      try {
        return run();
      } catch (const std::exception& e) {
        std::cerr << name_ << " " << c->get_name() << ": error: " << e.what() << "\n";
        return exit_failure;
      }
    }
    std::cerr << app_.help();
    return exit_failure;
  }

 private:
  CLI::App* find(const std::string& name) const {
    for (const auto& c : commands_)
      if (c.first->get_name() == name) return c.first;
    return nullptr;
  }

  std::string name_;
  CLI::App app_;
  std::vector<std::pair<CLI::App*, std::function<int()>>> commands_;
};

}  // namespace headrecon::cli
