#pragma once
/// @file error.hpp
/// The one exception type the library throws for bad input.

#include <sstream>
#include <stdexcept>
#include <string>

namespace headrecon {

/// Thrown for input the library cannot accept: the message names the file,
/// tensor, shape or value at fault. The library never reports bad input by
/// returning a NaN or a partial result.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {
/// Builds an Error message from streamable parts: fail("bad shape ", n).
template <class... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  throw Error(os.str());
}
}  // namespace detail
}  // namespace headrecon
