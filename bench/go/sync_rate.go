// sync_rate.go - how closely golang.org/x/time/rate holds a pool's job start rate to the
// rate it is set to: the Go peer of bench/sync_rate.c, with the same arguments and output.
//
// Usage: go-sync-rate <per_sec> <workers> <seconds>
//
// The seeds' pattern: W worker goroutines range over a buffered jobs channel and call
// limiter.Wait(ctx) before each (empty) job, on one rate.NewLimiter(rate.Limit(per_sec), 1).
// A producer keeps the channel full for the given seconds, then the ctx is cancelled.
// Built offline with GO111MODULE=off, and only where Debian's golang-golang-x-time-dev put
// the package in /usr/share/gocode.
package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/time/rate"
)

func cpuSecs() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)/1e6
}

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: go-sync-rate <per_sec> <workers> <seconds>")
		os.Exit(2)
	}
	perSec, err1 := strconv.ParseFloat(os.Args[1], 64)
	workers, err2 := strconv.Atoi(os.Args[2])
	secs, err3 := strconv.ParseFloat(os.Args[3], 64)
	if err1 != nil || err2 != nil || err3 != nil || perSec <= 0 || workers < 1 || secs <= 0 {
		fmt.Fprintln(os.Stderr, "go-sync-rate: bad arguments")
		os.Exit(2)
	}
	ctx, cancel := context.WithCancel(context.Background())
	jobs := make(chan struct{}, 1024)
	var mu sync.Mutex
	starts := make([]time.Time, 0, int(perSec*secs*1.1)+1024)
	var wg sync.WaitGroup

	cpu0 := cpuSecs()
	t0 := time.Now() // the bucket fills (burst 1) here
	limiter := rate.NewLimiter(rate.Limit(perSec), 1)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range jobs {
				if err := limiter.Wait(ctx); err != nil {
					continue
				}
				now := time.Now()
				mu.Lock()
				starts = append(starts, now)
				mu.Unlock()
			}
		}()
	}
	end := t0.Add(time.Duration(secs * 1e9))
	timer := time.NewTimer(time.Until(end))
produce:
	for {
		select {
		case jobs <- struct{}{}:
		case <-timer.C:
			break produce
		}
	}
	cpu := cpuSecs() - cpu0
	cancel()
	close(jobs)
	wg.Wait()

	sort.Slice(starts, func(i, j int) bool { return starts[i].Before(starts[j]) })
	inWindow := 0
	for inWindow < len(starts) && !starts[inWindow].After(end) {
		inWindow++
	}
	late := make([]float64, inWindow)
	for k := 0; k < inWindow; k++ {
		late[k] = float64(starts[k].Sub(t0).Nanoseconds())/1e3 - float64(k)/perSec*1e6
	}
	sort.Float64s(late)
	p50, p99 := 0.0, 0.0
	if inWindow > 0 {
		p50 = late[inWindow/2]
		p99 = late[int(float64(inWindow-1)*0.99)]
	}
	fmt.Printf("started=%d\nper_sec=%.2f\nof_set=%.4f\nlate_p50_us=%.1f\nlate_p99_us=%.1f\n"+
		"cpu_pct=%.1f\n", inWindow, float64(inWindow)/secs, float64(inWindow)/secs/perSec, p50,
		p99, 100*cpu/secs)
}
