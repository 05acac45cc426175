package main

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qcowmount/qcowmount/qcow2"
	"github.com/qcowmount/qcowmount/qcow2/guest"
)

func TestFindVolume(t *testing.T) {
	volumes := []guest.Volume{
		{VG: "vg-guest", Name: "root"},
		{VG: "vg-guest", Name: "home"},
		{VG: "other", Name: "home"},
		{VG: "other", Name: "thin", Unreadable: "thin volume"},
		{VG: "dup", Name: "x"},
		{VG: "dup", Name: "x", Unreadable: "its file name dup-x.raw is taken by volume dup/x"},
	}
	tests := []struct {
		name, want, err string
	}{
		{"vg-guest/root", "vg-guest/root", ""},
		{"vg--guest-root", "vg-guest/root", ""}, // as its file in a mount
		{"root", "vg-guest/root", ""},           // unique
		{"other/home", "other/home", ""},
		{"home", "", "several volumes have that name (vg-guest/home, other/home): give VG/LV"},
		{"swap", "", "no such volume (the guest disk has: vg-guest/root, vg-guest/home, other/home, other/thin, dup/x, dup/x)"},
		{"dup/x", "dup/x", ""}, // the one a mount serves
		{"other/thin", "", "volume other/thin cannot be read: thin volume"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v, err := findVolume(volumes, tc.name)
			switch {
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Errorf("error %v, want %q", err, tc.err)
			case tc.err == "" && (err != nil || v.VG+"/"+v.Name != tc.want):
				t.Errorf("%s/%s, %v; want %s", v.VG, v.Name, err, tc.want)
			}
		})
	}
	if _, err := findVolume(nil, "x"); err == nil || !strings.Contains(err.Error(), "the guest disk has: none") {
		t.Errorf("no volumes: %v", err)
	}
}

func TestStreamOptionsCoverACluster(t *testing.T) {
	tests := []struct {
		clusterSize string
		wantChunk   int
	}{
		{"4096", 1 << 20},
		{"65536", 1 << 20},
		{"2097152", 2 << 20},
	}
	for _, tc := range tests {
		t.Run(tc.clusterSize, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "disk.qcow2")
			if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size="+tc.clusterSize, path, "64M").CombinedOutput(); err != nil {
				t.Fatalf("qemu-img create: %v: %s", err, out)
			}
			img, err := qcow2.Open(path, qcow2.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			if got := streamOptions(img).Chunk; got != tc.wantChunk {
				t.Errorf("chunk %d, want %d", got, tc.wantChunk)
			}
		})
	}
}
