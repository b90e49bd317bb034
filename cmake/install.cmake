# Install rules and the CMake package (find_package(hydraopt)), included from
# the top-level CMakeLists.txt. The version comes from project(VERSION) there.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(HYDRAOPT_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/hydraopt CACHE STRING
    "Where hydraoptConfig.cmake is installed, relative to the prefix")

target_include_directories(hydraopt PUBLIC $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
# Eigen objects cross the library boundary (ModuleLora, MergeOptions ...):
# consumers must compile Eigen for the same instruction set, or the two
# sides disagree on allocation alignment (and free each other's buffers
# the wrong way). In-tree targets get the flag from add_compile_options.
if(HYDRAOPT_NATIVE AND HYDRAOPT_HAS_MARCH_NATIVE)
  target_compile_options(hydraopt INTERFACE $<INSTALL_INTERFACE:-march=native>)
endif()

install(TARGETS hydraopt hydraopt_runtime EXPORT hydraoptTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY include/hydraopt DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
if(HYDRAOPT_BUILD_CLI)
  install(TARGETS hydraopt_cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()
install(EXPORT hydraoptTargets NAMESPACE hydraopt:: DESTINATION ${HYDRAOPT_CMAKE_DIR})

# The config re-finds what the exported target names: Eigen (public), and,
# for the static library, the private dependencies its archive needs at link.
get_target_property(HYDRAOPT_LIBRARY_TYPE hydraopt TYPE)
configure_package_config_file(cmake/hydraoptConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/hydraoptConfig.cmake
  INSTALL_DESTINATION ${HYDRAOPT_CMAKE_DIR})
# 0.x: a minor release may break the API.
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/hydraoptConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/hydraoptConfig.cmake
              ${CMAKE_CURRENT_BINARY_DIR}/hydraoptConfigVersion.cmake
        DESTINATION ${HYDRAOPT_CMAKE_DIR})

# Installs into a temporary prefix, builds tests/consumer against it with
# find_package(hydraopt) and runs it; also the installed CLI and module.
if(HYDRAOPT_BUILD_TESTS AND HYDRAOPT_BUILD_CLI)
  add_test(NAME install.consumer
    COMMAND /bin/bash ${CMAKE_CURRENT_SOURCE_DIR}/tests/install_test.sh
            ${CMAKE_BINARY_DIR} ${PROJECT_VERSION} $<BOOL:${HYDRAOPT_BUILD_PYTHON}>)
  set_tests_properties(install.consumer PROPERTIES TIMEOUT 600 COST 500)
endif()
