# Third-party libraries, all from Debian packages (see README "Set up").
find_package(nlohmann_json 3.10 REQUIRED)
find_package(CLI11 2.0 REQUIRED)
find_package(PkgConfig REQUIRED)
pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)
pkg_check_modules(UTF8PROC REQUIRED IMPORTED_TARGET libutf8proc)
# `kite serve`'s HTTP server. Debian builds cpp-httplib as a shared library with OpenSSL, zlib and
# brotli support, and its header's declarations depend on those macros: take the package's flags.
pkg_check_modules(CPPHTTPLIB REQUIRED IMPORTED_TARGET cpp-httplib>=0.11)
find_package(Threads REQUIRED)
# The CPU backend parallelises its ops with OpenMP (GCC's libgomp).
find_package(OpenMP REQUIRED)
