# bench/cli.cmake - the crew command's benchmark (bench/run-cli): the floor program it
# compares crew, xargs -P and GNU parallel against. The crew binary is the tree's cli/crew.
add_executable(cli_floor ${CMAKE_CURRENT_SOURCE_DIR}/cli_floor.c)
target_compile_options(cli_floor PRIVATE ${BENCH_C_WARNINGS})
