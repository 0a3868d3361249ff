// Command tailnet runs a complete Tailscale network on 127.0.0.1 for tests and
// the demo: a control server (tailscale.com/tstest/integration/testcontrol),
// a DERP relay and a STUN server, plus an admin API to list nodes and to set
// their tags. It needs no account and no internet.
//
// On start it prints one JSON line on stdout:
//
//	{"control_url":"http://127.0.0.1:P","admin_url":"http://127.0.0.1:P/__admin"}
//
// and it exits when its standard input closes, so it never outlives the
// process that started it. Logs go to stderr.
//
// Admin API (JSON):
//
//	GET  /__admin/nodes           every node: hostname, stable_id, node_key, ips, tags, online
//	POST /__admin/tags            {"hostname": "h", "tags": ["tag:x"]} sets the tags of every
//	                              node with that hostname ([] clears them) and pushes a new
//	                              netmap to every node; answers with the updated nodes
//
// A node is online while it holds a connection to the DERP server (every
// node keeps one to its home region), which testcontrol cannot tell by
// itself. A reconcile loop applies online changes and re-asserts the tags
// set through the admin API, then pushes new netmaps to every node.
package main

import (
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"tailscale.com/derp/derpserver"
	"tailscale.com/net/netns"
	"tailscale.com/net/stun/stuntest"
	"tailscale.com/tailcfg"
	"tailscale.com/tstest/integration/testcontrol"
	"tailscale.com/types/key"
	"tailscale.com/types/logger"
	"tailscale.com/types/nettype"
	"tailscale.com/types/ptr"
)

// reconcileEvery is how often node liveness and admin tags are re-checked.
const reconcileEvery = 50 * time.Millisecond

// maxAdminBody bounds admin request bodies.
const maxAdminBody = 64 << 10

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address for the control server and admin API")
	verbose := flag.Bool("v", false, "log control-server activity to stderr")
	flag.Parse()
	log.SetOutput(os.Stderr)
	log.SetPrefix("tailnet: ")

	// This process only talks to 127.0.0.1.
	netns.SetEnabled(false)

	logf := logger.Discard
	if *verbose {
		logf = log.Printf
	}
	derpMap, derp := runDERPAndSTUN(logf)

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("listen: %v", err)
	}
	baseURL := "http://" + ln.Addr().String()
	control := &testcontrol.Server{
		DERPMap:         derpMap,
		ExplicitBaseURL: baseURL,
		MagicDNSDomain:  "tail-scale.ts.net",
		DNSConfig:       &tailcfg.DNSConfig{Proxied: true},
		Logf:            logf,
		DefaultNodeCapabilities: &tailcfg.NodeCapMap{
			tailcfg.NodeAttrDisableCaptivePortalDetection: nil,
			tailcfg.NodeAttrDisableUPnP:                   nil,
		},
	}

	tn := &tailnet{control: control, derp: derp, tags: map[key.NodePublic][]string{}}
	go func() {
		for range time.Tick(reconcileEvery) {
			tn.reconcile()
		}
	}()

	mux := http.NewServeMux()
	mux.HandleFunc("GET /__admin/nodes", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, listNodes(control))
	})
	mux.HandleFunc("POST /__admin/tags", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Hostname string   `json:"hostname"`
			Tags     []string `json:"tags"`
		}
		dec := json.NewDecoder(io.LimitReader(r.Body, maxAdminBody))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil || req.Hostname == "" {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": fmt.Sprintf("want {\"hostname\": \"...\", \"tags\": [...]}: %v", err)})
			return
		}
		updated := tn.setTags(req.Hostname, req.Tags)
		if len(updated) == 0 {
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "no node with hostname " + req.Hostname})
			return
		}
		writeJSON(w, http.StatusOK, updated)
	})
	// Paths testcontrol does not know make it panic; keep unknown admin
	// paths away from it.
	mux.HandleFunc("/__admin/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "unknown admin endpoint " + r.Method + " " + r.URL.Path})
	})
	mux.Handle("/", control)

	go func() {
		if err := http.Serve(ln, mux); err != nil {
			log.Fatalf("serve: %v", err)
		}
	}()

	ready, _ := json.Marshal(map[string]string{
		"control_url": baseURL,
		"admin_url":   baseURL + "/__admin",
	})
	os.Stdout.Write(append(ready, '\n'))

	// Stay up until whoever started us goes away.
	io.Copy(io.Discard, os.Stdin)
}

type nodeInfo struct {
	Hostname string   `json:"hostname"`
	StableID string   `json:"stable_id"`
	NodeKey  string   `json:"node_key"`
	IPs      []string `json:"ips"`
	Tags     []string `json:"tags"`
	Online   bool     `json:"online"`
}

func describe(n *tailcfg.Node) nodeInfo {
	info := nodeInfo{
		Hostname: n.Hostinfo.Hostname(),
		StableID: string(n.StableID),
		NodeKey:  n.Key.String(),
		IPs:      []string{},
		Tags:     append([]string{}, n.Tags...),
		Online:   n.Online != nil && *n.Online,
	}
	for _, a := range n.Addresses {
		info.IPs = append(info.IPs, a.Addr().String())
	}
	return info
}

func listNodes(control *testcontrol.Server) []nodeInfo {
	out := []nodeInfo{}
	for _, n := range control.AllNodes() {
		out = append(out, describe(n))
	}
	return out
}

