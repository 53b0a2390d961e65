// Package cli is the queue-janitor command: its subcommands, its one
// configuration struct filled from flags and environment variables, and the
// wiring of the service. main calls [Run]; end-to-end tests call the same
// Run in-process.
package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"sort"
	"strings"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/example/queue-janitor/telemetry"
)

// Version is stamped at build time with
// -ldflags "-X github.com/example/queue-janitor/cmd/queue-janitor/cli.Version=v1.2.3".
var Version = ""

// ErrUsage marks an error in how the command was called (exit status 2).
var ErrUsage = errors.New("usage")

// Hooks let a test observe the service from inside: span processors (an
// in-memory recorder) and metric readers (a manual reader) are added to the
// providers that the OTEL_* environment configures.
type Hooks struct {
	SpanProcessors []sdktrace.SpanProcessor
	MetricReaders  []sdkmetric.Reader
}

// cmdIO is what a command reads and writes. stdout and stderr mask the
// run's secrets.
type cmdIO struct {
	getenv         func(string) string
	stdout, stderr io.Writer
	hooks          Hooks
	redact         *telemetry.Redactor
}

// command is one subcommand.
type command struct {
	summary string
	run     func(ctx context.Context, args []string, cio cmdIO) error
}

func commands() map[string]command {
	return map[string]command{
		"serve":       {"run the service: consume job-status events and clean or flush job queues", runServe},
		"demo":        {"replay the incident that motivated queue-janitor on an embedded NATS server", runDemo},
		"version":     {"print the version", runVersion},
		"ls":          {"list job queues with what the service knows and would do", runLs},
		"sweep":       {"run one reconciler pass now (--dry-run to only look)", runSweep},
		"clean":       {"clean the queues of the given jobs now", runClean},
		"flush":       {"flush a job's leftover queue now, as a restart would", runFlush},
		"emit":        {"publish a job-status event, as the backend would", runEmit},
		"doctor":      {"check a deployment: connection, server, streams, bucket, permissions, naming; say what to fix", runDoctor},
		"healthcheck": {"probe the local serve's /readyz (for container health checks)", runHealthcheck},
		"dev-nats":    {"run a JetStream server alone, without the service (development and tests)", runDevNATS},
	}
}

// Run runs the command named by args[0]. getenv reads the environment
// (os.Getenv in production). It returns flag.ErrHelp after printing help,
// and an error wrapping ErrUsage when the command line is wrong.
func Run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	return RunWithHooks(ctx, args, getenv, stdout, stderr, Hooks{})
}

// RunWithHooks is Run with test hooks.
//
// No secret of the connection settings (a password, a token, the user
// information of a URL, an NKey seed) appears in what Run writes, in the
// error it returns, or in the spans it exports: all of it goes through one
// redactor. A panic in the command is returned as an error, redacted too.
func RunWithHooks(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer, hooks Hooks) (err error) {
	red := redactorFor(args, getenv)
	cio := cmdIO{getenv: getenv, stdout: red.Writer(stdout), stderr: red.Writer(stderr), hooks: hooks, redact: red}
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("internal error (a bug: please report it with this message): panic: %v\n%s", p, debug.Stack())
		}
		err = red.Error(err)
	}()
	return runCommand(ctx, args, cio)
}

func runCommand(ctx context.Context, args []string, cio cmdIO) error {
	stdout := cio.stdout
	cmds := commands()
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" || args[0] == "-help" {
		if len(args) > 1 {
			if c, ok := cmds[args[1]]; ok {
				return c.run(ctx, []string{"--help"}, cio)
			}
		}
		usage(stdout, cmds)
		if len(args) == 0 {
			return fmt.Errorf("%w: no command given", ErrUsage)
		}
		return flag.ErrHelp
	}
	c, ok := cmds[args[0]]
	if !ok {
		names := make([]string, 0, len(cmds))
		for n := range cmds {
			names = append(names, n)
		}
		sort.Strings(names)
		return fmt.Errorf("%w: unknown command %q%s\nsee 'queue-janitor --help' for the commands", ErrUsage, args[0], didYouMean(args[0], names))
	}
	return c.run(ctx, args[1:], cio)
}

func usage(w io.Writer, cmds map[string]command) {
	names := make([]string, 0, len(cmds))
	for n := range cmds {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Fprintf(w, `queue-janitor keeps a job backend's JetStream task queues in step with its jobs:
it deletes a finished job's stream and consumers, and flushes leftovers before a
restarted job publishes a new round of tasks.

Usage: queue-janitor <command> [flags]

Commands:
`)
	for _, n := range names {
		fmt.Fprintf(w, "  %-12s %s\n", n, cmds[n].summary)
	}
	fmt.Fprintf(w, "\nRun 'queue-janitor <command> --help' for a command's flags and environment variables.\n")
}

// parseFlags parses args into f, printing help for --help and turning a bad
// flag into a usage error: the error, then one line pointing to --help.
func parseFlags(f *flagSet, args []string, cio cmdIO) error {
	err := f.parse(args, cio.getenv)
	switch {
	case errors.Is(err, flag.ErrHelp):
		f.usage(cio.stdout)
		return flag.ErrHelp
	case err != nil:
		return fmt.Errorf("%w: %s: %w%s\nsee 'queue-janitor %s --help' for its flags", ErrUsage, f.name, err, f.suggestFlag(err), f.name)
	}
	if len(f.positional) > 0 && f.args == "" {
		return fmt.Errorf("%w: %s takes no arguments, got %q", ErrUsage, f.name, strings.Join(f.positional, " "))
	}
	return nil
}

func runVersion(_ context.Context, args []string, cio cmdIO) error {
	f := newFlagSet("version", "", "Print the version.")
	if err := parseFlags(f, args, cio); err != nil {
		return err
	}
	fmt.Fprintf(cio.stdout, "queue-janitor %s\n", version())
	return nil
}

// version is the stamped version, or the module version, or "dev".
func version() string {
	if Version != "" {
		return Version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// replicaID names this process in leases and connection names; it is
// unique per process start.
func replicaID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown"
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b))
}
