# examples/semaphore.cmake - the seeds' semaphore patterns (crew_sem), and their test.
add_executable(semaphore ${CMAKE_CURRENT_LIST_DIR}/semaphore.c)
target_compile_options(semaphore PRIVATE ${CREW_WARNINGS})
target_link_libraries(semaphore PRIVATE crew_static)

if(CREW_BUILD_TESTS)
  # The program checks what it shows (never more tasks or units at once than allowed, the
  # ctx deadline, FIFO, over-release refused) and prints "semaphore: ok" only if all held. (A
  # pass pattern makes CTest ignore the exit status, so sanitizer reports fail it here.)
  add_test(NAME example_semaphore COMMAND semaphore 10)
  set_tests_properties(example_semaphore PROPERTIES TIMEOUT 120
                       PASS_REGULAR_EXPRESSION "\nsemaphore: ok\n"
                       FAIL_REGULAR_EXPRESSION "FAIL|Sanitizer|runtime error")
endif()
