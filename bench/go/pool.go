// pool.go - the seeds' idiomatic Go worker pool as a benchmark peer: W goroutines ranging
// over a buffered jobs channel, each sending a result to a results channel, a WaitGroup, a
// closer goroutine that closes results after wg.Wait(), and main collecting the results.
//
// It mirrors bench/harness.c: same arguments (<workload> <scale> [iters]), same job bodies
// (the LCG loop is the same instruction chain as the C one), same figures printed the same
// way. Differences that are Go's own: the producer is a goroutine; a sleep job is
// time.Sleep (Go parks the goroutine, not the thread); GOMAXPROCS is left at its default,
// the number of CPUs. Standard library only; build offline with GO111MODULE=off.
package main

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	kEmpty = 1 + iota
	kWork
	kSleep
	kGate
	kCount
	kStamp
)

const (
	queueCapDefault = 4096
	resultsCap      = 4096
	paceNs          = 50 * 1000
	quietNs         = 200 * 1000 * 1000 // e: no submit for 200 ms after the paced jobs
	rusageThread    = 1                 // RUSAGE_THREAD
)

// Job is what travels on the jobs channel: a kind and, for kStamp, its stamp's index.
type Job struct {
	kind int
	idx  int
}

type stamp struct {
	submit  int64
	latency int64
}

var (
	base        = time.Now()
	iters       uint64
	gate        = make(chan struct{})
	gateEntered int32
	earlyRuns   int64
	stamps      []stamp
)

func now() int64 { return int64(time.Since(base)) }

func work() uint64 {
	x := uint64(0x9E3779B97F4A7C15)
	for i := uint64(0); i < iters; i++ {
		x = x*6364136223846793005 + 1442695040888963407
	}
	return x
}

func run(j Job) uint64 {
	switch j.kind {
	case kWork:
		return work()
	case kSleep:
		time.Sleep(time.Millisecond)
	case kGate:
		atomic.AddInt32(&gateEntered, 1)
		<-gate
	case kCount:
		atomic.AddInt64(&earlyRuns, 1)
	case kStamp:
		s := &stamps[j.idx]
		s.latency = now() - s.submit
	}
	return 0
}

func worker(jobs <-chan Job, results chan<- uint64, wg *sync.WaitGroup) {
	defer wg.Done()
	for j := range jobs {
		results <- run(j)
	}
}

func cpuNs(who int) int64 {
	var ru syscall.Rusage
	if syscall.Getrusage(who, &ru) != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

func statusKB(field string) int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return -1
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, field) {
			v := strings.Fields(strings.TrimPrefix(line, field))
			if len(v) > 0 {
				n, _ := strconv.ParseInt(v[0], 10, 64)
				return n
			}
		}
	}
	return -1
}

func calibrate() uint64 {
	const batch = 2000000
	saved := iters
	iters = batch
	best := 1e9
	for r := 0; r < 7; r++ {
		t0 := now()
		x := work()
		per := float64(now()-t0) / batch
		if x == 42 {
			fmt.Fprint(os.Stderr, "")
		}
		if per < best {
			best = per
		}
	}
	iters = saved
	n := uint64(1000/best + 0.5)
	if n == 0 {
		n = 1
	}
	return n
}

