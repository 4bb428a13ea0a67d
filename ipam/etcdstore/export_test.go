package etcdstore

import (
	"context"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// NewFromRevision is New with the watch starting at revision rev, which
// lets a test start it behind a compaction.
func NewFromRevision(ctx context.Context, client *clientv3.Client, opts Options, rev int64) (*Store, error) {
	return newStore(ctx, client, opts, rev)
}
