"""Conan 2 recipe for headrecon (header-only).

Dependencies are *declared* here with their ConanCenter names, but this
project resolves them from the system: the profile .ci/conan/profile lists
them under [platform_requires], so Conan never looks for them in a remote
(the Debian packages are used). Because Conan then knows nothing about their
CMake targets, consumers do not get a CMakeDeps-generated config for
headrecon: package_info() sets cmake_find_mode "none" and puts the package's
own installed headreconConfig.cmake on CMAKE_PREFIX_PATH (builddirs), and that
file calls find_dependency() for BLAS/LAPACK (OpenBLAS), hwy and
nlohmann_json with their real system target names. (With a
CMakeDeps-generated config instead, the platform packages contribute nothing
to headrecon::headrecon: tried, the test_package link fails on dgemm_,
dpotrf_, ... from OpenBLAS.) Works offline: `conan create . --profile:all
.ci/conan/profile` with the conancenter remote disabled.
"""
import os
import re

from conan import ConanFile
from conan.tools.cmake import CMake, CMakeToolchain, cmake_layout
from conan.tools.files import load


class HeadreconConan(ConanFile):
    name = "headrecon"
    description = "Attention-head reconstruction for LLM inference (header-only C++17)"
    topics = ("llm", "inference", "kv-cache", "header-only")
    package_type = "header-library"
    settings = "os", "arch", "compiler", "build_type"
    exports_sources = "include/*", "CMakeLists.txt", "cmake/*"
    no_copy_source = True

    def set_version(self):
        text = load(self, os.path.join(self.recipe_folder, "include", "headrecon", "version.hpp"))
        parts = [re.search(rf"#define HEADRECON_VERSION_{p} (\d+)", text).group(1)
                 for p in ("MAJOR", "MINOR", "PATCH")]
        self.version = ".".join(parts)

    def requirements(self):
        # What the installed headers include and link; in CI all three are
        # [platform_requires] of the profile (Debian 12 packages). xtensor is
        # not one: no installed header includes it (only the tests use it).
        self.requires("openblas/[>=0.3.21 <0.4]")
        self.requires("highway/[>=1.0.3 <2]")
        self.requires("nlohmann_json/[>=3.10 <4]")

    def layout(self):
        cmake_layout(self)

    def generate(self):
        tc = CMakeToolchain(self)
        tc.cache_variables["HEADRECON_BUILD_TESTS"] = False
        tc.cache_variables["HEADRECON_BUILD_BENCHMARKS"] = False
        tc.cache_variables["HEADRECON_BUILD_EXAMPLES"] = False
        tc.cache_variables["HEADRECON_BUILD_DOCS"] = False
        tc.cache_variables["HEADRECON_INSTALL"] = True
        tc.generate()

    def build(self):
        # Nothing to compile: configure only, so that package() can install.
        cmake = CMake(self)
        cmake.configure()

    def package(self):
        cmake = CMake(self)
        cmake.install()

    def package_id(self):
        # Header-only: one package for every os, compiler and build type.
        self.info.clear()

    def package_info(self):
        self.cpp_info.bindirs = []
        self.cpp_info.libdirs = []
        # Use the package's own CMake config (see the module docstring); the
        # names below are what CMakeDeps would use if a consumer overrode the
        # find mode (e.g. with real ConanCenter dependencies).
        self.cpp_info.set_property("cmake_find_mode", "none")
        self.cpp_info.set_property("cmake_file_name", "headrecon")
        self.cpp_info.set_property("cmake_target_name", "headrecon::headrecon")
        self.cpp_info.builddirs = [os.path.join("share", "cmake", "headrecon")]
        self.cpp_info.set_property("pkg_config_name", "headrecon")
