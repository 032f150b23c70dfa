# bench/sync.cmake - the semaphore and rate limiter benchmarks (bench/run-sync runs them).
#
# sync_sem and sync_rate are crew's; go-sync-sem is the Go peer on golang.org/x/sync/semaphore
# (Debian's golang-golang-x-sync-dev), and go-sync-rate the one on golang.org/x/time/rate,
# built only where golang-golang-x-time-dev installed it. The Go peers are built offline:
# GO111MODULE=off, GOPROXY=off, GOPATH = a directory of the build tree plus /usr/share/gocode,
# caches in the build tree.
bench_peer(sync_sem sync_sem.c crew_static)
bench_peer(sync_rate sync_rate.c crew_static)

set(CREW_GOCODE /usr/share/gocode)
if(GO_EXECUTABLE AND EXISTS ${CREW_GOCODE}/src/golang.org/x/sync/semaphore)
  set(GO_SYNC_ENV ${CMAKE_COMMAND} -E env GO111MODULE=off GOFLAGS= GOPROXY=off CGO_ENABLED=0
                  GOCACHE=${CMAKE_BINARY_DIR}/gocache
                  GOPATH=${CMAKE_BINARY_DIR}/gopath:${CREW_GOCODE})
  set(GO_SYNC_PEERS go-sync-sem)
  if(EXISTS ${CREW_GOCODE}/src/golang.org/x/time/rate)
    list(APPEND GO_SYNC_PEERS go-sync-rate)
  else()
    message(STATUS "bench: golang.org/x/time/rate not in ${CREW_GOCODE}; "
                   "the rate benchmark runs crew alone")
  endif()
  foreach(peer IN LISTS GO_SYNC_PEERS)
    string(REPLACE "go-" "" src ${peer})
    string(REPLACE "-" "_" src ${src})
    add_custom_command(
      OUTPUT ${CMAKE_CURRENT_BINARY_DIR}/${peer}
      COMMAND ${GO_SYNC_ENV} ${GO_EXECUTABLE} build -o ${CMAKE_CURRENT_BINARY_DIR}/${peer}
              ${CMAKE_CURRENT_SOURCE_DIR}/go/${src}.go
      DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/go/${src}.go
      COMMENT "Building the Go peer ${peer}")
    add_custom_target(${peer} ALL DEPENDS ${CMAKE_CURRENT_BINARY_DIR}/${peer})
  endforeach()
else()
  message(STATUS "bench: go or golang.org/x/sync/semaphore missing; the Go semaphore peer is "
                 "skipped")
endif()
