package main

// The one call from Go into the caller's code: a function pointer given to
// tailscale_conn_attach. Kept in a file without //export, whose preamble may
// define C functions.

/*
#include <stdint.h>

typedef void (*tailscale_conn_notify_fn)(void *ctx, uint32_t events);

static void tailscale_call_notify(void *fn, void *ctx, uint32_t events) {
	((tailscale_conn_notify_fn)fn)(ctx, events);
}
*/
import "C"

import "unsafe"

func callNotify(fn, ctx unsafe.Pointer, events uint32) {
	C.tailscale_call_notify(fn, ctx, C.uint32_t(events))
}
