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
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"testing"

	"tailscale.com/net/netns"
	"tailscale.com/tailcfg"
	"tailscale.com/tstest/integration"
	"tailscale.com/tstest/integration/testcontrol"
	"tailscale.com/types/logger"
	"tailscale.com/types/ptr"
)

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
	derpMap := integration.RunDERPAndSTUN(fakeTB{}, logf, "127.0.0.1")

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
		updated := setTags(control, req.Hostname, req.Tags)
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

// setTags sets the tags of every node called hostname, marks it online, and
// makes control send every node a fresh netmap.
func setTags(control *testcontrol.Server, hostname string, tags []string) []nodeInfo {
	updated := []nodeInfo{}
	for _, n := range control.AllNodes() {
		if n.Hostinfo.Hostname() != hostname {
			continue
		}
		n.Tags = append([]string{}, tags...)
		n.Online = ptr.To(true)
		control.UpdateNode(n)
		// UpdateNode stores the node but tells nobody (v1.94.1); any call
		// that runs updateLocked over all nodes pushes new netmaps.
		control.SetJailed(n.Key, n.Key, false)
		updated = append(updated, describe(n))
	}
	return updated
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