func scaled(b, scale float64, min int) int {
	n := b * scale
	if n < float64(min) {
		return min
	}
	return int(n)
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: go-pool <a|b|c|d|e|calibrate> [scale] [iters]")
	os.Exit(2)
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	if os.Args[1] == "calibrate" {
		fmt.Printf("calibrate iters=%d\n", calibrate())
		return
	}
	w := os.Args[1]
	if len(w) != 1 || w[0] < 'a' || w[0] > 'e' {
		usage()
	}
	scale := 1.0
	if len(os.Args) > 2 {
		s, err := strconv.ParseFloat(os.Args[2], 64)
		if err != nil || !(s > 0) {
			usage()
		}
		scale = s
	}
	if len(os.Args) > 3 {
		n, err := strconv.ParseUint(os.Args[3], 10, 64)
		if err != nil {
			usage()
		}
		iters = n
	} else {
		iters = calibrate()
	}
	qcap := queueCapDefault
	if v, err := strconv.Atoi(os.Getenv("BENCH_QCAP")); err == nil && v > 0 {
		qcap = v
	}

	workers, n, gates := 2, 0, 0
	switch w {
	case "a":
		n = scaled(1e6, scale, 1)
	case "b":
		n = scaled(2e5, scale, 1)
	case "c":
		n = scaled(1e4, scale, 1)
		workers = 64
	case "d":
		n = scaled(1e6, scale, 1)
		gates = workers
		qcap = n + gates
	case "e":
		n = scaled(2e4, scale, 100)
		stamps = make([]stamp, n)
	}

	var serialNs int64
	var sink uint64
	if w == "b" {
		t0 := now()
		for i := 0; i < n; i++ {
			sink += work()
		}
		serialNs = now() - t0
	}
	rssBase := statusKB("VmRSS:")

	// The pool, as the seeds write it.
	jobs := make(chan Job, qcap)
	results := make(chan uint64, resultsCap)
	var wg sync.WaitGroup
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go worker(jobs, results, &wg)
	}
	go func() {
		wg.Wait()
		close(results)
	}()

	var tStart, proc0, prodCpu, rssQueued, quietCpu int64
	var queued int64
	go func() {
		defer close(jobs)
		switch w {
		case "a", "b", "c":
			kind := map[string]int{"a": kEmpty, "b": kWork, "c": kSleep}[w]
			tStart = now()
			for i := 0; i < n; i++ {
				jobs <- Job{kind: kind}
			}
		case "d":
			for g := 0; g < gates; g++ {
				jobs <- Job{kind: kGate}
			}
			giveUp := now() + 5e9
			for atomic.LoadInt32(&gateEntered) < int32(gates) && now() < giveUp {
				time.Sleep(100 * time.Microsecond)
			}
			tStart = now()
			for i := 0; i < n; i++ {
				jobs <- Job{kind: kCount}
			}
			rssQueued = statusKB("VmRSS:")
			queued = int64(n) - atomic.LoadInt64(&earlyRuns)
			close(gate)
		case "e":
			runtime.LockOSThread()
			prod0 := cpuNs(rusageThread)
			proc0 = cpuNs(syscall.RUSAGE_SELF)
			tStart = now()
			for i := 0; i < n; i++ {
				at := tStart + int64(i)*paceNs
				for now() < at {
				}
				stamps[i].submit = now()
				jobs <- Job{kind: kStamp, idx: i}
			}
			prodCpu = cpuNs(rusageThread) - prod0
			// Then no work at all for quietNs, the producer asleep (as harness.c).
			q0 := cpuNs(syscall.RUSAGE_SELF)
			time.Sleep(quietNs)
			quietCpu = cpuNs(syscall.RUSAGE_SELF) - q0
		}
	}()

	for r := range results {
		sink += r
	}
	tDone := now()
	proc1 := cpuNs(syscall.RUSAGE_SELF)

	wall := tDone - tStart
	fmt.Printf("%s peer=go\n%s jobs=%d\n%s workers=%d\n%s wall_ns=%d\n", w, w, n, w, workers, w, wall)
	switch w {
	case "a":
		fmt.Printf("a ns_per_job=%.2f\n", float64(wall)/float64(n))
	case "b":
		cores := runtime.NumCPU()
		if cores > workers {
			cores = workers
		}
		fmt.Printf("b iters=%d\nb job_ns=%.1f\nb serial_ns=%d\nb efficiency=%.4f\n", iters,
			float64(serialNs)/float64(n), serialNs,
			float64(serialNs)/float64(cores)/float64(wall))
	case "c":
		ideal := float64(n) * 1e6 / float64(workers)
		fmt.Printf("c wall_ms=%.2f\nc ideal_ms=%.2f\nc wall_over_ideal=%.4f\nc cpu_ms=%.2f\n",
			float64(wall)/1e6, ideal/1e6, float64(wall)/ideal, float64(proc1)/1e6)
	case "d":
		peak := statusKB("VmHWM:")
		if rssQueued > peak {
			peak = rssQueued
		}
		fmt.Printf("d rss_base_kb=%d\nd rss_peak_kb=%d\nd queued=%d\nd bytes_per_job=%.2f\n",
			rssBase, peak, queued, float64(peak-rssBase)*1024/float64(n))
	case "e":
		lat := make([]int64, n)
		for i := range stamps {
			lat[i] = stamps[i].latency
		}
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		idle := (proc1 - proc0) - prodCpu - quietCpu
		paced := wall - quietNs
		fmt.Printf("e p50_us=%.2f\ne p99_us=%.2f\ne max_us=%.2f\ne idle_cpu_ms=%.2f\n"+
			"e idle_cpu_pct=%.1f\ne quiet_cpu_pct=%.1f\n", float64(lat[n/2])/1e3,
			float64(lat[n*99/100])/1e3, float64(lat[n-1])/1e3, float64(idle)/1e6,
			100*float64(idle)/float64(paced), 100*float64(quietCpu)/float64(quietNs))
	}
	if sink == 42 {
		fmt.Fprintln(os.Stderr, "")
	}
}
