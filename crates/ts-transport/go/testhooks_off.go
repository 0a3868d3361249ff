//go:build !tsnetffi_testhooks

package main

// testHook marks a place where tests can make the shim panic. In the archive
// every program links it does nothing (and compiles to nothing); the test
// version is in testhooks_on.go.
func testHook(*server, string) {}
