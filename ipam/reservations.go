package ipam

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"go4.org/netipx"
)

// Reservation keeps addresses out of automatic assignment, as Calico's
// IPReservation does: AutoAssign never hands out an address inside one of
// its CIDRs, and claims skip blocks a reservation covers. AssignIP may still
// assign a reserved address on purpose, and addresses assigned before the
// reservation stay assigned. Utilization counts reserved addresses apart.
type Reservation struct {
	// Name identifies the reservation: 1 to MaxNameLen bytes of UTF-8,
	// without control characters or "/", that neither begin nor end with
	// white space.
	Name string
	// CIDRs are the reserved ranges, masked prefixes of either family.
	CIDRs []netip.Prefix
}

// MaxReservationCIDRs bounds the CIDRs of one reservation.
const MaxReservationCIDRs = 1024

// reservationJSON is a reservation's stored form, Calico's IPReservation
// spec.
type reservationJSON struct {
	ReservedCIDRs []netip.Prefix `json:"reservedCIDRs"`
}

func (r Reservation) check(op string) error {
	if err := checkName(op, "reservation name", r.Name, false); err != nil {
		return err
	}
	switch {
	case len(r.CIDRs) == 0:
		return invalid(op, "reservation %q has no CIDRs", r.Name)
	case len(r.CIDRs) > MaxReservationCIDRs:
		return invalid(op, "reservation %q has %d CIDRs, more than %d", r.Name, len(r.CIDRs), MaxReservationCIDRs)
	}
	for _, c := range r.CIDRs {
		switch {
		case !c.IsValid() || c.Masked() != c || c.Addr().Zone() != "":
			return invalid(op, "reservation %q: %s is not a masked prefix", r.Name, c)
		case c.Addr().Is4In6():
			return invalid(op, "reservation %q: %s is an IPv4-mapped IPv6 prefix; write IPv4 ranges in IPv4 form", r.Name, c)
		}
	}
	return nil
}

func unmarshalReservation(name string, data []byte) (Reservation, error) {
	var j reservationJSON
	if err := json.Unmarshal(data, &j); err != nil {
		return Reservation{}, fmt.Errorf("ipam: reservation %q: %w: %w", name, ErrCorrupt, err)
	}
	r := Reservation{Name: name, CIDRs: j.ReservedCIDRs}
	// The check's error says what is wrong; it is not the caller's
	// invalid argument, so it does not match ErrInvalid here.
	if err := r.check("read reservation"); err != nil {
		return Reservation{}, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	return r, nil
}

// CreateReservation stores a new reservation. A name in use fails with
// ErrReservationExists. Addresses assigned before stay assigned;
// Allocations lists them. An AutoAssign in flight meanwhile does not return
// an address in it either: after its block writes it looks again, if the
// reservations changed since it read them, and gives back and replaces
// what a new reservation covers. (On a store whose Generations lag, such
// as etcdstore's watch, another process's reservation is seen once the
// store reports it.)
func (a *Allocator) CreateReservation(ctx context.Context, r Reservation) error {
	const op = "create reservation"
	if err := r.check(op); err != nil {
		return err
	}
	value, err := json.Marshal(reservationJSON{ReservedCIDRs: r.CIDRs})
	if err != nil {
		return err
	}
	_, err = a.store.Create(ctx, KindReservation, r.Name, value)
	if errors.Is(err, ErrExists) {
		return fmt.Errorf("ipam: %s %q: %w", op, r.Name, ErrReservationExists)
	}
	if err != nil {
		return fmt.Errorf("ipam: %s %q: %w", op, r.Name, err)
	}
	return nil
}

// UpdateReservation replaces the CIDRs of the reservation named r.Name.
// New CIDRs hold as a new reservation's do (see CreateReservation).
func (a *Allocator) UpdateReservation(ctx context.Context, r Reservation) error {
	const op = "update reservation"
	if err := r.check(op); err != nil {
		return err
	}
	value, err := json.Marshal(reservationJSON{ReservedCIDRs: r.CIDRs})
	if err != nil {
		return err
	}
	return a.changeReservation(ctx, op, r.Name, func(rev Revision) error {
		_, err := a.store.Update(ctx, KindReservation, r.Name, value, rev)
		return err
	})
}

// DeleteReservation deletes a reservation; its addresses become assignable.
func (a *Allocator) DeleteReservation(ctx context.Context, name string) error {
	const op = "delete reservation"
	if err := checkName(op, "reservation name", name, false); err != nil {
		return err
	}
	return a.changeReservation(ctx, op, name, func(rev Revision) error {
		return a.store.Delete(ctx, KindReservation, name, rev)
	})
}

// changeReservation reads the reservation's revision and hands it to write,
// retrying when another writer got there first.
func (a *Allocator) changeReservation(ctx context.Context, op, name string, write func(Revision) error) error {
	return a.retry(ctx, op, name, func() error {
		rec, err := a.store.Get(ctx, KindReservation, name)
		if errors.Is(err, ErrNotFound) {
			return fmt.Errorf("ipam: %s %q: %w", op, name, ErrReservationNotFound)
		}
		if err != nil {
			return err
		}
		err = write(rec.Revision)
		if errors.Is(err, ErrNotFound) {
			err = fmt.Errorf("%w: %w", errRecordMoved, err)
		}
		return err
	})
}

// Reservations returns every reservation, in name order.
func (a *Allocator) Reservations(ctx context.Context) ([]Reservation, error) {
	recs, err := a.store.List(ctx, KindReservation, KeyRange{})
	if err != nil {
		return nil, fmt.Errorf("ipam: list reservations: %w", err)
	}
	out := make([]Reservation, 0, len(recs))
	for _, rec := range recs {
		r, err := unmarshalReservation(rec.Key, rec.Value)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// reservedSet builds the set of reserved addresses from reservation records.
func reservedSet(recs []Record) (*netipx.IPSet, error) {
	var b netipx.IPSetBuilder
	for _, rec := range recs {
		r, err := unmarshalReservation(rec.Key, rec.Value)
		if err != nil {
			return nil, err
		}
		for _, c := range r.CIDRs {
			b.AddPrefix(c)
		}
	}
	return b.IPSet()
}

// reservedSkip returns the reserved prefixes of a pool that cover whole
// blocks, which a claim's walk passes over. Smaller reservations leave their
// blocks claimable: AutoAssign skips their addresses.
func reservedSkip(reserved *netipx.IPSet, cidr netip.Prefix, blockSize int) []netip.Prefix {
	var out []netip.Prefix
	for _, r := range reserved.Prefixes() {
		if r.Overlaps(cidr) && r.Bits() <= blockSize {
			out = append(out, r)
		}
	}
	return slices.Clip(out)
}
