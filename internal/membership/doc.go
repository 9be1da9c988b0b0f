// Package membership decides which worker of a dpsync fleet owns which partition of the
// events stream, with leases in a JetStream key-value bucket.
//
// # Why partitions and leases
//
// The stream DPS_EVENTS is split into N partitions (default 16) by the stream's subject
// transform partition(N, kind, key); every partition has one durable pull consumer. Each
// partition must be consumed by exactly one live worker at a time, so that the events of one
// device are applied in order and never by two workers at once. NATS offers two ways to
// pick that worker: consumer priority groups with a pinned client, or leases in a key-value
// bucket. Pinning gives no fair share (the first client to pull gets pinned on every
// partition and the others idle until it dies) and no epoch a worker could check before a
// DPS call. Leases give an explicit assignment that spreads partitions evenly, an explicit
// epoch per ownership (the fencing token), and observability: `nats kv ls dpsync_members`,
// `nats kv get dpsync_members partitions.3` show who is alive and who owns what.
//
// # Keys of the bucket (default "dpsync_members", history 1, file storage)
//
//	members.<workerID>   heartbeat of a live worker, {"worker":…, "partitions":n}, rewritten
//	                     every RenewEvery; deleted by Close, and by any worker once it expired.
//	partitions.<p>       lease of partition p: {"owner":"w1","epoch":42}; owner "" = released.
//
// # Liveness without synchronised clocks
//
// A key is alive while its revision keeps changing. Every worker watches the bucket and
// notes, on its own monotonic clock, when it first saw each revision of each key. A foreign
// lease or member entry whose revision has not changed for LeaseTTL in that local view is
// expired. No wall clock of any machine is compared with another's, the server's entry
// timestamps (Created) are not used, and no per-key TTL is needed. (Per-key TTLs exist
// since nats-server 2.11, but nats.go's KV API sets a TTL only on Create, not on the
// compare-and-set Update a renewal needs, and server-side expiry would again tie the
// argument below to the server's wall clock.)
//
// # Desired assignment
//
// Every worker computes the same desired assignment from its list of live members:
// rendezvous (highest-random-weight) hashing with a fair-share bound, so every member gets
// ⌊N/M⌋ or ⌈N/M⌉ partitions and a change of membership moves few of them (see assign).
// Views may differ for a moment (a newcomer still counts a dead member as live for up to
// LeaseTTL); the leases keep that safe, and the views agree once every entry is older
// than LeaseTTL.
//
// # Lease protocol
//
//   - Acquire: KV Create when the key is absent, else KV Update with the revision last seen
//     (compare-and-set), allowed when the lease is released, or its revision is this worker's
//     own last write, or the revision has not changed for LeaseTTL in the local view. Two
//     workers can never both succeed on the same revision. The epoch of the new ownership is
//     the revision of the acquiring write; revisions of a key only grow, so a later owner
//     always has a larger epoch.
//   - Renew: every RenewEvery, KV Update with the last revision. A failed compare-and-set
//     means somebody else wrote the key: the lease is lost at once.
//   - Hand over: a held partition that the desired assignment gives to another member is
//     announced as Draining through OnChange. The caller stops taking new work from it,
//     finishes what it has in flight and calls Release(p); the lease is then written as
//     released and the new owner takes it at once. A caller that does not call Release
//     within DrainTimeout is fenced (Owns turns false) and the lease is released
//     SafetyMargin later.
//   - Close releases every held lease and deletes the member key: a graceful stop hands its
//     partitions over within one round trip. A crash (kill -9) hands them over once the
//     others saw no renewal for LeaseTTL: takeover ≤ LeaseTTL + one watch delivery + one
//     compare-and-set, and a joining worker gets its share as soon as the others saw its
//     heartbeat and drained.
//
// # Fencing: why two workers never apply one partition at once
//
// Owns(p) answers from local state only: true while the last successful write of the lease
// (acquire or renew) was *sent* less than LeaseTTL − SafetyMargin ago on this worker's
// monotonic clock. The caller checks Owns (and that the epoch is the one it started with)
// before every DPS call, and a DPS call lasts at most SafetyMargin (the caller bounds it).
//
// Let s be the local time at which the holder sent its last successful renewal. The server
// committed it at some instant ≥ s, another worker saw that revision at some instant ≥ the
// commit, and it attempts a takeover only after it saw no newer revision for LeaseTTL: not
// before s + LeaseTTL. The holder's last DPS call started before s + LeaseTTL − SafetyMargin
// and ended before s + LeaseTTL. So the new owner's first call starts after the old owner's
// last call ended. This holds whatever the delays: a worker paused (SIGSTOP, GC, a stalled
// VM) longer than the TTL finds on resume that Owns is false before it could apply anything,
// because its own monotonic clock advanced while it was stopped, and it gets the partition
// back only through a new acquisition, which has a new epoch. Stale views only make a
// compare-and-set fail. The argument needs the monotonic clocks of the machines to run at
// nearly the same rate (drift over one TTL is far below SafetyMargin) and the bucket to keep
// acknowledged writes (file storage; R3 in a cluster).
//
// One window stays: a pause that hits after the caller's Owns check and before its request
// leaves the process. Keep that window tiny by checking Owns as late as possible — in an
// azcore pipeline policy that runs right before the transport sends, rather than before
// building a batch.
//
// # Use
//
//	m, err := membership.New(ctx, js, membership.Options{Partitions: 16, OnChange: apply})
//	go m.Run(runCtx)        // owner loop; returns when runCtx ends or Close is called
//	…
//	epoch, ok := m.Owns(p)  // before each DPS call of partition p
//	m.Release(p, epoch)     // after a Draining partition was drained
//	…
//	m.Close(ctx)            // after the partitions' consumers stopped
//
// # Changing the number of partitions
//
// All workers must use the same Partitions as the stream's transform. To change it: stop
// the fleet (or let it drain), update the stream's subject transform and its per-partition
// consumers (internal/consumer), then start the workers with the new value; leases of
// partitions beyond the new count are ignored.
package membership
