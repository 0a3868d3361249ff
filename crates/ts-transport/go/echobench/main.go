// Command echobench measures Go's tsnet in-process, in the shapes of
// tests/benches/transport.rs, so that the Rust transport can be compared with
// what Go itself gets from the same tailscale.com version on the same
// machine and local tailnet, in the same benchmark run.
//
//	echobench -control-url URL [-prefix P] [-rounds N] [-bulk-runs N]
//	          [-bulk-bytes N] [-parallel-rounds N]
//
// Two tsnet nodes in this process; b listens, a dials. It measures one-way
// single-stream throughput (256 MiB, median of -bulk-runs), 64-byte echo
// round trips on one connection (p50, p99, rounds per second, and this
// process's CPU time and context switches per round trip) and 64 connections
// doing 500 echoes each at once. It prints one JSON line on stdout.
//
// It lives in the module of the tsnet archive so that both use the same
// pinned tailscale.com; `go build ./echobench` builds it.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"tailscale.com/tsnet"
)

const (
	message         = 64
	warmupRounds    = 200
	parallelStreams = 64
)

var (
	bulkBytes      = 256 << 20
	parallelRounds = 500
)

// usage is this process's CPU time and voluntary context switches (a thread
// going to sleep to wait) so far; involuntary ones are mostly other processes
// preempting this one on a shared machine.
type usage struct {
	cpu      time.Duration
	switches int64
}

func now() usage {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		log.Fatalf("getrusage: %v", err)
	}
	return usage{
		cpu:      time.Duration(ru.Utime.Nano() + ru.Stime.Nano()),
		switches: ru.Nvcsw,
	}
}

// result is the line printed on stdout; the Rust benchmark reads it.
type result struct {
	Path            string  `json:"path"`
	MiBPerS         float64 `json:"mib_per_s"`
	RTTp50us        float64 `json:"rtt_p50_us"`
	RTTp99us        float64 `json:"rtt_p99_us"`
	SerialRPS       float64 `json:"serial_rps"`
	CPUPerRTTus     float64 `json:"cpu_per_rtt_us"`
	SwitchesPerRTT  float64 `json:"switches_per_rtt"`
	ParallelRPS     float64 `json:"parallel_rps"`
	CPUPerParallelu float64 `json:"cpu_per_parallel_us"`
}

func main() {
	controlURL := flag.String("control-url", "", "the local tailnet's control URL")
	prefix := flag.String("prefix", "echobench", "hostname prefix of the two nodes")
	rounds := flag.Int("rounds", 5000, "measured echo round trips")
	bulkRuns := flag.Int("bulk-runs", 3, "bulk transfers (median reported); 0 skips them")
	flag.IntVar(&bulkBytes, "bulk-bytes", bulkBytes, "bytes of one bulk transfer (a multiple of 1 MiB)")
	flag.IntVar(&parallelRounds, "parallel-rounds", parallelRounds, "echoes per stream of the 64")
	flag.Parse()
	if *controlURL == "" {
		log.Fatal("-control-url is required")
	}
	res, err := run(*controlURL, *prefix, *rounds, *bulkRuns)
	if err != nil {
		log.Fatal(err)
	}
	line, _ := json.Marshal(res)
	os.Stdout.Write(append(line, '\n'))
	// Closing in-process nodes is not what is measured; exit at once.
	os.Exit(0)
}

func node(ctx context.Context, controlURL, hostname, dir string) (*tsnet.Server, netip.Addr, error) {
	s := &tsnet.Server{
		Dir:        filepath.Join(dir, hostname),
		ControlURL: controlURL,
		Hostname:   hostname,
		Logf:       func(string, ...any) {},
		UserLogf:   func(string, ...any) {},
	}
	upCtx, cancel := context.WithTimeout(ctx, 120*time.Second)
	defer cancel()
	st, err := s.Up(upCtx)
	if err != nil {
		return nil, netip.Addr{}, fmt.Errorf("%s up: %w", hostname, err)
	}
	for _, ip := range st.TailscaleIPs {
		if ip.Is4() {
			return s, ip, nil
		}
	}
	return nil, netip.Addr{}, fmt.Errorf("%s has no IPv4 address", hostname)
}

