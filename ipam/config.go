package ipam

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/carve-ipam/carve/internal/strictjson"
)

// Config is the cluster-wide allocator configuration, Calico's
// IPAMConfiguration. It is kept in the store; [Allocator.Config] reads it and
// [Allocator.SetConfig] changes it. Start from [DefaultConfig]: the zero
// Config turns off automatic block claims and is refused (see
// [Config.Validate]).
type Config struct {
	// StrictAffinity forbids borrowing: a node assigns only from blocks
	// affine to it. Calico requires it on Windows nodes.
	StrictAffinity bool `json:"strictAffinity"`

	// AutoAllocateBlocks lets AutoAssign claim new blocks for a node when
	// its affine blocks are full, and [Allocator.EnsureBlock] claim one for
	// a node that holds none it can use. Without it, both use only the
	// blocks a node holds already: given with [Allocator.ClaimAffinity], or
	// claimed by [Allocator.AssignIP] and [Allocator.AssignIPs], which claim
	// the block of an address they are asked for whatever this says, as in
	// Calico.
	AutoAllocateBlocks bool `json:"autoAllocateBlocks"`

	// MaxBlocksPerHost caps how many blocks of one IP family AutoAssign
	// and EnsureBlock let a node hold in the pools a request may use; 0
	// means no cap. Reaching the cap stops AutoAssign's claims only:
	// without StrictAffinity the node goes on to borrow free addresses
	// from other nodes' blocks (never unclaimed blocks: those are claimed
	// or not at all). ClaimAffinity, AssignIP and AssignIPs, which name
	// their blocks, are not held to it.
	MaxBlocksPerHost int `json:"maxBlocksPerHost,omitempty"`

	// ReleaseCooldown keeps a released address from being assigned again
	// for this long (an address released exactly ReleaseCooldown ago still
	// cools), so that a new owner never gets an address its previous
	// owner may still be using (a slow pod teardown, a stale ARP entry).
	// 0 turns the cooldown off. At most MaxReleaseCooldown. In JSON it is a
	// duration string, "releaseCooldown":"30s".
	//
	// Release times live in the block. An empty block that loses its
	// affinity (ReleaseAffinity, ReleaseHostAffinities), or whose last
	// address is released while it has none, is therefore kept, without
	// affinity, while an address in it is still cooling, rather than
	// deleted; a claim may take it over, times and all, and once the
	// cooldown has passed the Collector deletes it (Check lists such
	// blocks as Report.Cooling, then Report.Cooled, never as problems).
	// DeletePool deletes empty blocks at once: their pool is gone, and so
	// is the cooldown.
	ReleaseCooldown time.Duration `json:"-"`
}

// MaxReleaseCooldown is the longest ReleaseCooldown carve accepts.
const MaxReleaseCooldown = 24 * time.Hour

// configJSON is Config's stored form: Calico's IPAMConfiguration fields, and
// the cooldown as a duration string ("30s").
type configJSON struct {
	StrictAffinity     bool   `json:"strictAffinity"`
	AutoAllocateBlocks bool   `json:"autoAllocateBlocks"`
	MaxBlocksPerHost   int    `json:"maxBlocksPerHost,omitempty"`
	ReleaseCooldown    string `json:"releaseCooldown,omitempty"`
}

// DefaultConfig returns the configuration in force when none is stored,
// Calico's default: claim blocks automatically, borrow when out of blocks,
// no cap on blocks per host.
func DefaultConfig() Config {
	return Config{AutoAllocateBlocks: true}
}

// ErrInvalidConfig is matched by every error Config.Validate returns.
var ErrInvalidConfig = errors.New("invalid IPAM configuration")

