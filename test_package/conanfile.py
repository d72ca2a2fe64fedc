import os

from conan import ConanFile
from conan.tools.build import can_run
from conan.tools.cmake import CMake, cmake_layout


class HeadreconTestConan(ConanFile):
    settings = "os", "arch", "compiler", "build_type"
    # CMakeToolchain puts headrecon's own config (its builddirs) on
    # CMAKE_PREFIX_PATH; CMakeDeps generates nothing for it (find mode "none")
    # nor for the [platform_requires] system packages.
    generators = "CMakeToolchain", "CMakeDeps"
    test_type = "explicit"

    def requirements(self):
        self.requires(self.tested_reference_str)

    def layout(self):
        cmake_layout(self)

    def build(self):
        cmake = CMake(self)
        cmake.configure()
        cmake.build()

    def test(self):
        if can_run(self):
            self.run(os.path.join(self.cpp.build.bindir, "test_package"), env="conanrun")
