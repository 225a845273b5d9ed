package image

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/govmm/vmm/internal/testenv"
)

func requireRoot(t *testing.T) {
	t.Helper()
	testenv.RequireRoot(t, "ownership, device nodes")
}

func requireTools(t *testing.T) {
	t.Helper()
	requireRoot(t)
	testenv.RequireCommand(t, "mkfs.ext4", "e2fsprogs")
	testenv.RequireCommand(t, "debugfs", "e2fsprogs")
}

// debugfs runs a read-only debugfs request against img.
func debugfs(t *testing.T, img, request string) string {
	t.Helper()
	p, _ := testenv.LookCommand("debugfs")
	var stderr bytes.Buffer
	cmd := exec.Command(p, "-R", request, img)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("debugfs -R %q: %v\n%s%s", request, err, out, stderr.Bytes())
	}
	return string(out)
}

// entry is one tar entry for the test archives.
type entry struct {
	name, body, link string
	typ              byte
	mode             int64
	uid, gid         int
}

func file(name, body string) entry {
	return entry{name: name, body: body, typ: tar.TypeReg, mode: 0o644}
}
func dir(name string) entry { return entry{name: name, typ: tar.TypeDir, mode: 0o755} }
func symlink(name, target string) entry {
	return entry{name: name, link: target, typ: tar.TypeSymlink, mode: 0o777}
}
func hardlink(name, target string) entry {
	return entry{name: name, link: target, typ: tar.TypeLink, mode: 0o644}
}

