package containerd

import (
	"context"
	"net"
	"strings"
	"sync"
	"time"

	eventsAPI "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Event topics, as containerd's runc shim publishes them.
const (
	TopicTaskCreate      = "/tasks/create"
	TopicTaskStart       = "/tasks/start"
	TopicTaskExit        = "/tasks/exit"
	TopicTaskDelete      = "/tasks/delete"
	TopicTaskExecAdded   = "/tasks/exec-added"
	TopicTaskExecStarted = "/tasks/exec-started"
	TopicTaskPaused      = "/tasks/paused"
	TopicTaskResumed     = "/tasks/resumed"
	TopicTaskOOM         = "/tasks/oom"
)

// Publisher sends task events to containerd.
type Publisher interface {
	Publish(topic string, event any)
}

// eventQueue bounds the events waiting for containerd; past it the
// oldest are dropped (with a log line) rather than blocking a task.
const eventQueue = 1024

// Bounds on one delivery: containerd answers at once unless it is
// restarting, and a shim must not wait for it forever.
const (
	eventTimeout  = 5 * time.Second
	eventAttempts = 5
)

// publisher forwards events to containerd's ttrpc events service (the
// TTRPC_ADDRESS containerd gives its shims, 1.6 to 2.x), in order, from
// one goroutine.
type publisher struct {
	address, namespace string
	logf               func(string, ...any)

	mu      sync.Mutex
	queue   []*types.Envelope
	wake    chan struct{}
	closing bool
	done    chan struct{}
	client  *ttrpc.Client
}

func newPublisher(address, namespace string, logger interface{ Printf(string, ...any) }) *publisher {
	p := &publisher{
		address:   strings.TrimPrefix(address, "unix://"),
		namespace: namespace,
		logf:      logger.Printf,
		wake:      make(chan struct{}, 1),
		done:      make(chan struct{}),
	}
	go p.loop()
	return p
}

// Publish queues event under topic.
func (p *publisher) Publish(topic string, event any) {
	any, err := typeurl.MarshalAnyToProto(event)
	if err != nil {
		p.logf("event %s: %v", topic, err)
		return
	}
	env := &types.Envelope{Timestamp: timestamppb.Now(), Namespace: p.namespace, Topic: topic, Event: any}
	p.mu.Lock()
	if len(p.queue) >= eventQueue {
		p.logf("event queue full: dropping %s", p.queue[0].Topic)
		p.queue = p.queue[1:]
	}
	p.queue = append(p.queue, env)
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// Close delivers what is queued (each event bounded as always) and
// stops.
func (p *publisher) Close() {
	p.mu.Lock()
	p.closing = true
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
	<-p.done
}

func (p *publisher) loop() {
	defer close(p.done)
	defer func() {
		if p.client != nil {
			p.client.Close()
		}
	}()
	for {
		p.mu.Lock()
		var env *types.Envelope
		if len(p.queue) > 0 {
			env, p.queue = p.queue[0], p.queue[1:]
		}
		closing := p.closing
		p.mu.Unlock()
		if env == nil {
			if closing {
				return
			}
			<-p.wake
			continue
		}
		p.send(env)
	}
}

func (p *publisher) send(env *types.Envelope) {
	if p.address == "" {
		return // not started by containerd (a test): nobody listens
	}
	for attempt := 1; attempt <= eventAttempts; attempt++ {
		if p.client == nil {
			conn, err := net.DialTimeout("unix", p.address, eventTimeout)
			if err != nil {
				p.logf("event %s: connecting to containerd: %v", env.Topic, err)
				time.Sleep(time.Duration(attempt) * 100 * time.Millisecond)
				continue
			}
			p.client = ttrpc.NewClient(conn)
		}
		ctx, cancel := context.WithTimeout(context.Background(), eventTimeout)
		_, err := eventsAPI.NewEventsClient(p.client).Forward(ctx, &eventsAPI.ForwardRequest{Envelope: env})
		cancel()
		if err == nil {
			return
		}
		p.logf("event %s: %v", env.Topic, err)
		p.client.Close()
		p.client = nil
	}
	p.logf("event %s dropped after %d attempts", env.Topic, eventAttempts)
}
