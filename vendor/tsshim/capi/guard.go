package main

import (
	"fmt"
	"runtime/debug"
)

// protect runs f and turns a panic into an error. Every export runs its whole
// body, including writes through C pointers, inside protect: an unrecovered
// Go panic would abort the Rust process that embeds us.
func protect(f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("internal error (recovered Go panic): %v\n%s", r, debug.Stack())
		}
	}()
	return f()
}
