# fetch: the concurrent URL fetcher on libcurl, and its test against a local HTTP server
# (tests/examples/httpd.c, libmicrohttpd) that the test starts on 127.0.0.1.
# No early return() here: this file is included into examples/CMakeLists.txt, where a
# return() would skip the fragments that follow.
find_package(CURL QUIET)
find_package(PkgConfig QUIET)
if(PKG_CONFIG_FOUND)
  pkg_check_modules(MICROHTTPD QUIET IMPORTED_TARGET libmicrohttpd)
endif()

if(NOT CURL_FOUND)
  message(STATUS "examples: fetch skipped: libcurl not found (Debian libcurl4-openssl-dev)")
else()
  add_executable(fetch ${CMAKE_CURRENT_LIST_DIR}/fetch.c)
  target_compile_options(fetch PRIVATE ${CREW_WARNINGS})
  target_link_libraries(fetch PRIVATE crew_static CURL::libcurl)

  if(CREW_BUILD_TESTS AND NOT MICROHTTPD_FOUND)
    message(STATUS "examples: fetch test skipped: libmicrohttpd not found "
                   "(Debian libmicrohttpd-dev)")
  elseif(CREW_BUILD_TESTS)
    add_executable(fetch_httpd ${PROJECT_SOURCE_DIR}/tests/examples/httpd.c)
    target_compile_options(fetch_httpd PRIVATE ${CREW_WARNINGS})
    target_link_libraries(fetch_httpd PRIVATE PkgConfig::MICROHTTPD Threads::Threads)

    add_test(NAME example_fetch
             COMMAND ${PROJECT_SOURCE_DIR}/tests/examples/test_fetch.sh
                     $<TARGET_FILE:fetch> $<TARGET_FILE:fetch_httpd>)
    set_tests_properties(example_fetch PROPERTIES TIMEOUT 300)
  endif()
endif()
