package testenv

import "time"

// Poll is how long Eventually waits between two checks of its condition.
const Poll = 20 * time.Millisecond

// Eventually reports whether cond holds within timeout, checking it every
// Poll. It is EventuallyEvery with that interval.
func Eventually(timeout time.Duration, cond func() bool) bool {
	return EventuallyEvery(timeout, Poll, cond)
}

// EventuallyEvery reports whether cond holds within timeout, checking it
// every poll. It checks cond at once, and once more after the timeout has
// passed, so that a condition which comes true as the time runs out is not
// missed; it returns as soon as cond holds. cond runs on the caller's
// goroutine, so it may call t.Fatal, and whatever it stores is what the
// caller reads after the wait.
func EventuallyEvery(timeout, poll time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(poll)
	}
}
