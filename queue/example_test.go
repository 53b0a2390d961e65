package queue_test

import (
	"fmt"

	"github.com/example/queue-janitor/queue"
)

// ExampleNames shows the backend's default names for job 42, and that only
// names built from a valid id are taken for job streams.
func ExampleNames() {
	names := queue.DefaultNames()
	id, err := queue.ParseJobID("42")
	if err != nil {
		panic(err)
	}
	fmt.Println(names.StreamName(id))
	fmt.Println(names.SubjectName(id))
	fmt.Println(names.ConsumerName(id))
	fmt.Println(names.AdvisoryStream + "/" + names.DeadLetterConsumerName(id))
	fmt.Println(names.SubjectFilter())
	for _, stream := range []string{"job_42", "job_042", "job_42_archive", "advisories"} {
		job, ok := names.JobFromStream(stream)
		fmt.Println(stream, job, ok)
	}
	// Output:
	// job_42
	// job.42.tasks
	// job-42-consumer
	// advisories/job-42-dlq
	// job.*.tasks
	// job_42 42 true
	// job_042 0 false
	// job_42_archive 0 false
	// advisories 0 false
}
