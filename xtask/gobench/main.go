// Command gobench measures Tailscale's Go tsconsensus (tailscale.com/tsconsensus,
// hashicorp/raft) and Go tsnet in the same shapes as this repository's Rust
// benchmarks, so that `cargo xtask bench` can put the two side by side.
//
// Every mode prints exactly one JSON line on stdout (its result) and logs to
// stderr. All nodes join the local tailnet whose control URL is given; they
// are tagged through that tailnet's admin API (<control-url>/__admin/tags),
// as the Rust benchmarks do.
//
//	gobench cluster   -control-url U -prefix P -tag T -callers N -target leader|follower
//	                  -storage memory|durable [-duration 3s] [-size 100] [-nodes 3]
//	    N callers send commands back to back to one node of a cluster of
//	    in-process tsconsensus nodes; throughput, latency, CPU per command.
//	gobench transport -control-url U -prefix P [-quick] [-bulk-bytes N]
//	                  [-bulk-runs N] [-rounds N] [-parallel-rounds N]
//	    two in-process tsnet nodes: single-stream throughput, 64-byte echo
//	    round trips (p50/p99, serial rate) and 64 streams of echoes, with
//	    this process's CPU time and context switches per round trip.
//	gobench node      -control-url U -hostname H -state-dir D -local-port P -tag T
//	                  [-peers N] [-wait-start]
//	    one tsconsensus node with durable state in a process of its own, and a
//	    line interface on 127.0.0.1:P shaped like the kv example's (put, status);
//	    it starts once it sees N tagged peers (and, with -wait-start, a line on
//	    stdin), and exits when stdin closes.
//
// tsconsensus keeps its *raft.Raft unexported and has no call for the role,
// term or log index. The benchmark needs them (which node leads, elections
// during a run, log entries per second), so raftOf reads that one field by
// reflection; it only calls raft's own thread-safe State and Stats on it.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/hashicorp/raft"
	"tailscale.com/ipn/store/mem"
	"tailscale.com/tsconsensus"
	"tailscale.com/tsnet"
)

func main() {
	log.SetOutput(os.Stderr)
	log.SetPrefix("gobench: ")
	if len(os.Args) < 2 {
		log.Fatal("usage: gobench cluster|transport|node [flags]")
	}
	var err error
	switch os.Args[1] {
	case "cluster":
		err = clusterMode(os.Args[2:])
	case "transport":
		err = transportMode(os.Args[2:])
	case "node":
		err = nodeMode(os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q (want cluster, transport or node)", os.Args[1])
	}
	if err != nil {
		log.Fatal(err)
	}
	// Exit at once: the nodes are left running (see clusterMode).
	os.Exit(0)
}

func emit(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		log.Fatalf("encode result: %v", err)
	}
	os.Stdout.Write(append(b, '\n'))
}

// cpuTime is this process's user plus system CPU time, and its voluntary
// and involuntary context switches (all threads).
func cpuTime() (time.Duration, int64) {
	cpu, voluntary, involuntary := rusage()
	return cpu, voluntary + involuntary
}

// rusage is this process's user plus system CPU time, its voluntary context
// switches (a thread going to sleep to wait) and its involuntary ones
// (mostly other processes preempting this one on a shared machine), all
// threads; zeros if the kernel will not say.
func rusage() (cpu time.Duration, voluntary, involuntary int64) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, 0, 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), ru.Nvcsw, ru.Nivcsw
}

// ---------------------------------------------------------------------------
// The local tailnet.

// tailnet is the local tailnet's control server and admin API.
type tailnet struct {
	controlURL string
	client     http.Client
}

func newTailnet(controlURL string) (*tailnet, error) {
	if !strings.HasPrefix(controlURL, "http://") {
		return nil, fmt.Errorf("-control-url %q is not an http:// URL", controlURL)
	}
	return &tailnet{controlURL: controlURL, client: http.Client{Timeout: 10 * time.Second}}, nil
}

