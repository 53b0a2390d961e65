// Command queue-janitor keeps a job backend's NATS JetStream task queues in
// step with its jobs' lives. See the README, or run queue-janitor --help.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/example/queue-janitor/cmd/queue-janitor/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := cli.Run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		os.Exit(0)
	case errors.Is(err, cli.ErrUsage):
		fmt.Fprintln(os.Stderr, "queue-janitor:", err)
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "queue-janitor:", err)
		os.Exit(1)
	}
}
