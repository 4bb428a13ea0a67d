package block

// Verify exposes the internal consistency check to the external tests.
func (b *Block) Verify() error { return b.verify() }