// setTags sets the tags of the nodes called hostname through the admin API.
func (t *tailnet) setTags(hostname string, tags []string) error {
	body, _ := json.Marshal(map[string]any{"hostname": hostname, "tags": tags})
	resp, err := t.client.Post(t.controlURL+"/__admin/tags", "application/json", bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("admin tags %s: %w", hostname, err)
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("admin tags %s: %s %s", hostname, resp.Status, answer)
	}
	return nil
}

// newNode brings up a tsnet node on the local tailnet. State lives in dir;
// with ephemeral it is kept in memory only.
func newNode(ctx context.Context, controlURL, hostname, dir string, ephemeral bool) (*tsnet.Server, netip.Addr, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, netip.Addr{}, err
	}
	s := &tsnet.Server{
		Dir:        dir,
		ControlURL: controlURL,
		Hostname:   hostname,
		Ephemeral:  ephemeral,
		Logf:       func(string, ...any) {},
		UserLogf:   func(string, ...any) {},
	}
	if ephemeral {
		s.Store = new(mem.Store)
	}
	upCtx, cancel := context.WithTimeout(ctx, 120*time.Second)
	defer cancel()
	status, err := s.Up(upCtx)
	if err != nil {
		s.Close()
		return nil, netip.Addr{}, fmt.Errorf("%s up: %w", hostname, err)
	}
	for _, ip := range status.TailscaleIPs {
		if ip.Is4() {
			return s, ip, nil
		}
	}
	s.Close()
	return nil, netip.Addr{}, fmt.Errorf("%s has no tailnet IPv4", hostname)
}

