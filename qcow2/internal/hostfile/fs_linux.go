package hostfile

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// pseudoFileSystems are kernel file systems whose files describe the host
// (processes, devices, kernel state): never an image, whatever the flags.
var pseudoFileSystems = map[int64]string{
	unix.PROC_SUPER_MAGIC:     "proc",
	unix.SYSFS_MAGIC:          "sysfs",
	unix.DEBUGFS_MAGIC:        "debugfs",
	unix.TRACEFS_MAGIC:        "tracefs",
	unix.SECURITYFS_MAGIC:     "securityfs",
	unix.CGROUP_SUPER_MAGIC:   "cgroup",
	unix.CGROUP2_SUPER_MAGIC:  "cgroup2",
	unix.EFIVARFS_MAGIC:       "efivarfs",
	unix.BPF_FS_MAGIC:         "bpf",
	unix.PSTOREFS_MAGIC:       "pstore",
	unix.DEVPTS_SUPER_MAGIC:   "devpts",
	unix.SELINUX_MAGIC:        "selinuxfs",
	unix.SMACK_MAGIC:          "smackfs",
	unix.BINFMTFS_MAGIC:       "binfmt_misc",
	unix.NSFS_MAGIC:           "nsfs",
	unix.RDTGROUP_SUPER_MAGIC: "resctrl",
	unix.PID_FS_MAGIC:         "pidfs",
	unix.SECRETMEM_MAGIC:      "secretmem",
	0x62656570:                "configfs", // CONFIGFS_MAGIC, not in x/sys
	0x65735543:                "fusectl",  // FUSECTL_SUPER_MAGIC, not in x/sys
}

// checkFileSystem refuses a file that lives on a pseudo file system.
func checkFileSystem(f *os.File) error {
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil {
		return fmt.Errorf("%s: %w", f.Name(), err)
	}
	if name, ok := pseudoFileSystems[int64(st.Type)]; ok {
		return fmt.Errorf("%s lies on the %s pseudo file system, which holds no images: %w", f.Name(), name, ErrUnsafePath)
	}
	return nil
}
