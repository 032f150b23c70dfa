# errgroup: the seeds' errgroup snippets (fail-fast, SetLimit, every error, TryGo).
add_executable(errgroup errgroup.c)
target_compile_options(errgroup PRIVATE ${CREW_WARNINGS})
target_link_libraries(errgroup PRIVATE crew_static)

if(CREW_BUILD_TESTS)
  # Its output: task 7's error fails the group, the squares add up, the four errors are
  # listed by index, TryGo refuses at the limit, and the program's own checks all held.
  add_test(NAME example_errgroup COMMAND errgroup)
  set_tests_properties(example_errgroup PROPERTIES TIMEOUT 60
    PASS_REGULAR_EXPRESSION
    "wait: CREW_EBUSY.*failed task: 7\n.*sum of squares: 332833500;.*errors: 4 \\(tasks 4, 9, 14, 19\\).*at the limit: CREW_EAGAIN\n.*errgroup: all as expected\n")
endif()
