# bench/group.cmake - the error group benchmark (bench/run-group): crew's group against Go's
# golang.org/x/sync/errgroup, 100,000 tiny tasks with SetLimit(8) and without a limit.
add_executable(bench_group_crew ${CMAKE_CURRENT_SOURCE_DIR}/group_crew.c)
target_compile_options(bench_group_crew PRIVATE ${BENCH_C_WARNINGS})
target_link_libraries(bench_group_crew PRIVATE crew_static)

# The Go peer needs golang.org/x/sync, which Debian's golang-golang-x-sync-dev puts in
# /usr/share/gocode: built offline, GOPATH = a directory of the build tree plus that one.
set(GO_SYNC_ROOT /usr/share/gocode)
if(GO_EXECUTABLE AND EXISTS ${GO_SYNC_ROOT}/src/golang.org/x/sync/errgroup/errgroup.go)
  set(GO_GROUP ${CMAKE_CURRENT_BINARY_DIR}/go-group)
  add_custom_command(
    OUTPUT ${GO_GROUP}
    COMMAND ${CMAKE_COMMAND} -E env GO111MODULE=off GOFLAGS= GOPROXY=off CGO_ENABLED=0
            GOCACHE=${CMAKE_BINARY_DIR}/gocache GOPATH=${CMAKE_BINARY_DIR}/gopath:${GO_SYNC_ROOT}
            ${GO_EXECUTABLE} build -o ${GO_GROUP} ${CMAKE_CURRENT_SOURCE_DIR}/go/group.go
    DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/go/group.go
    COMMENT "Building the Go errgroup peer")
  add_custom_target(go_group ALL DEPENDS ${GO_GROUP})
else()
  message(STATUS "bench: go or golang.org/x/sync (golang-golang-x-sync-dev) not found; "
                 "the Go errgroup peer is skipped")
endif()