// Validate reports whether c is a configuration carve accepts.
//
// StrictAffinity and AutoAllocateBlocks may not both be off. Nodes would
// then never claim a block of their own and could only borrow from blocks
// claimed with [Allocator.ClaimAffinity]; that is the zero Config, and
// almost always a Config built without DefaultConfig by mistake. With
// StrictAffinity on and AutoAllocateBlocks off, AutoAssign uses only the
// blocks ClaimAffinity (or AssignIP) gave the node.
//
// Calico also refuses MaxBlocksPerHost without StrictAffinity, because its
// allocator fails, rather than borrows, at the cap. carve borrows at the cap
// when StrictAffinity is off, so the combination is meaningful and accepted.
func (c Config) Validate() error {
	var problems []error
	if !c.StrictAffinity && !c.AutoAllocateBlocks {
		problems = append(problems, errors.New("strictAffinity and autoAllocateBlocks are both false: nodes could only borrow, never claim a block (start from DefaultConfig)"))
	}
	if c.MaxBlocksPerHost < 0 || c.MaxBlocksPerHost > math.MaxInt32 {
		problems = append(problems, fmt.Errorf("maxBlocksPerHost %d is outside 0..%d", c.MaxBlocksPerHost, math.MaxInt32))
	}
	if c.ReleaseCooldown < 0 || c.ReleaseCooldown > MaxReleaseCooldown {
		problems = append(problems, fmt.Errorf("releaseCooldown %v is outside 0..%v", c.ReleaseCooldown, MaxReleaseCooldown))
	}
	if len(problems) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrInvalidConfig, errors.Join(problems...))
}

// MarshalJSON writes Calico's IPAMConfiguration fields, and the cooldown as
// a duration string: {"strictAffinity":false,"autoAllocateBlocks":true,
// "releaseCooldown":"30s"}.
func (c Config) MarshalJSON() ([]byte, error) { return c.marshal() }

// UnmarshalJSON reads what MarshalJSON writes, and Calico's
// IPAMConfiguration spec. As with pool specs, field names are matched
// exactly and a field the configuration does not have is an error, not
// ignored; a missing autoAllocateBlocks is true, Calico's default, and the
// other missing fields are zero. Errors match ErrInvalidConfig. The result
// is not validated (see Validate).
func (c *Config) UnmarshalJSON(data []byte) error {
	got, err := decodeConfig(data, true)
	if err != nil {
		return fmt.Errorf("ipam: config: %w: %w", ErrInvalidConfig, err)
	}
	*c = got
	return nil
}

func (c Config) marshal() ([]byte, error) {
	j := configJSON{StrictAffinity: c.StrictAffinity, AutoAllocateBlocks: c.AutoAllocateBlocks, MaxBlocksPerHost: c.MaxBlocksPerHost}
	if c.ReleaseCooldown != 0 {
		j.ReleaseCooldown = c.ReleaseCooldown.String()
	}
	return json.Marshal(j)
}

// unmarshalConfig decodes the stored config record. Fields it does not
// know are skipped, so that a record written by a later version of carve
// still reads.
func unmarshalConfig(data []byte) (Config, error) {
	c, err := decodeConfig(data, false)
	if err != nil {
		return Config{}, fmt.Errorf("ipam: config record: %w: %w", ErrCorrupt, err)
	}
	return c, nil
}

// decodeConfig decodes a Config from its JSON form, starting from
// DefaultConfig; strict refuses fields it does not know.
func decodeConfig(data []byte, strict bool) (Config, error) {
	fields, err := strictjson.Fields(data)
	if err != nil {
		return Config{}, err
	}
	c := DefaultConfig()
	for _, f := range fields {
		if strictjson.IsNull(f.Value) {
			continue
		}
		switch f.Key {
		case "strictAffinity":
			err = strictjson.DecodeAs(f.Value, &c.StrictAffinity, "true or false")
		case "autoAllocateBlocks":
			err = strictjson.DecodeAs(f.Value, &c.AutoAllocateBlocks, "true or false")
		case "maxBlocksPerHost":
			err = strictjson.DecodeAs(f.Value, &c.MaxBlocksPerHost, "an integer")
		case "releaseCooldown":
			var s string
			if err = strictjson.DecodeAs(f.Value, &s, `a duration such as "30s"`); err == nil && s != "" {
				if c.ReleaseCooldown, err = time.ParseDuration(s); err != nil {
					err = fmt.Errorf("want a duration such as \"30s\", got %q", s)
				}
			}
		default:
			if strict {
				err = errors.New("is not a field of the IPAM configuration")
			}
		}
		if err != nil {
			return Config{}, fmt.Errorf("%s: %w", f.Key, err)
		}
	}
	return c, nil
}
