package cli

import (
	"context"
	"errors"
	"io"
)

func runDemo(context.Context, []string, func(string) string, io.Writer, io.Writer) error {
	return errors.New("demo: not yet")
}