// tailnet holds what the admin API asked for, which reconcile keeps true.
type tailnet struct {
	control *testcontrol.Server
	derp    *derpserver.Server

	mu   sync.Mutex
	tags map[key.NodePublic][]string // tags set through the admin API
}

// setTags records the tags for every node called hostname and applies them
// at once. It answers with the nodes it changed.
func (tn *tailnet) setTags(hostname string, tags []string) []nodeInfo {
	tn.mu.Lock()
	for _, n := range tn.control.AllNodes() {
		if n.Hostinfo.Hostname() == hostname {
			tn.tags[n.Key] = append([]string{}, tags...)
		}
	}
	tn.mu.Unlock()
	tn.reconcile()
	updated := []nodeInfo{}
	for _, n := range tn.control.AllNodes() {
		if n.Hostinfo.Hostname() == hostname {
			updated = append(updated, describe(n))
		}
	}
	return updated
}

// reconcile makes every node's tags and online state what they should be,
// and pushes a new netmap to every node if anything changed. Re-asserting the
// tags on every round undoes a map request that wrote back an older copy of
// the node.
func (tn *tailnet) reconcile() {
	tn.mu.Lock()
	defer tn.mu.Unlock()
	var changed []key.NodePublic
	for _, listed := range tn.control.AllNodes() {
		// Re-read each node just before changing it: a map request may
		// have stored a newer copy (endpoints, disco key) since the list
		// was taken, and writing back the listed copy would undo it.
		n := tn.control.Node(listed.Key)
		if n == nil {
			continue
		}
		dirty := false
		if want, ok := tn.tags[n.Key]; ok && !slices.Equal(want, n.Tags) {
			n.Tags = append([]string{}, want...)
			dirty = true
		}
		online := tn.derp.IsClientConnectedForTest(n.Key)
		if n.Online == nil || *n.Online != online {
			n.Online = ptr.To(online)
			dirty = true
		}
		if dirty {
			tn.control.UpdateNode(n)
			changed = append(changed, n.Key)
		}
	}
	if len(changed) > 0 {
		// UpdateNode stores the node but tells nobody (v1.94.1); any call
		// that runs updateLocked over all nodes pushes new netmaps.
		tn.control.SetJailed(changed[0], changed[0], false)
	}
}

// runDERPAndSTUN starts a DERP server (TLS, self-signed, trusted through
// InsecureForTests) and a STUN server on 127.0.0.1, as
// integration.RunDERPAndSTUN does, but keeps the DERP server so its
// connected clients can be read.
func runDERPAndSTUN(logf logger.Logf) (*tailcfg.DERPMap, *derpserver.Server) {
	d := derpserver.New(key.NewNode(), logf)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatalf("DERP listen: %v", err)
	}
	httpsrv := httptest.NewUnstartedServer(derpserver.Handler(d))
	httpsrv.Listener.Close()
	httpsrv.Listener = ln
	httpsrv.Config.ErrorLog = logger.StdLogger(logf)
	httpsrv.Config.TLSNextProto = make(map[string]func(*http.Server, *tls.Conn, http.Handler))
	httpsrv.StartTLS()
	stunAddr, _ := stuntest.ServeWithPacketListener(fakeTB{}, nettype.Std{})
	derpMap := &tailcfg.DERPMap{
		Regions: map[int]*tailcfg.DERPRegion{
			1: {
				RegionID:   1,
				RegionCode: "local",
				Nodes: []*tailcfg.DERPNode{{
					Name:             "local1",
					RegionID:         1,
					HostName:         "127.0.0.1",
					IPv4:             "127.0.0.1",
					IPv6:             "none",
					STUNPort:         stunAddr.Port,
					DERPPort:         ln.Addr().(*net.TCPAddr).Port,
					InsecureForTests: true,
					STUNTestIP:       "127.0.0.1",
				}},
			},
		},
	}
	return derpMap, d
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// fakeTB satisfies testing.TB for integration.RunDERPAndSTUN outside a test,
// as tailscale.com/cmd/testcontrol does.
type fakeTB struct{ *testing.T }

func (fakeTB) Cleanup(func())               {}
func (fakeTB) Error(args ...any)            { log.Fatal(args...) }
func (fakeTB) Errorf(f string, args ...any) { log.Fatalf(f, args...) }
func (fakeTB) Fail()                        { log.Fatal("failed") }
func (fakeTB) FailNow()                     { log.Fatal("failed") }
func (fakeTB) Failed() bool                 { return false }
func (fakeTB) Fatal(args ...any)            { log.Fatal(args...) }
func (fakeTB) Fatalf(f string, args ...any) { log.Fatalf(f, args...) }
func (fakeTB) Helper()                      {}
func (fakeTB) Log(args ...any)              {}
func (fakeTB) Logf(string, ...any)          {}
func (fakeTB) Name() string                 { return "tailnet" }
func (fakeTB) Setenv(string, string)        { log.Fatal("Setenv is not supported") }
func (fakeTB) Skip(args ...any)             { log.Fatal(args...) }
func (fakeTB) SkipNow()                     { log.Fatal("skipped") }
func (fakeTB) Skipf(f string, args ...any)  { log.Fatalf(f, args...) }
func (fakeTB) Skipped() bool                { return false }
func (fakeTB) TempDir() string              { log.Fatal("TempDir is not supported"); return "" }
