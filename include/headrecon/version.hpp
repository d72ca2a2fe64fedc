#pragma once
/// @file version.hpp
/// The library version; CMake parses it from here (the only place it lives).

#define HEADRECON_VERSION_MAJOR 0
#define HEADRECON_VERSION_MINOR 1
#define HEADRECON_VERSION_PATCH 0

namespace headrecon {
/// Version as "MAJOR.MINOR.PATCH".
inline constexpr const char* version_string = "0.1.0";
}  // namespace headrecon
