module github.com/carve-ipam/carve

go 1.24.0

require (
	github.com/bits-and-blooms/bitset v1.29.0
	github.com/stretchr/testify v1.12.1
	go4.org/netipx v0.0.0-20260823151212-3075585bcbeb
	pgregory.net/rapid v1.3.0
)

require go.yaml.in/yaml/v3 v3.0.5 // indirect
