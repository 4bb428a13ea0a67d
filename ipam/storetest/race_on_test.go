//go:build race

package storetest

// raceEnabled says that the tests run under the race detector.
const raceEnabled = true
