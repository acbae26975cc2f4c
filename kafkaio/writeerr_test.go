package kafkaio_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/segmentd/segmentd/embedded"
	"github.com/segmentd/segmentd/internal/testenv"
	"github.com/segmentd/segmentd/kafkaio"
	"github.com/segmentd/segmentd/processor"
)

// TestWriteFailureErrorIsBounded: a write of many records that fails because the broker went away must
// give an error of a bounded size: segmentd logs it ("batch failed"),
// segmentctl prints it. kafka-go's WriteErrors holds one error per
// message, and its text repeats each one.
func TestWriteFailureErrorIsBounded(t *testing.T) {
	srv, err := embedded.Start(embedded.Options{Kafka: true, Ephemeral: true})
	if err != nil {
		t.Fatal(err)
	}
	brokers := srv.KafkaBrokers()
	topic := testenv.UniqueName(t, "t")
	testenv.CreateTopic(t, brokers, topic, 4)
	w := kafkaio.NewWriter(brokers)
	defer kafkaio.CloseWriter(w)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := kafkaio.NewProducer(w)
	if err := p.Produce(ctx, []processor.Record{{Topic: topic, Key: []byte("k"), Value: []byte("v")}}); err != nil {
		t.Fatal(err)
	}
	srv.Close() // the broker goes away; the writer knows the topic's partitions
	var rs []processor.Record
	for i := range 2000 {
		rs = append(rs, processor.Record{Topic: topic, Key: []byte(fmt.Sprint("u", i)), Value: []byte("v")})
	}
	err = p.Produce(ctx, rs)
	if err == nil {
		t.Fatal("write to a closed broker succeeded")
	}
	if n := len(err.Error()); n > 4096 {
		t.Errorf("error text of %d bytes for one failed write: %.300s…", n, err.Error())
	}
}
