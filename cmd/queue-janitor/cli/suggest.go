package cli

import (
	"fmt"
	"strings"
)

// didYouMean returns `; did you mean "x"?` for the option closest to s, or
// "" when none is close: within a third of its length, at least 1 and at
// most 3 edits.
func didYouMean(s string, options []string) string {
	best, bestDist := "", 0
	for _, o := range options {
		d := editDistance(strings.ToLower(s), strings.ToLower(o))
		if best == "" || d < bestDist {
			best, bestDist = o, d
		}
	}
	if best == "" || bestDist > min(3, max(1, len(best)/3)) {
		return ""
	}
	return fmt.Sprintf("; did you mean %q?", best)
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// choice checks that the value of a flag is one of options; "" is allowed
// (no filter).
func choice(flagName, value string, options ...string) error {
	if value == "" || oneOf(value, options...) {
		return nil
	}
	return fmt.Errorf("%w: --%s %q: want %s%s", ErrUsage, flagName, value, orList(options), didYouMean(value, options))
}

// orList renders a, b or c.
func orList(options []string) string {
	if len(options) < 2 {
		return strings.Join(options, "")
	}
	return strings.Join(options[:len(options)-1], ", ") + " or " + options[len(options)-1]
}
