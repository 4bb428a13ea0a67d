package pool_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/carve-ipam/carve/pool"
)

// The crd.projectcalico.org/v1 IPPool CRD keeps the APIv1 fields "ipip"
// ({enabled, mode}) and "nat-outgoing" that pools created under Calico 2.x
// on the Kubernetes datastore still carry, and Calico's KDD backend reads
// them (libcalico-go IPPoolv1v3Converter): ipip disabled means ipipMode
// Never, mode "cross-subnet" CrossSubnet, any other mode Always (over
// whatever ipipMode says, which the CRD defaults to Never); natOutgoing is
// nat-outgoing OR natOutgoing. DecodeManifest refused such a CRD export,
// which Calico uses as is. In a projectcalico.org/v3 manifest the fields
// stay refused, as Calico's validator refuses them.
func TestDecodeManifestReadsAPIv1FieldsOfCRDs(t *testing.T) {
	crd := func(spec string) string {
		return `{"apiVersion":"crd.projectcalico.org/v1","kind":"IPPool","metadata":{"name":"old"},"spec":` + spec + `}`
	}
	for _, tt := range []struct {
		spec string
		ipip pool.EncapMode
		nat  bool
	}{
		{`{"cidr":"10.0.0.0/16","ipip":{"enabled":true,"mode":"cross-subnet"},"ipipMode":"Never","nat-outgoing":true}`, pool.CrossSubnet, true},
		{`{"cidr":"10.0.0.0/16","ipipMode":"Never","ipip":{"enabled":true}}`, pool.Always, false},
		{`{"cidr":"10.0.0.0/16","ipip":{"enabled":true,"mode":"always"},"natOutgoing":true,"nat-outgoing":false}`, pool.Always, true},
		{`{"cidr":"10.0.0.0/16","ipip":{"enabled":false,"mode":"always"},"ipipMode":"Always"}`, pool.Never, false},
		{`{"cidr":"10.0.0.0/16","ipip":null,"ipipMode":"CrossSubnet"}`, pool.CrossSubnet, false},
	} {
		pools, err := pool.DecodeManifest([]byte(crd(tt.spec)))
		require.NoError(t, err, tt.spec)
		require.Len(t, pools, 1)
		require.Equal(t, tt.ipip, pools[0].WithDefaults().IPIPMode, tt.spec)
		require.Equal(t, tt.nat, pools[0].NATOutgoing, tt.spec)
		require.NoError(t, pools[0].Validate(), tt.spec)
	}

	// A misspelt APIv1 setting is still an error that names it.
	_, err := pool.DecodeManifest([]byte(crd(`{"cidr":"10.0.0.0/16","ipip":{"enabled":true,"mode":"crosssubnet"}}`)))
	require.ErrorContains(t, err, `spec.ipip.mode: "crosssubnet"`)

	// projectcalico.org/v3 refuses them, as Calico's validator does.
	_, err = pool.DecodeManifest([]byte(`{"apiVersion":"projectcalico.org/v3","kind":"IPPool","metadata":{"name":"old"},` +
		`"spec":{"cidr":"10.0.0.0/16","ipip":{"enabled":true}}}`))
	require.ErrorContains(t, err, "spec.ipip: is the Calico APIv1 field, not allowed in v3")
}