// waitTagged waits until s sees itself and peers other online nodes carrying
// tag.
func waitTagged(ctx context.Context, s *tsnet.Server, tag string, peers int) error {
	lc, err := s.LocalClient()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		st, err := lc.Status(ctx)
		if err == nil && st.Self != nil && st.Self.Tags != nil && slices.Contains(st.Self.Tags.AsSlice(), tag) {
			n := 0
			for _, p := range st.Peer {
				if p.Online && p.Tags != nil && slices.Contains(p.Tags.AsSlice(), tag) {
					n++
				}
			}
			if n >= peers {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("tag %s did not reach the node within 60 s", tag)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ---------------------------------------------------------------------------
// The state machine: a register file, the same as the Rust benchmark's.

type setSlot struct {
	Slot  uint16 `json:"slot"`
	Value string `json:"value"`
}

type registers struct {
	mu      sync.Mutex
	slots   []string
	applied uint64
}

func (r *registers) Apply(l *raft.Log) any {
	var cmd tsconsensus.Command
	if err := json.Unmarshal(l.Data, &cmd); err != nil {
		return tsconsensus.CommandResult{Err: err}
	}
	var set setSlot
	if err := json.Unmarshal(cmd.Args, &set); err != nil {
		return tsconsensus.CommandResult{Err: err}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	slot := int(set.Slot) % 1024
	if len(r.slots) <= slot {
		r.slots = append(r.slots, make([]string, slot+1-len(r.slots))...)
	}
	r.slots[slot] = set.Value
	r.applied++
	result, _ := json.Marshal(r.applied)
	return tsconsensus.CommandResult{Result: result}
}

type registersSnapshot struct{ data []byte }

func (s registersSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s.data); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (registersSnapshot) Release() {}

func (r *registers) Snapshot() (raft.FSMSnapshot, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	data, err := json.Marshal([]any{r.slots, r.applied})
	return registersSnapshot{data}, err
}

func (r *registers) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	var state struct {
		Slots   []string
		Applied uint64
	}
	var raw []json.RawMessage
	if err := json.NewDecoder(rc).Decode(&raw); err != nil || len(raw) != 2 {
		return fmt.Errorf("restore: bad snapshot (%v)", err)
	}
	if err := json.Unmarshal(raw[0], &state.Slots); err != nil {
		return err
	}
	if err := json.Unmarshal(raw[1], &state.Applied); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.slots, r.applied = state.Slots, state.Applied
	return nil
}

func command(slot int, value string) tsconsensus.Command {
	args, _ := json.Marshal(setSlot{Slot: uint16(slot), Value: value})
	return tsconsensus.Command{Name: "set", Args: args}
}

// ---------------------------------------------------------------------------
// Reading raft's state (see the package comment).

func raftOf(c *tsconsensus.Consensus) (*raft.Raft, error) {
	f := reflect.ValueOf(c).Elem().FieldByName("raft")
	if !f.IsValid() || f.Type() != reflect.TypeOf((*raft.Raft)(nil)) {
		return nil, errors.New("tsconsensus.Consensus has no raft *raft.Raft field: update gobench for this tailscale.com version")
	}
	return (*raft.Raft)(unsafe.Pointer(f.Pointer())), nil
}

func statU64(r *raft.Raft, name string) uint64 {
	v, _ := strconv.ParseUint(r.Stats()[name], 10, 64)
	return v
}

// ---------------------------------------------------------------------------
// cluster mode.

type clusterResult struct {
	Kind          string  `json:"kind"`
	Nodes         int     `json:"nodes"`
	Callers       int     `json:"callers"`
	Size          int     `json:"size"`
	Storage       string  `json:"storage"`
	Target        string  `json:"target"`
	Ops           int     `json:"ops"`
	Seconds       float64 `json:"seconds"`
	OpsPerS       float64 `json:"ops_per_s"`
	P50us         float64 `json:"p50_us"`
	P99us         float64 `json:"p99_us"`
	P999us        float64 `json:"p999_us"`
	CPUusPerOp    float64 `json:"cpu_us_per_op"`
	EntriesPerS   float64 `json:"entries_per_s"`
	SwitchesPerOp float64 `json:"switches_per_op"`
	Errors        int     `json:"errors"`
	TermChanges   uint64  `json:"term_changes"`
}

type member struct {
	ts *tsnet.Server
	ip netip.Addr
	c  *tsconsensus.Consensus
	r  *raft.Raft
}

func clusterMode(args []string) error {
	fs := flag.NewFlagSet("cluster", flag.ExitOnError)
	controlURL := fs.String("control-url", "", "local tailnet control URL")
	prefix := fs.String("prefix", "gobench", "hostname prefix of the nodes")
	tag := fs.String("tag", "tag:gobench", "cluster tag")
	nodes := fs.Int("nodes", 3, "cluster size")
	callers := fs.Int("callers", 1, "concurrent callers")
	target := fs.String("target", "leader", "node the callers send to: leader or follower")
	storage := fs.String("storage", "memory", "memory (raft in-memory stores) or durable (BoltDB state dir)")
	duration := fs.Duration("duration", 3*time.Second, "how long the callers run")
	size := fs.Int("size", 100, "command value size in bytes")
	fs.Parse(args)
	if *target != "leader" && *target != "follower" {
		return fmt.Errorf("-target %q: want leader or follower", *target)
	}
	if *storage != "memory" && *storage != "durable" {
		return fmt.Errorf("-storage %q: want memory or durable", *storage)
	}
	if *nodes < 2 && *target == "follower" {
		return errors.New("a follower needs at least 2 nodes")
	}
	tn, err := newTailnet(*controlURL)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "gobench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	members := make([]*member, *nodes)
	var wg sync.WaitGroup
	errs := make([]error, *nodes)
	for i := range members {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			host := fmt.Sprintf("%s-%d", *prefix, i)
			s, ip, err := newNode(ctx, *controlURL, host, filepath.Join(dir, host), true)
			if err != nil {
				errs[i] = err
				return
			}
			members[i] = &member{ts: s, ip: ip}
			errs[i] = tn.setTags(host, []string{*tag})
		}(i)
	}
	wg.Wait()
	// Nothing is stopped on the way out: closing in-process tsnet nodes can
	// hang in netstack (seen with v1.94.1), and main exits right after.
	if err := errors.Join(errs...); err != nil {
		return err
	}
	for _, m := range members {
		if err := waitTagged(ctx, m.ts, *tag, *nodes-1); err != nil {
			return err
		}
	}
	// As tsconsensus's own tests do: the first node bootstraps and leads,
	// then the others join through it.
	for i, m := range members {
		cfg := tsconsensus.DefaultConfig()
		cfg.Raft.LogLevel = "WARN"
		cfg.Raft.LogOutput = os.Stderr
		if *storage == "durable" {
			cfg.StateDirPath = filepath.Join(dir, fmt.Sprintf("raft-%d", i))
			if err := os.MkdirAll(cfg.StateDirPath, 0o700); err != nil {
				return err
			}
		}
		c, err := tsconsensus.Start(ctx, m.ts, &registers{}, tsconsensus.BootstrapOpts{Tag: *tag}, cfg)
		if err != nil {
			return fmt.Errorf("node %d start: %w", i, err)
		}
		m.c = c
		if m.r, err = raftOf(c); err != nil {
			return err
		}
		if i == 0 {
			if err := waitFor(10*time.Second, "node 0 leads", func() bool { return m.r.State() == raft.Leader }); err != nil {
				return err
			}
		}
	}
	if err := waitFor(30*time.Second, "every node has every server", func() bool {
		for _, m := range members {
			f := m.r.GetConfiguration()
			if f.Error() != nil || len(f.Configuration().Servers) != *nodes {
				return false
			}
		}
		return true
	}); err != nil {
		return err
	}
	leader := slices.IndexFunc(members, func(m *member) bool { return m.r.State() == raft.Leader })
	if leader < 0 {
		return errors.New("no leader")
	}
	to := leader
	if *target == "follower" {
		to = (leader + 1) % *nodes
	}
	node := members[to].c
	value := strings.Repeat("x", *size)
	// Warm up connections, as the Rust benchmark does.
	for i := 0; i < min(*callers, 16); i++ {
		if _, err := execute(node, 0, value); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
	}
	lr := members[leader].r
	logBefore := statU64(lr, "last_log_index")
	termBefore := statU64(lr, "term")
	cpuBefore, switchesBefore := cpuTime()
	started := time.Now()
	deadline := started.Add(*duration)
	samples := make([][]time.Duration, *callers)
	var failures atomic.Int64
	for c := 0; c < *callers; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			var lat []time.Duration
			for time.Now().Before(deadline) {
				t := time.Now()
				if _, err := execute(node, c, value); err != nil {
					if failures.Add(1) == 1 {
						log.Printf("execute: %v", err)
					}
					continue
				}
				lat = append(lat, time.Since(t))
			}
			samples[c] = lat
		}(c)
	}
	wg.Wait()
	elapsed := time.Since(started)
	cpuAfter, switchesAfter := cpuTime()
	cpu := cpuAfter - cpuBefore
	var all []time.Duration
	for _, s := range samples {
		all = append(all, s...)
	}
	if len(all) == 0 {
		return fmt.Errorf("no command succeeded (%d failed)", failures.Load())
	}
	slices.Sort(all)
	at := func(q float64) float64 {
		i := min(int(float64(len(all))*q), len(all)-1)
		return float64(all[i].Nanoseconds()) / 1e3
	}
	emit(clusterResult{
		Kind:          "cluster",
		Nodes:         *nodes,
		Callers:       *callers,
		Size:          *size,
		Storage:       *storage,
		Target:        *target,
		Ops:           len(all),
		Seconds:       elapsed.Seconds(),
		OpsPerS:       float64(len(all)) / elapsed.Seconds(),
		P50us:         at(0.50),
		P99us:         at(0.99),
		P999us:        at(0.999),
		CPUusPerOp:    float64(cpu.Microseconds()) / float64(len(all)),
		EntriesPerS:   float64(statU64(lr, "last_log_index")-logBefore) / elapsed.Seconds(),
		SwitchesPerOp: float64(switchesAfter-switchesBefore) / float64(len(all)),
		Errors:        int(failures.Load()),
		TermChanges:   statU64(lr, "term") - termBefore,
	})
	return nil
}

