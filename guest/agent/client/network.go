package client

import (
	"context"

	"github.com/govmm/vmm/guest/agent/protocol"
)

// ConfigureNetwork gives the guest its NICs' addresses and MTU and its
// routes (protocol.ConfigureNetworkRequest).
func (c *Client) ConfigureNetwork(ctx context.Context, req protocol.ConfigureNetworkRequest) error {
	return c.conn.Call(ctx, protocol.MethodConfigureNetwork, req, nil)
}
