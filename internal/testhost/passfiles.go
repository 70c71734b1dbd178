package testhost

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/ptvmm/ptvmm/guest/initramfs"
)

// PassFileEnvs are environment variables that name host files an e2e test
// reads when they are set: inputs built outside the repository, such as
// netmap's own guest driver and pkt-gen (e2e TestNetmapGuestDriver). The test
// host gets a copy of each at TestHostAssets/extra/<variable>/<file name> and
// the variable set to that path, so a test reads the same variable here and there.
var PassFileEnvs = []string{"PTVMM_NETMAP_KO", "PTVMM_PKTGEN"}

// passFiles is what the test host needs for the PassFileEnvs set in getenv:
// the files to pack and the KEY=VALUE entries naming them inside. A variable
// naming a file that is not there is an error, not a silent skip.
func passFiles(getenv func(string) string) ([]initramfs.File, []string, error) {
	var files []initramfs.File
	var env []string
	for _, k := range PassFileEnvs {
		host := getenv(k)
		if host == "" {
			continue
		}
		st, err := os.Stat(host)
		if err != nil {
			return nil, nil, fmt.Errorf("testhost: %s: %w", k, err)
		}
		if !st.Mode().IsRegular() {
			return nil, nil, fmt.Errorf("testhost: %s=%s: not a regular file", k, host)
		}
		guest := TestHostAssets + "/extra/" + k + "/" + filepath.Base(host)
		files = append(files, initramfs.File{Host: host, Guest: guest, Mode: st.Mode().Perm()})
		env = append(env, k+"="+guest)
	}
	return files, env, nil
}