func execute(c *tsconsensus.Consensus, slot int, value string) (json.RawMessage, error) {
	res, err := c.ExecuteCommand(command(slot, value))
	if err != nil {
		return nil, err
	}
	if res.Err != nil {
		return nil, res.Err
	}
	return res.Result, nil
}

func waitFor(timeout time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not within %v", what, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// ---------------------------------------------------------------------------
// transport mode: the same measurements as tests/benches/transport.rs.

// transportResult is the transport mode's line. The CPU times and context
// switches are this process's (voluntary switches only), per round trip.
type transportResult struct {
	Kind             string  `json:"kind"`
	Path             string  `json:"path"`
	MiBPerS          float64 `json:"mib_per_s"`
	RTTp50us         float64 `json:"rtt_p50_us"`
	RTTp99us         float64 `json:"rtt_p99_us"`
	SerialRPS        float64 `json:"serial_rps"`
	CPUPerRTTus      float64 `json:"cpu_per_rtt_us"`
	SwitchesPerRTT   float64 `json:"switches_per_rtt"`
	ParallelRPS      float64 `json:"parallel_rps"`
	CPUPerParallelus float64 `json:"cpu_per_parallel_us"`
}

const message = 64

func transportMode(args []string) error {
	fs := flag.NewFlagSet("transport", flag.ExitOnError)
	controlURL := fs.String("control-url", "", "local tailnet control URL")
	prefix := fs.String("prefix", "gotransport", "hostname prefix of the two nodes")
	quick := fs.Bool("quick", false, "fewer bytes and rounds: the defaults of the flags below become 64 MiB, 1, 1000 and 100")
	bulkBytes := fs.Int("bulk-bytes", 256<<20, "bytes of one bulk transfer (a multiple of 1 MiB)")
	bulkRuns := fs.Int("bulk-runs", 3, "bulk transfers (median reported); 0 skips them")
	rounds := fs.Int("rounds", 5000, "measured echo round trips on one stream")
	parallelRounds := fs.Int("parallel-rounds", 500, "echoes per stream of the 64")
	fs.Parse(args)
	if *quick {
		given := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
		for name, value := range map[string]int{
			"bulk-bytes": 64 << 20, "bulk-runs": 1, "rounds": 1000, "parallel-rounds": 100,
		} {
			if !given[name] {
				fs.Set(name, strconv.Itoa(value))
			}
		}
	}
	if _, err := newTailnet(*controlURL); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "gobench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()
	a, _, err := newNode(ctx, *controlURL, *prefix+"-a", filepath.Join(dir, "a"), true)
	if err != nil {
		return err
	}
	b, bIP, err := newNode(ctx, *controlURL, *prefix+"-b", filepath.Join(dir, "b"), true)
	if err != nil {
		return err
	}
	dial := func(port int) (net.Conn, error) {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		return a.Dial(dctx, "tcp", netip.AddrPortFrom(bIP, uint16(port)).String())
	}

	// Let the nodes find a direct path before measuring, as the Rust side does.
	warm, err := b.Listen("tcp", ":17000")
	if err != nil {
		return err
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
	path := pathOf(ctx, a, bIP)

	// Single stream, one way; median of bulkRuns.
	bulkLn, err := b.Listen("tcp", ":17200")
	if err != nil {
		return err
	}
	var rates []float64
	for range *bulkRuns {
		received := make(chan int, 1)
		go func() {
			c, err := bulkLn.Accept()
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
			return err
		}
		chunk := bytes.Repeat([]byte{0x5a}, 1<<20)
		started := time.Now()
		for range *bulkBytes / len(chunk) {
			if _, err := c.Write(chunk); err != nil {
				return err
			}
		}
		c.(interface{ CloseWrite() error }).CloseWrite()
		if got := <-received; got != *bulkBytes {
			return fmt.Errorf("bulk: received %d of %d bytes", got, *bulkBytes)
		}
		rates = append(rates, float64(*bulkBytes)/(1<<20)/time.Since(started).Seconds())
		c.Close()
	}
	bulkLn.Close()
	slices.Sort(rates)

	echo, err := b.Listen("tcp", ":17201")
	if err != nil {
		return err
	}
	defer echo.Close()
	go func() {
		for {
			c, err := echo.Accept()
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
	}()
	pingPong := func(c net.Conn, n int) ([]time.Duration, error) {
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
	c, err := dial(17201)
	if err != nil {
		return err
	}
	if _, err := pingPong(c, 200); err != nil {
		return err
	}
	cpuBefore, switchesBefore, _ := rusage()
	started := time.Now()
	samples, err := pingPong(c, *rounds)
	if err != nil {
		return err
	}
	elapsed := time.Since(started)
	cpuAfter, switchesAfter, _ := rusage()
	serial := float64(*rounds) / elapsed.Seconds()
	c.Close()
	slices.Sort(samples)

	var conns []net.Conn
	for range 64 {
		c, err := dial(17201)
		if err != nil {
			return err
		}
		if _, err := pingPong(c, 10); err != nil {
			return err
		}
		conns = append(conns, c)
	}
	var wg sync.WaitGroup
	var done atomic.Int64
	parallelCPUBefore, _, _ := rusage()
	started = time.Now()
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := pingPong(c, *parallelRounds)
			if err == nil {
				done.Add(int64(len(s)))
			}
		}()
	}
	wg.Wait()
	parallel := float64(done.Load()) / time.Since(started).Seconds()
	parallelCPUAfter, _, _ := rusage()
	for _, c := range conns {
		c.Close()
	}
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
	var mibPerS float64 // 0 when -bulk-runs 0 skips the transfers
	if len(rates) > 0 {
		mibPerS = rates[len(rates)/2]
	}
	emit(transportResult{
		Kind:             "transport",
		Path:             path,
		MiBPerS:          mibPerS,
		RTTp50us:         us(samples[len(samples)/2]),
		RTTp99us:         us(samples[len(samples)*99/100]),
		SerialRPS:        serial,
		CPUPerRTTus:      us(cpuAfter-cpuBefore) / float64(*rounds),
		SwitchesPerRTT:   float64(switchesAfter-switchesBefore) / float64(*rounds),
		ParallelRPS:      parallel,
		CPUPerParallelus: us(parallelCPUAfter-parallelCPUBefore) / float64(done.Load()),
	})
	return nil
}

// pathOf says how s reaches the peer at ip: directly, or through DERP.
func pathOf(ctx context.Context, s *tsnet.Server, ip netip.Addr) string {
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

// ---------------------------------------------------------------------------
// node mode: one durable tsconsensus node per process, driven like the kv
// example (one line per command, one JSON answer per line).

func nodeMode(args []string) error {
	fs := flag.NewFlagSet("node", flag.ExitOnError)
	controlURL := fs.String("control-url", "", "local tailnet control URL")
	hostname := fs.String("hostname", "", "tailnet hostname")
	stateDir := fs.String("state-dir", "", "tailnet and raft (BoltDB) state")
	localPort := fs.Int("local-port", 0, "line interface port on 127.0.0.1")
	tag := fs.String("tag", "tag:gobench", "cluster tag")
	peers := fs.Int("peers", 0, "tagged online peers to wait for before starting")
	waitStart := fs.Bool("wait-start", false, "start tsconsensus only once a line arrives on stdin")
	fs.Parse(args)
	if *hostname == "" || *stateDir == "" || *localPort <= 0 || *localPort > 65535 {
		return errors.New("node needs -hostname, -state-dir and -local-port")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, _, err := newNode(ctx, *controlURL, *hostname, filepath.Join(*stateDir, "tailscale"), false)
	if err != nil {
		return err
	}
	if err := waitTagged(ctx, s, *tag, *peers); err != nil {
		return err
	}
	// tsconsensus bootstraps a cluster of its own when it finds no peer to
	// join, and a peer refuses a join from a node it does not yet see
	// tagged; whoever starts the nodes orders them through stdin.
	stdin := bufio.NewReader(os.Stdin)
	if *waitStart {
		if _, err := stdin.ReadString('\n'); err != nil {
			return fmt.Errorf("waiting for the start line: %w", err)
		}
	}
	cfg := tsconsensus.DefaultConfig()
	cfg.Raft.LogLevel = "WARN"
	cfg.Raft.LogOutput = os.Stderr
	cfg.StateDirPath = filepath.Join(*stateDir, "raft")
	if err := os.MkdirAll(cfg.StateDirPath, 0o700); err != nil {
		return err
	}
	c, err := tsconsensus.Start(ctx, s, &registers{}, tsconsensus.BootstrapOpts{Tag: *tag}, cfg)
	if err != nil {
		return err
	}
	r, err := raftOf(c)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", *localPort))
	if err != nil {
		return err
	}
	defer ln.Close()
	log.Printf("node %s ready; line interface on %s", *hostname, ln.Addr())
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go serveLines(conn, c, r)
		}
	}()
	// Like the kv example with --exit-on-stdin-eof; the process exits
	// without stopping the node, as a crash would.
	io.Copy(io.Discard, stdin)
	return nil
}

const maxLine = 64 << 10

// serveLines answers "put <key> <value>" and "status" in the kv example's
// answer shapes ({"ok": ...} or {"error": "..."}).
func serveLines(conn net.Conn, c *tsconsensus.Consensus, r *raft.Raft) {
	defer conn.Close()
	in := bufio.NewScanner(conn)
	in.Buffer(make([]byte, 4096), maxLine)
	out := bufio.NewWriter(conn)
	for in.Scan() {
		var answer any
		words := strings.Fields(in.Text())
		switch {
		case len(words) == 3 && words[0] == "put":
			// The key picks a slot of the register file.
			var slot int
			for _, b := range []byte(words[1]) {
				slot = (slot*31 + int(b)) % 1024
			}
			if res, err := execute(c, slot, words[2]); err != nil {
				answer = map[string]any{"error": err.Error()}
			} else {
				answer = map[string]any{"ok": res}
			}
		case len(words) == 1 && words[0] == "status":
			answer = map[string]any{"ok": map[string]any{"metrics": metrics(r)}}
		default:
			answer = map[string]any{"error": fmt.Sprintf("unknown command %q", in.Text())}
		}
		b, _ := json.Marshal(answer)
		out.Write(append(b, '\n'))
		if out.Flush() != nil {
			return
		}
	}
}

// metrics has the kv example's field names for what the benchmark reads.
func metrics(r *raft.Raft) map[string]any {
	role := strings.ToLower(r.State().String())
	var leader any
	if _, id := r.LeaderWithID(); id != "" {
		leader = string(id)
	}
	voters := 0
	if f := r.GetConfiguration(); f.Error() == nil {
		for _, s := range f.Configuration().Servers {
			if s.Suffrage == raft.Voter {
				voters++
			}
		}
	}
	return map[string]any{
		"role":           role,
		"term":           statU64(r, "term"),
		"leader":         leader,
		"voters":         voters,
		"last_log_index": statU64(r, "last_log_index"),
	}
}
