# examples/pipeline.cmake - the seeds' document indexer (crew_pipeline), and its tests.
add_executable(pipeline ${CMAKE_CURRENT_LIST_DIR}/pipeline.c)
target_compile_options(pipeline PRIVATE ${CREW_WARNINGS})
target_link_libraries(pipeline PRIVATE crew_static)

if(CREW_BUILD_TESTS)
  # The program checks what it claims and prints "pipeline: ok" only if all held: every
  # document indexed exactly once (verified against a regenerated fingerprint), never more
  # documents alive than the queues, workers and the producer's hand can hold, none leaked,
  # every document sent accounted for. (A pass pattern makes CTest ignore the exit status,
  # so sanitizer reports fail it here.)
  add_test(NAME example_pipeline COMMAND pipeline 600 8 1)
  set_tests_properties(example_pipeline PROPERTIES TIMEOUT 120
                       PASS_REGULAR_EXPRESSION "every document indexed exactly once\npipeline: ok\n"
                       FAIL_REGULAR_EXPRESSION "FAIL|Sanitizer|runtime error")
  # Cancelled mid-run by its deadline: every document still accounted for, none leaked.
  add_test(NAME example_pipeline_cancel COMMAND pipeline -t 40ms 4000 8 2)
  set_tests_properties(example_pipeline_cancel PROPERTIES TIMEOUT 120
                       PASS_REGULAR_EXPRESSION "cancelled after .*every document accounted for: indexed at most once, or given up\npipeline: ok\n"
                       FAIL_REGULAR_EXPRESSION "FAIL|Sanitizer|runtime error")
endif()
