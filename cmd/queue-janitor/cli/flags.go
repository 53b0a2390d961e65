package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// flagSet is a flag.FlagSet in which every flag has an environment variable.
// A flag given on the command line wins over its variable, which wins over
// the default.
type flagSet struct {
	fs     *flag.FlagSet
	name   string
	about  string
	args   string
	envOf  map[string]string
	groups []flagGroup
	// positional holds the arguments that are not flags, wherever they
	// stood on the command line.
	positional []string
	// set are the flags given on the command line or by their variable.
	set map[string]bool
}

type flagGroup struct {
	title string
	names []string
}

func newFlagSet(name, args, about string) *flagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return &flagSet{fs: fs, name: name, about: about, args: args, envOf: map[string]string{}}
}

// group starts a titled section of the help text.
func (f *flagSet) group(title string) { f.groups = append(f.groups, flagGroup{title: title}) }

func (f *flagSet) add(name, env string) {
	f.envOf[name] = env
	if len(f.groups) == 0 {
		f.group("Options")
	}
	g := &f.groups[len(f.groups)-1]
	g.names = append(g.names, name)
}

func (f *flagSet) String(p *string, name, env, usage string) {
	f.fs.StringVar(p, name, *p, usage)
	f.add(name, env)
}

func (f *flagSet) Bool(p *bool, name, env, usage string) {
	f.fs.BoolVar(p, name, *p, usage)
	f.add(name, env)
}

func (f *flagSet) Int(p *int, name, env, usage string) {
	f.fs.Var(intValue{p}, name, usage)
	f.add(name, env)
}

func (f *flagSet) Duration(p *time.Duration, name, env, usage string) {
	f.fs.Var(durationValue{p}, name, usage)
	f.add(name, env)
}

// durationValue is a duration flag whose error says what is wrong: a
// missing unit (--older-than 5) above all.
type durationValue struct{ p *time.Duration }

func (d durationValue) Set(s string) error {
	v, err := time.ParseDuration(strings.TrimSpace(s))
	if err == nil {
		*d.p = v
		return nil
	}
	if _, ferr := strconv.ParseFloat(strings.TrimSpace(s), 64); ferr == nil {
		return fmt.Errorf("the duration has no unit: write %ss, %sm or %sh, for example", s, s, s)
	}
	return errors.New("not a duration: want a number with a unit (ms, s, m, h), e.g. 30s, 5m, 1h30m")
}

func (d durationValue) String() string {
	if d.p == nil {
		return time.Duration(0).String()
	}
	return d.p.String()
}

// intValue is an integer flag whose error says what it wants.
type intValue struct{ p *int }

func (i intValue) Set(s string) error {
	v, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		return errors.New("not a whole number")
	}
	*i.p = v
	return nil
}

func (i intValue) String() string {
	if i.p == nil {
		return "0"
	}
	return strconv.Itoa(*i.p)
}

// parse reads args, flags and positional arguments in any order (`clean 7
// --force` as well as `clean --force 7`), then the environment for every
// flag not given.
func (f *flagSet) parse(args []string, getenv func(string) string) error {
	for {
		if err := f.fs.Parse(args); err != nil {
			return err
		}
		rest := f.fs.Args()
		if len(rest) == 0 {
			break
		}
		f.positional = append(f.positional, rest[0])
		args = rest[1:]
	}
	given := map[string]bool{}
	f.fs.Visit(func(fl *flag.Flag) { given[fl.Name] = true })
	for name, env := range f.envOf {
		if given[name] || env == "" {
			continue
		}
		if v, ok := lookup(getenv, env); ok {
			if err := f.fs.Set(name, v); err != nil {
				return fmt.Errorf("environment variable %s=%q (for --%s): %w", env, v, name, err)
			}
			given[name] = true
		}
	}
	f.set = given
	return nil
}

// isSet reports whether the flag was given, on the command line or by its
// environment variable, rather than left at its default.
func (f *flagSet) isSet(name string) bool { return f.set[name] }

// suggestFlag is a "did you mean" for an unknown flag, or "".
func (f *flagSet) suggestFlag(err error) string {
	const unknown = "flag provided but not defined: -"
	msg := err.Error()
	if !strings.HasPrefix(msg, unknown) {
		return ""
	}
	var names []string
	f.fs.VisitAll(func(fl *flag.Flag) { names = append(names, fl.Name) })
	if s := didYouMean(strings.TrimPrefix(msg, unknown), names); s != "" {
		return strings.Replace(s, `"`, `"--`, 1)
	}
	return ""
}

func lookup(getenv func(string) string, key string) (string, bool) {
	v := getenv(key)
	return v, v != ""
}

// usage writes the help text: what the command does, then every flag with
// its variable and default, by group.
func (f *flagSet) usage(w io.Writer) {
	fmt.Fprintf(w, "Usage: queue-janitor %s [flags] %s\n\n%s\n", f.name, f.args, f.about)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, g := range f.groups {
		fmt.Fprintf(tw, "\n%s:\n", g.title)
		for _, name := range g.names {
			fl := f.fs.Lookup(name)
			kind, _ := flag.UnquoteUsage(fl)
			head := "  --" + name
			if kind != "" {
				head += " " + kind
			}
			def := fl.DefValue
			if def == "" {
				def = `""`
			}
			if _, isBool := fl.Value.(interface{ IsBoolFlag() bool }); isBool && kind == "" {
				head = "  --" + name
			}
			fmt.Fprintf(tw, "%s\t%s\t[%s] (default %s)\n", head, fl.Usage, f.envOf[name], def)
		}
	}
	_ = tw.Flush()
}

// splitList splits a comma-separated list, dropping blanks.
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
