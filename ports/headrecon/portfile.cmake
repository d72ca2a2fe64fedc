# vcpkg port of headrecon (header-only). Use it as an overlay port:
#   vcpkg install headrecon --overlay-ports=<headrecon>/ports
# The sources: no public repository exists yet. Replace the placeholders below
# (REPO, REF, SHA512) once one does; until then set HEADRECON_SOURCE_DIR in the
# environment to a local checkout (vcpkg passes it through only when listed in
# VCPKG_KEEP_ENV_VARS).
if(DEFINED ENV{HEADRECON_SOURCE_DIR})
  set(SOURCE_PATH "$ENV{HEADRECON_SOURCE_DIR}")
else()
  vcpkg_from_github(
    OUT_SOURCE_PATH SOURCE_PATH
    REPO headrecon/headrecon            # placeholder
    REF "v${VERSION}"
    SHA512 0                            # placeholder: the archive's SHA512
    HEAD_REF main
  )
endif()

# Header-only: one (release) configuration is enough.
set(VCPKG_BUILD_TYPE release)

vcpkg_check_features(OUT_FEATURE_OPTIONS FEATURE_OPTIONS
  FEATURES
    cuda HEADRECON_ENABLE_CUDA
)

vcpkg_cmake_configure(
  SOURCE_PATH "${SOURCE_PATH}"
  OPTIONS
    ${FEATURE_OPTIONS}
    -DHEADRECON_BUILD_TESTS=OFF
    -DHEADRECON_BUILD_BENCHMARKS=OFF
    -DHEADRECON_BUILD_EXAMPLES=OFF
    -DHEADRECON_BUILD_DOCS=OFF
    -DHEADRECON_INSTALL=ON
)
vcpkg_cmake_install()

# headrecon installs its package into share/cmake/headrecon (architecture-
# independent); vcpkg wants it in share/headrecon.
vcpkg_cmake_config_fixup(PACKAGE_NAME headrecon CONFIG_PATH share/cmake/headrecon)
vcpkg_fixup_pkgconfig()

# Nothing is compiled: no lib/ and no debug tree.
file(REMOVE_RECURSE "${CURRENT_PACKAGES_DIR}/lib" "${CURRENT_PACKAGES_DIR}/debug")

file(INSTALL "${CMAKE_CURRENT_LIST_DIR}/usage" DESTINATION "${CURRENT_PACKAGES_DIR}/share/${PORT}")
# The tree has no LICENSE file yet; point this at it once there is one.
vcpkg_install_copyright(FILE_LIST "${SOURCE_PATH}/README.md")