func makeTar(t *testing.T, entries []entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{
			Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: e.mode,
			Uid: e.uid, Gid: e.gid, Size: int64(len(e.body)), ModTime: time.Unix(1700000000, 0),
		}
		if e.typ != tar.TypeReg {
			hdr.Size = 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if hdr.Size > 0 {
			tw.Write([]byte(e.body))
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func gzipBytes(t *testing.T, data []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(data)
	zw.Close()
	return buf.Bytes()
}

func digest(data []byte) string {
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// writeOCITar writes ociTar(layers) to dir/image.tar and returns its path.
func writeOCITar(t *testing.T, dir string, layers ...[]byte) string {
	t.Helper()
	src := filepath.Join(dir, "image.tar")
	if err := os.WriteFile(src, ociTar(t, layers...), 0o644); err != nil {
		t.Fatal(err)
	}
	return src
}

// ociTar wraps layers (already compressed or not) into an OCI image
// layout tarball.
func ociTar(t *testing.T, layers ...[]byte) []byte {
	t.Helper()
	var outer []entry
	blob := func(data []byte) string {
		d := digest(data)
		outer = append(outer, file("blobs/sha256/"+strings.TrimPrefix(d, "sha256:"), string(data)))
		return d
	}
	config := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`)
	type desc struct {
		MediaType string `json:"mediaType"`
		Digest    string `json:"digest"`
		Size      int    `json:"size"`
	}
	manifest := struct {
		SchemaVersion int    `json:"schemaVersion"`
		MediaType     string `json:"mediaType"`
		Config        desc   `json:"config"`
		Layers        []desc `json:"layers"`
	}{SchemaVersion: 2, MediaType: "application/vnd.oci.image.manifest.v1+json"}
	manifest.Config = desc{"application/vnd.oci.image.config.v1+json", blob(config), len(config)}
	for _, l := range layers {
		mt := "application/vnd.oci.image.layer.v1.tar"
		if bytes.HasPrefix(l, []byte{0x1f, 0x8b}) {
			mt += "+gzip"
		}
		manifest.Layers = append(manifest.Layers, desc{mt, blob(l), len(l)})
	}
	mdata, _ := json.Marshal(manifest)
	md := blob(mdata)
	index := map[string]any{
		"schemaVersion": 2,
		"manifests": []map[string]any{{
			"mediaType": "application/vnd.oci.image.manifest.v1+json",
			"digest":    md, "size": len(mdata),
			"platform": map[string]string{"os": "linux", "architecture": "amd64"},
		}},
	}
	idata, _ := json.Marshal(index)
	outer = append([]entry{dir("blobs"), dir("blobs/sha256")}, outer...)
	outer = append(outer, file("index.json", string(idata)), file("oci-layout", `{"imageLayoutVersion":"1.0.0"}`))
	return makeTar(t, outer)
}

func testLayers(t *testing.T) [][]byte {
	owned := file("etc/owned", "owned by 1000")
	owned.uid, owned.gid, owned.mode = 1000, 1001, 0o640
	suid := file("bin/suid", "#!/bin/sh\n")
	suid.mode = 0o4755
	layer1 := makeTar(t, []entry{
		dir("etc"), dir("bin"), dir("opq"), dir("opq/sub"),
		file("etc/hello", "hello from layer 1\n"),
		file("etc/gone", "to be whited out\n"),
		dir("etc/gonedir"), file("etc/gonedir/inner", "x"),
		file("opq/old", "old\n"), file("opq/sub/older", "older\n"),
		symlink("bin/link", "../etc/hello"),
		symlink("bin/abs", "/etc/hello"),
		hardlink("etc/hardlink", "etc/hello"),
		owned, suid,
	})
	layer2 := makeTar(t, []entry{
		// The file of the opaque directory precedes the marker on
		// purpose: the marker hides only the layers below.
		file("opq/new", "new\n"),
		file("opq/.wh..wh..opq", ""),
		file("etc/.wh.gone", ""),
		file("etc/.wh.gonedir", ""),
		file("etc/added", "added in layer 2\n"),
		file("etc/hello", "hello from layer 2\n"),
	})
	return [][]byte{layer1, gzipBytes(t, layer2)}
}

func TestBuildFromOCITar(t *testing.T) {
	requireTools(t)
	dir := t.TempDir()
	src := writeOCITar(t, dir, testLayers(t)...)
	img := filepath.Join(dir, "rootfs.ext4")
	if err := BuildFromOCI(context.Background(), src, img, Options{Logf: t.Logf}); err != nil {
		t.Fatalf("BuildFromOCI: %v", err)
	}
	checkImage(t, img)
}

func checkImage(t *testing.T, img string) {
	t.Helper()
	info, err := os.Stat(img)
	if err != nil || info.Size() < MinSize {
		t.Fatalf("image: %v, %d bytes", err, info.Size())
	}
	if got := debugfs(t, img, "cat /etc/hello"); !strings.Contains(got, "hello from layer 2") {
		t.Errorf("/etc/hello: %q", got)
	}
	if got := debugfs(t, img, "cat /etc/added"); !strings.Contains(got, "added in layer 2") {
		t.Errorf("/etc/added: %q", got)
	}
	etc := debugfs(t, img, "ls -l /etc")
	for _, gone := range []string{" gone", "gonedir", ".wh."} {
		if strings.Contains(etc, gone) {
			t.Errorf("/etc still has %q:\n%s", gone, etc)
		}
	}
	opq := debugfs(t, img, "ls /opq")
	if !strings.Contains(opq, "new") || strings.Contains(opq, "old") || strings.Contains(opq, "sub") || strings.Contains(opq, ".wh.") {
		t.Errorf("opaque /opq: %s", opq)
	}
	if got := debugfs(t, img, "stat /bin/link"); !strings.Contains(got, `Fast link dest: "../etc/hello"`) {
		t.Errorf("/bin/link: %s", got)
	}
	if got := debugfs(t, img, "stat /bin/abs"); !strings.Contains(got, `Fast link dest: "/etc/hello"`) {
		t.Errorf("/bin/abs: %s", got)
	}
	owned := debugfs(t, img, "stat /etc/owned")
	if !strings.Contains(owned, "User:  1000") || !strings.Contains(owned, "Group:  1001") || !strings.Contains(owned, "Mode:  0640") {
		t.Errorf("/etc/owned: %s", owned)
	}
	if got := debugfs(t, img, "stat /bin/suid"); !strings.Contains(got, "Mode:  04755") {
		t.Errorf("/bin/suid: %s", got)
	}
	// The hard link kept layer 1's inode, which layer 2 replaced
	// /etc/hello with a new one: the link keeps the old content.
	if got := debugfs(t, img, "cat /etc/hardlink"); !strings.Contains(got, "hello from layer 1") {
		t.Errorf("/etc/hardlink: %q", got)
	}
	if got := debugfs(t, img, "stat /etc/hardlink"); !strings.Contains(got, "Links: 1") {
		t.Errorf("/etc/hardlink link count: %s", got)
	}
}

func TestBuildFromDockerSave(t *testing.T) {
	requireTools(t)
	layers := testLayers(t)
	manifest := `[{"Config":"config.json","RepoTags":["test:latest"],"Layers":["aaa/layer.tar","bbb/layer.tar"]}]`
	outer := makeTar(t, []entry{
		file("manifest.json", manifest),
		file("config.json", "{}"),
		dir("aaa"), file("aaa/layer.tar", string(layers[0])),
		dir("bbb"), file("bbb/layer.tar", string(layers[1])),
	})
	dir := t.TempDir()
	src := filepath.Join(dir, "save.tar")
	os.WriteFile(src, outer, 0o644)
	img := filepath.Join(dir, "rootfs.ext4")
	if err := BuildFromOCI(context.Background(), src, img, Options{}); err != nil {
		t.Fatalf("BuildFromOCI(docker save): %v", err)
	}
	checkImage(t, img)
}

func TestHardLinkCountWithinLayer(t *testing.T) {
	requireTools(t)
	layer := makeTar(t, []entry{dir("a"), file("a/f", "shared\n"), hardlink("a/g", "a/f")})
	dir := t.TempDir()
	src := writeOCITar(t, dir, layer)
	img := filepath.Join(dir, "rootfs.ext4")
	if err := BuildFromOCI(context.Background(), src, img, Options{}); err != nil {
		t.Fatal(err)
	}
	if got := debugfs(t, img, "stat /a/g"); !strings.Contains(got, "Links: 2") {
		t.Errorf("/a/g: %s", got)
	}
}

func TestHostileLayers(t *testing.T) {
	requireRoot(t)
	cases := []struct {
		name    string
		entries []entry
		wantErr string
	}{
		{"dot-dot entry", []entry{file("../evil", "x")}, "path traversal"},
		{"dot-dot inside", []entry{dir("a"), file("a/../../evil", "x")}, "path traversal"},
		{"hard link out", []entry{hardlink("passwd", "../../../../etc/passwd")}, "path traversal"},
		{"dot-dot whiteout", []entry{file("../.wh.evil", "")}, "path traversal"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			dest := filepath.Join(base, "a", "b", "root")
			os.MkdirAll(dest, 0o755)
			src := writeOCITar(t, base, makeTar(t, tc.entries))
			err := Unpack(context.Background(), src, dest)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Unpack: %v, want an error about %q", err, tc.wantErr)
			}
			for _, p := range []string{filepath.Join(base, "a", "b", "evil"), filepath.Join(base, "a", "evil"), filepath.Join(base, "evil")} {
				if _, err := os.Lstat(p); err == nil {
					t.Errorf("%s was written outside the image", p)
				}
			}
		})
	}
}

// TestSymlinkEscapesStayInside checks that writing through a symlink that
// points outside (absolutely or with ..) lands inside the image, as the
// container would see it, and never on the host.
func TestSymlinkEscapesStayInside(t *testing.T) {
	requireRoot(t)
	base := t.TempDir()
	outside := filepath.Join(base, "outside")
	os.MkdirAll(outside, 0o755)
	dest := filepath.Join(base, "root")
	os.MkdirAll(dest, 0o755)
	layer1 := makeTar(t, []entry{
		symlink("abs", outside),
		symlink("rel", "../../../../../.."+outside),
	})
	layer2 := makeTar(t, []entry{
		file("abs/pwned", "x"),
		file("rel/pwned2", "x"),
		hardlink("hl", "abs/pwned"),
		file("abs/.wh.keep", ""),
	})
	src := writeOCITar(t, base, layer1, layer2)
	if err := os.WriteFile(filepath.Join(outside, "keep"), []byte("host file"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Unpack(context.Background(), src, dest); err != nil {
		t.Fatalf("Unpack: %v", err)
	}
	for _, name := range []string{"pwned", "pwned2"} {
		if _, err := os.Lstat(filepath.Join(outside, name)); err == nil {
			t.Errorf("%s written outside the image", name)
		}
		if _, err := os.Lstat(filepath.Join(dest, outside, name)); err != nil {
			t.Errorf("%s not inside the image: %v", name, err)
		}
	}
	if _, err := os.Stat(filepath.Join(outside, "keep")); err != nil {
		t.Errorf("whiteout through a symlink deleted a host file: %v", err)
	}
}

func TestUnpackErrors(t *testing.T) {
	requireRoot(t)
	base := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(base, name)
		os.WriteFile(p, data, 0o644)
		return p
	}
	good := ociTar(t, makeTar(t, []entry{file("f", "x")}))
	// Corrupt the layer: the blob content no longer matches its digest.
	corrupt := bytes.Replace(good, []byte("x\x00\x00\x00"), []byte("y\x00\x00\x00"), 1)
	cases := []struct {
		name, path, want string
	}{
		{"not a tar", write("junk.tar", []byte("this is not a tar file at all")), "tar"},
		{"no index", write("empty.tar", makeTar(t, []entry{file("hello", "x")})), "neither index.json"},
		{"bad digest", write("digest.tar", makeTar(t, []entry{file("index.json", `{"manifests":[{"digest":"sha256:../../etc"}]}`)})), "bad digest"},
		{"corrupt layer", write("corrupt.tar", corrupt), "digest"},
		{"missing", filepath.Join(base, "nope.tar"), "no such file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dest := t.TempDir()
			err := Unpack(context.Background(), tc.path, dest)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Unpack: %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
}

func TestBuildFromDirSizes(t *testing.T) {
	requireTools(t)
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "small"), []byte("small"), 0o644)
	dir := t.TempDir()
	img := filepath.Join(dir, "a.ext4")
	if err := BuildFromDir(context.Background(), src, img, Options{}); err != nil {
		t.Fatal(err)
	}
	if info, _ := os.Stat(img); info.Size() != MinSize {
		t.Errorf("automatic size %d, want %d", info.Size(), MinSize)
	}
	if got := debugfs(t, img, "cat /small"); got != "small" {
		t.Errorf("/small: %q", got)
	}
	if got := debugfs(t, img, "stats"); !strings.Contains(got, "Filesystem volume name:   rootfs") {
		t.Errorf("label: %s", got)
	}
	if err := BuildFromDir(context.Background(), src, img, Options{Size: 100 << 20}); err != nil {
		t.Fatal(err)
	}
	if info, _ := os.Stat(img); info.Size() != 100<<20 {
		t.Errorf("explicit size %d", info.Size())
	}
	// Content larger than the requested size is a clear error.
	// Random, so mkfs cannot store it as holes.
	big := make([]byte, 12<<20)
	rand.Read(big)
	os.WriteFile(filepath.Join(src, "big"), big, 0o644)
	err := BuildFromDir(context.Background(), src, filepath.Join(dir, "b.ext4"), Options{Size: 8 << 20})
	if err == nil {
		t.Fatal("building 12 MiB into 8 MiB succeeded")
	}
	if _, serr := os.Stat(filepath.Join(dir, "b.ext4")); serr == nil {
		t.Error("a failed build left an image behind")
	}
	t.Logf("expected error: %v", err)
}

// findTool finds a program on PATH or in the extra directories, and
// otherwise says which program and which package are missing.
func TestFindTool(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, path string // path: PATH while looking
		dirs       []string
		want       string // the path found; "" for an error
	}{
		{"sh", os.Getenv("PATH"), nil, sh},
		{"sh", "", []string{"/nonexistent", filepath.Dir(sh)}, filepath.Join(filepath.Dir(sh), "sh")},
		{"vmm-image-no-such-tool", os.Getenv("PATH"), []string{filepath.Dir(sh)}, ""},
		{"sh", "", []string{"/nonexistent"}, ""},
	} {
		t.Setenv("PATH", tt.path)
		got, err := findTool(tt.name, "vmm-test-package", tt.dirs...)
		if tt.want != "" {
			if got != tt.want || err != nil {
				t.Errorf("findTool(%q, PATH=%q, %q) = %q, %v; want %q", tt.name, tt.path, tt.dirs, got, err, tt.want)
			}
			continue
		}
		if err == nil || !errors.Is(err, exec.ErrNotFound) || !strings.Contains(err.Error(), tt.name) || !strings.Contains(err.Error(), "vmm-test-package") {
			t.Errorf("findTool(%q, PATH=%q, %q) = %q, %v; want an exec.ErrNotFound naming the tool and the package", tt.name, tt.path, tt.dirs, got, err)
		}
	}
}
