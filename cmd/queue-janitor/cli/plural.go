package cli

import "fmt"

// count says n things: "1 job stream", "2 job streams". noun is singular;
// its plural adds an s.
func count[T ~int | ~int64 | ~uint64](n T, noun string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, noun)
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
