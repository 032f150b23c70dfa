// group.go - the Go peer of bench/group_crew.c: golang.org/x/sync/errgroup running many
// tiny tasks, each one atomic add, with SetLimit(8) or without a limit.
//
// Usage: go-group <limit8|nolimit> <scale>. Runs 100000 x scale tasks through one group
// (errgroup.WithContext, g.Go per task, g.Wait) and prints `mode ns_per_task=X tasks=N`,
// the time from the first Go to Wait's return divided by the tasks. Build offline with
// GO111MODULE=off and GOPATH holding /usr/share/gocode (Debian's golang-golang-x-sync-dev).
package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
)

func main() {
	if len(os.Args) != 3 || (os.Args[1] != "limit8" && os.Args[1] != "nolimit") {
		fmt.Fprintln(os.Stderr, "usage: go-group <limit8|nolimit> <scale>")
		os.Exit(2)
	}
	scale, err := strconv.ParseFloat(os.Args[2], 64)
	if err != nil || scale <= 0 {
		fmt.Fprintln(os.Stderr, "go-group: bad scale")
		os.Exit(2)
	}
	n := int(100000 * scale)
	if n < 1 {
		n = 1
	}
	var count int64
	g, _ := errgroup.WithContext(context.Background())
	if os.Args[1] == "limit8" {
		g.SetLimit(8)
	}
	start := time.Now()
	for i := 0; i < n; i++ {
		g.Go(func() error {
			atomic.AddInt64(&count, 1)
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		fmt.Fprintln(os.Stderr, "go-group:", err)
		os.Exit(1)
	}
	elapsed := time.Since(start)
	if count != int64(n) {
		fmt.Fprintf(os.Stderr, "go-group: %d of %d tasks ran\n", count, n)
		os.Exit(1)
	}
	fmt.Printf("%s ns_per_task=%.1f tasks=%d\n", os.Args[1], float64(elapsed.Nanoseconds())/float64(n), n)
}
