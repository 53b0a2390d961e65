package cli

import "testing"

func TestCountPlural(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		n    int
		noun string
		want string
	}{
		{0, "job stream", "0 job streams"},
		{1, "job stream", "1 job stream"},
		{2, "message", "2 messages"},
		{1, "message", "1 message"},
	} {
		if got := count(tc.n, tc.noun); got != tc.want {
			t.Errorf("count(%d, %q) = %q, want %q", tc.n, tc.noun, got, tc.want)
		}
	}
	if got := count(uint64(1), "message") + " discarded"; got != "1 message discarded" {
		t.Errorf("count(uint64(1)) = %q", got)
	}
}
