// sync_sem.go - golang.org/x/sync/semaphore acquire/release pairs per second: the Go peer
// of bench/sync_sem.c, with the same arguments and output.
//
// Usage: go-sync-sem <goroutines> <size> <seconds>
//
// G goroutines loop sem.Acquire(ctx, 1) then sem.Release(1) on one semaphore.NewWeighted
// of `size`, all started together and stopped together after the given seconds.
// GOMAXPROCS is left at its default, the number of CPUs. Built offline with GO111MODULE=off
// against Debian's golang-golang-x-sync-dev (/usr/share/gocode).
package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"
)

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: go-sync-sem <goroutines> <size> <seconds>")
		os.Exit(2)
	}
	gs, err1 := strconv.Atoi(os.Args[1])
	size, err2 := strconv.ParseInt(os.Args[2], 10, 64)
	secs, err3 := strconv.ParseFloat(os.Args[3], 64)
	if err1 != nil || err2 != nil || err3 != nil || gs < 1 || size < 1 || secs <= 0 {
		fmt.Fprintln(os.Stderr, "go-sync-sem: bad arguments")
		os.Exit(2)
	}
	sem := semaphore.NewWeighted(size)
	ctx := context.Background()
	var stop int32
	start := make(chan struct{})
	pairs := make([]int64, gs*8) // one counter per 64 bytes
	var wg sync.WaitGroup
	for i := 0; i < gs; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			<-start
			var n int64
			for atomic.LoadInt32(&stop) == 0 {
				if err := sem.Acquire(ctx, 1); err != nil {
					panic(err)
				}
				sem.Release(1)
				n++
			}
			pairs[i*8] = n
		}(i)
	}
	t0 := time.Now()
	close(start)
	time.Sleep(time.Duration(secs * 1e9))
	atomic.StoreInt32(&stop, 1)
	wg.Wait()
	elapsed := time.Since(t0).Seconds()
	var total, least, most int64 = 0, -1, 0
	for i := 0; i < gs; i++ {
		n := pairs[i*8]
		total += n
		if least < 0 || n < least {
			least = n
		}
		if n > most {
			most = n
		}
	}
	fairness := 0.0
	if most > 0 {
		fairness = float64(least) / float64(most)
	}
	fmt.Printf("pairs=%d\nsecs=%.3f\npairs_per_sec=%.0f\nfairness=%.3f\n", total, elapsed,
		float64(total)/elapsed, fairness)
}
