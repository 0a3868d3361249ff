//go:build tsnetffi_testhooks

// Test-only entry points. This file is compiled only when ts-transport's
// `test-hooks` feature builds the archive (go build -tags
// tsnetffi_testhooks); the archive of every other build has neither these
// functions nor the hooks in the shim's code (see testhooks_off.go).

package main

/*
#include <stddef.h>
*/
import "C"

import (
	"runtime"
	"sync"
	"syscall"
)

var hooks struct {
	mu     sync.Mutex
	panics map[*server]map[string]int
}

// testHook panics if a panic was armed at site for srv.
func testHook(srv *server, site string) {
	hooks.mu.Lock()
	armed := hooks.panics[srv][site] > 0
	if armed {
		hooks.panics[srv][site]--
	}
	hooks.mu.Unlock()
	if armed {
		panic("test hook: panic at " + site)
	}
}

// tailscale_testhook_panic makes the next pass of server sd through the hook
// named site panic. Sites: "set" (inside an option setter's locked section),
// "loopback" (inside tailscale_loopback's locked section), "accept" (in a
// listener's accept loop, once a connection is accepted).
//
//export tailscale_testhook_panic
func tailscale_testhook_panic(sd C.int, site *C.char) C.int {
	srv := getServer(sd)
	if srv == nil {
		return C.int(syscall.EBADF)
	}
	name := C.GoString(site)
	hooks.mu.Lock()
	defer hooks.mu.Unlock()
	if hooks.panics == nil {
		hooks.panics = make(map[*server]map[string]int)
	}
	if hooks.panics[srv] == nil {
		hooks.panics[srv] = make(map[string]int)
	}
	hooks.panics[srv][name]++
	return 0
}

// tailscale_testhook_blocked_go_thread starts a goroutine locked to a thread
// of Go's own and blocks it in a read(2) on a pipe, on the goroutine's
// stack. It writes that thread's id to tid_out and the pipe's write end to
// release_out; closing it ends the goroutine and the thread.
//
//export tailscale_testhook_blocked_go_thread
func tailscale_testhook_blocked_go_thread(tidOut *C.int, releaseOut *C.int) C.int {
	var p [2]int
	if err := syscall.Pipe2(p[:], syscall.O_CLOEXEC); err != nil {
		return C.int(err.(syscall.Errno))
	}
	tids := make(chan int)
	go func() {
		// Never unlocked: the thread exits with the goroutine.
		runtime.LockOSThread()
		tids <- syscall.Gettid()
		buf := make([]byte, 1)
		for {
			n, err := syscall.Read(p[0], buf)
			if err == syscall.EINTR {
				continue
			}
			if n <= 0 || err != nil {
				break
			}
		}
		syscall.Close(p[0])
	}()
	*tidOut = C.int(<-tids)
	*releaseOut = C.int(p[1])
	return 0
}
