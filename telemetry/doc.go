// Package telemetry sets up what makes queue-janitor observable: the
// OpenTelemetry tracer and meter providers (configured from the standard
// OTEL_* environment), the service's metric instruments, zerolog loggers
// that stamp trace_id and span_id on every line, the CloudEvents
// distributed-tracing extension, and the health and metrics HTTP listener.
//
// Nothing here is a package global: every provider, logger and instrument
// is returned to the caller and passed down explicitly. The one exception
// stands in for OpenTelemetry's own global: the handler of its errors (an
// export that failed), which routes each to the logger of the Setup it
// comes from.
package telemetry