func run(controlURL, prefix string, rounds, bulkRuns int) (result, error) {
	var res result
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "echobench-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	a, _, err := node(ctx, controlURL, prefix+"-a", dir)
	if err != nil {
		return res, err
	}
	b, bIP, err := node(ctx, controlURL, prefix+"-b", dir)
	if err != nil {
		return res, err
	}
	dial := func(port uint16) (net.Conn, error) {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		return a.Dial(dctx, "tcp", netip.AddrPortFrom(bIP, port).String())
	}

	// Let the nodes find a direct path first, as the Rust benchmark does.
	warm, err := b.Listen("tcp", ":17000")
	if err != nil {
		return res, err
	}
	go func() {
		if c, err := warm.Accept(); err == nil {
			c.Close()
		}
	}()
	if c, err := dial(17000); err == nil {
		c.Close()
	}
	warm.Close()
	time.Sleep(2 * time.Second)
	res.Path = pathTo(ctx, a, bIP)

	if bulkRuns > 0 {
		if res.MiBPerS, err = bulk(b, dial, bulkRuns); err != nil {
			return res, err
		}
	}

	echo, err := b.Listen("tcp", ":17201")
	if err != nil {
		return res, err
	}
	go serveEcho(echo)
	c, err := dial(17201)
	if err != nil {
		return res, err
	}
	if _, err := pingPong(c, warmupRounds); err != nil {
		return res, err
	}
	before, started := now(), time.Now()
	samples, err := pingPong(c, rounds)
	if err != nil {
		return res, err
	}
	elapsed, after := time.Since(started), now()
	res.SerialRPS = float64(rounds) / elapsed.Seconds()
	res.CPUPerRTTus = micros(after.cpu-before.cpu) / float64(rounds)
	res.SwitchesPerRTT = float64(after.switches-before.switches) / float64(rounds)
	slices.Sort(samples)
	res.RTTp50us = micros(samples[len(samples)/2])
	res.RTTp99us = micros(samples[len(samples)*99/100])
	c.Close()

	var conns []net.Conn
	for range parallelStreams {
		c, err := dial(17201)
		if err != nil {
			return res, err
		}
		if _, err := pingPong(c, 10); err != nil {
			return res, err
		}
		conns = append(conns, c)
	}
	var wg sync.WaitGroup
	var done atomic.Int64
	before, started = now(), time.Now()
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if s, err := pingPong(c, parallelRounds); err == nil {
				done.Add(int64(len(s)))
			}
		}()
	}
	wg.Wait()
	elapsed, after = time.Since(started), now()
	res.ParallelRPS = float64(done.Load()) / elapsed.Seconds()
	res.CPUPerParallelu = micros(after.cpu-before.cpu) / float64(done.Load())
	return res, nil
}

func micros(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }

func serveEcho(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			buf := make([]byte, message)
			for {
				if _, err := io.ReadFull(c, buf); err != nil {
					return
				}
				if _, err := c.Write(buf); err != nil {
					return
				}
			}
		}()
	}
}

func pingPong(c net.Conn, n int) ([]time.Duration, error) {
	buf := bytes.Repeat([]byte{7}, message)
	out := make([]time.Duration, 0, n)
	for range n {
		t := time.Now()
		if _, err := c.Write(buf); err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			return nil, err
		}
		out = append(out, time.Since(t))
	}
	return out, nil
}

// bulk is the median MiB/s of runs one-way transfers of bulkBytes.
func bulk(b *tsnet.Server, dial func(uint16) (net.Conn, error), runs int) (float64, error) {
	ln, err := b.Listen("tcp", ":17200")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	var rates []float64
	for range runs {
		received := make(chan int, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				received <- -1
				return
			}
			defer c.Close()
			buf := make([]byte, 64<<10)
			total := 0
			for {
				n, err := c.Read(buf)
				total += n
				if err != nil {
					break
				}
			}
			received <- total
		}()
		c, err := dial(17200)
		if err != nil {
			return 0, err
		}
		chunk := bytes.Repeat([]byte{0x5a}, 1<<20)
		started := time.Now()
		for range bulkBytes / len(chunk) {
			if _, err := c.Write(chunk); err != nil {
				return 0, err
			}
		}
		c.(interface{ CloseWrite() error }).CloseWrite()
		if got := <-received; got != bulkBytes {
			return 0, fmt.Errorf("bulk: received %d of %d bytes", got, bulkBytes)
		}
		rates = append(rates, float64(bulkBytes)/(1<<20)/time.Since(started).Seconds())
		c.Close()
	}
	slices.Sort(rates)
	return rates[len(rates)/2], nil
}

// pathTo says how s reaches ip: directly (with the endpoint) or via DERP.
func pathTo(ctx context.Context, s *tsnet.Server, ip netip.Addr) string {
	lc, err := s.LocalClient()
	if err != nil {
		return "unknown"
	}
	st, err := lc.Status(ctx)
	if err != nil {
		return "unknown"
	}
	for _, p := range st.Peer {
		if !slices.Contains(p.TailscaleIPs, ip) {
			continue
		}
		if p.CurAddr != "" {
			return "direct (" + p.CurAddr + ")"
		}
		return "DERP relay (" + p.Relay + ")"
	}
	return "unknown"
}
