# Third-party libraries, all from Debian packages (see README "Set up").
find_package(nlohmann_json 3.10 REQUIRED)
find_package(CLI11 2.0 REQUIRED)
find_package(PkgConfig REQUIRED)
pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)
pkg_check_modules(UTF8PROC REQUIRED IMPORTED_TARGET libutf8proc)
find_package(Threads REQUIRED)
# The CPU backend parallelises its ops with OpenMP (GCC's libgomp).
find_package(OpenMP REQUIRED)
