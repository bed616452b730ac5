# `cmake --install` exports Kite's runtime as a CMake package: C++ programs build against the
# Executor API (include/kite/) with
#   find_package(kite REQUIRED)
#   target_link_libraries(my_program PRIVATE kite::kite)
# The layers are static libraries; kiteConfig.cmake finds the libraries they link to (the same
# Debian packages and, for CUDA builds, the CUDA toolkit).
include(CMakePackageConfigHelpers)
include(GNUInstallDirs)

set(kite_export_layers kite_core kite_formats kite_tokenizer kite_model kite_kernels_cpu
    kite_kernels kite_runtime)
if(KITE_WITH_CUDA)
  list(APPEND kite_export_layers kite_cuda)
endif()
# The public target: the runtime and the public headers.
add_library(kite_package INTERFACE)
set_target_properties(kite_package PROPERTIES EXPORT_NAME kite)
target_link_libraries(kite_package INTERFACE kite_runtime)
target_include_directories(kite_package INTERFACE
  $<BUILD_INTERFACE:${CMAKE_SOURCE_DIR}/include> $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
add_library(kite::kite ALIAS kite_package)

install(TARGETS ${kite_export_layers} kite_package EXPORT kiteTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(DIRECTORY ${CMAKE_SOURCE_DIR}/include/kite DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT kiteTargets NAMESPACE kite:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/kite)
set(KITE_PACKAGE_WITH_CUDA ${KITE_WITH_CUDA})
configure_package_config_file(${CMAKE_SOURCE_DIR}/cmake/kiteConfig.cmake.in
  ${CMAKE_BINARY_DIR}/kiteConfig.cmake INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/kite)
write_basic_package_version_file(${CMAKE_BINARY_DIR}/kiteConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_BINARY_DIR}/kiteConfig.cmake ${CMAKE_BINARY_DIR}/kiteConfigVersion.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/kite)
