# examples/ratelimit.cmake - the seeds' rate-limited pool (crew_rate), and its test.
add_executable(ratelimit ${CMAKE_CURRENT_LIST_DIR}/ratelimit.c)
target_compile_options(ratelimit PRIVATE ${CREW_WARNINGS})
target_link_libraries(ratelimit PRIVATE crew_static)

if(CREW_BUILD_TESTS)
  # The program checks what the limiter guarantees (no job starts before its token is due,
  # the burst, reservations one interval apart, a deadline refusing a wait, a rate change
  # waking a waiter) and prints "ratelimit: ok" only if all held. (A
  # pass pattern makes CTest ignore the exit status, so sanitizer reports fail it here.)
  add_test(NAME example_ratelimit COMMAND ratelimit 10)
  set_tests_properties(example_ratelimit PROPERTIES TIMEOUT 120
                       PASS_REGULAR_EXPRESSION "\nratelimit: ok\n"
                       FAIL_REGULAR_EXPRESSION "FAIL|Sanitizer|runtime error")
endif()
