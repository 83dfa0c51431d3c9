package ring

import (
	"context"
	"fmt"
	"sync"
	"testing"
)

// benchCapacity is the ring's slot count and the channel's buffer size.
const benchCapacity = 1024

// event is a small payload, similar in size to what a pointer-carrying
// queue would move.
type event struct {
	producer int
	seq      int
}

// mpsc is one queue implementation under the MPSC benchmark.
type mpsc interface {
	// produce enqueues items, waiting for space.
	produce(items []event)
	// consume dequeues until it has seen n items.
	consume(n int)
}

type ringQueue struct{ r *Ring[event] }

func (q ringQueue) produce(items []event) {
	if len(items) == 1 {
		if _, err := q.r.Put(context.Background(), items); err != nil {
			panic(err)
		}
		return
	}
	if err := q.r.PutAll(context.Background(), items); err != nil {
		panic(err)
	}
}

func (q ringQueue) consume(n int) {
	dst := make([]event, 256)
	for n > 0 {
		k := q.r.Read(dst)
		if k == 0 {
			if err := q.r.Wait(context.Background()); err != nil {
				panic(err)
			}
			continue
		}
		n -= k
	}
}

type chanQueue struct{ c chan event }

func (q chanQueue) produce(items []event) {
	for _, it := range items {
		q.c <- it
	}
}

func (q chanQueue) consume(n int) {
	for range n {
		<-q.c
	}
}

// BenchmarkMPSC compares the ring with a buffered channel of the same
// capacity on the same workload: P producers enqueue b.N events in total in
// operations of `batch` events; one consumer dequeues them. ns/op is per
// event. The channel has no batch operation, so its batch=64 producer sends
// 64 times; that is the comparison the ring's batch claim is meant to win.
func BenchmarkMPSC(b *testing.B) {
	for _, batch := range []int{1, 64} {
		for _, producers := range []int{1, 2, 4, 8} {
			for _, impl := range []string{"chan", "ring"} {
				name := fmt.Sprintf("batch=%d/producers=%d/impl=%s", batch, producers, impl)
				b.Run(name, func(b *testing.B) {
					var q mpsc
					if impl == "ring" {
						r, err := New[event](benchCapacity)
						if err != nil {
							b.Fatal(err)
						}
						q = ringQueue{r}
					} else {
						q = chanQueue{make(chan event, benchCapacity)}
					}
					runMPSC(b, q, producers, batch)
				})
			}
		}
	}
}

func runMPSC(b *testing.B, q mpsc, producers, batch int) {
	b.ReportAllocs()
	total := b.N
	consumed := make(chan struct{})
	b.ResetTimer()
	go func() { q.consume(total); close(consumed) }()
	var wg sync.WaitGroup
	for p := range producers {
		share := total / producers
		if p < total%producers {
			share++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]event, batch)
			for seq := 0; seq < share; seq += batch {
				items := buf[:min(batch, share-seq)]
				for i := range items {
					items[i] = event{p, seq + i}
				}
				q.produce(items)
			}
		}()
	}
	wg.Wait()
	<-consumed
}
