package image

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path"
	"regexp"
	"strings"

	"golang.org/x/sys/unix"
)

// Media types that name an index (a list of manifests) rather than an
// image manifest.
var indexMediaTypes = map[string]bool{
	"application/vnd.oci.image.index.v1+json":                   true,
	"application/vnd.docker.distribution.manifest.list.v2+json": true,
}

// wantPlatform is the guest's: vmm runs x86-64 Linux.
const wantOS, wantArch = "linux", "amd64"

type descriptor struct {
	MediaType string `json:"mediaType"`
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
	Platform  *struct {
		OS           string `json:"os"`
		Architecture string `json:"architecture"`
	} `json:"platform,omitempty"`
}

type ociIndex struct {
	MediaType string       `json:"mediaType"`
	Manifests []descriptor `json:"manifests"`
}

type ociManifest struct {
	MediaType string       `json:"mediaType"`
	Config    descriptor   `json:"config"`
	Layers    []descriptor `json:"layers"`
}

// dockerManifest is one entry of a `docker save` manifest.json.
type dockerManifest struct {
	Config   string   `json:"Config"`
	RepoTags []string `json:"RepoTags"`
	Layers   []string `json:"Layers"`
}

// maxJSON bounds the index and manifest files we read into memory.
const maxJSON = 4 << 20

var digestPattern = regexp.MustCompile(`^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$`)

// layer is one layer to apply: a file in the image tree and, for OCI
// layouts, the digest it must have.
type layer struct {
	rel    string
	digest string
}

// Unpack applies the layers of the image at src (an OCI image layout
// directory, or a tar of one, or a `docker save` tarball, optionally
// gzip'd) into dest, which must be an empty directory. Ownership is
// applied only when running as root. Nothing on the host gains a
// privilege from it: device nodes and FIFOs become empty 0600 files,
// set-id bits are dropped and dest's own mode is left alone
// (BuildFromOCI puts them in the image instead). The default caps
// (DefaultMaxUnpacked, DefaultMaxEntries) apply.
func Unpack(ctx context.Context, src, dest string) error {
	return unpack(ctx, src, dest, nil, 0, 0)
}

// unpack is Unpack that hands what must not be made real on the host to
// special (nil drops it), with caps maxBytes and maxEntries (0 for the
// defaults) on the layers together and on the outer archive.
func unpack(ctx context.Context, src, dest string, special *specials, maxBytes, maxEntries int64) error {
	info, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("image source: %w", err)
	}
	layoutDir := src
	if !info.IsDir() {
		tmp, err := os.MkdirTemp("", "vmm-image-src-")
		if err != nil {
			return fmt.Errorf("creating temporary directory: %w", err)
		}
		defer os.RemoveAll(tmp)
		if err := extractArchive(src, tmp, newLimits(maxBytes, maxEntries)); err != nil {
			return fmt.Errorf("extracting %s: %w", src, err)
		}
		layoutDir = tmp
	}
	srcTree, err := openTree(layoutDir)
	if err != nil {
		return err
	}
	defer srcTree.Close()
	layers, err := findLayers(srcTree)
	if err != nil {
		return fmt.Errorf("%s: %w", src, err)
	}

	destTree, err := openTree(dest)
	if err != nil {
		return err
	}
	defer destTree.Close()
	opts := extractOptions{owners: os.Geteuid() == 0, special: special, lim: newLimits(maxBytes, maxEntries)}
	for i, l := range layers {
		if err := ctx.Err(); err != nil {
			return err
		}
		open := func() (io.ReadCloser, error) {
			f, err := srcTree.open(l.rel)
			if err != nil {
				return nil, err
			}
			if l.digest == "" {
				return f, nil
			}
			return newVerifier(f, l.digest), nil
		}
		if err := applyLayer(destTree, open, opts); err != nil {
			return fmt.Errorf("layer %d (%s): %w", i+1, l.rel, err)
		}
	}
	return nil
}

// extractArchive unpacks the outer archive (the layout or docker save
// tarball) with the same containment as layers, without ownership,
// within its own caps lim.
func extractArchive(src, dest string, lim *limits) error {
	t, err := openTree(dest)
	if err != nil {
		return err
	}
	defer t.Close()
	open := func() (io.ReadCloser, error) { return os.Open(src) }
	return readTar(open, lim, func(tr *tar.Reader, hdr *tar.Header) error {
		return applyEntry(t, tr, hdr, extractOptions{lim: lim})
	})
}

// findLayers reads index.json (OCI) or manifest.json (docker save).
func findLayers(t *tree) ([]layer, error) {
	if data, err := readJSONFile(t, "index.json"); err == nil {
		return ociLayers(t, data)
	} else if !errors.Is(err, unix.ENOENT) {
		return nil, err
	}
	data, err := readJSONFile(t, "manifest.json")
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, errors.New("neither index.json (OCI layout) nor manifest.json (docker save) found")
		}
		return nil, err
	}
	var manifests []dockerManifest
	if err := json.Unmarshal(data, &manifests); err != nil {
		return nil, fmt.Errorf("parsing manifest.json: %w", err)
	}
	if len(manifests) == 0 {
		return nil, errors.New("manifest.json lists no image")
	}
	// docker save of several images: the first one is built.
	var layers []layer
	for _, name := range manifests[0].Layers {
		rel, err := cleanName(name)
		if err != nil || rel == "." {
			return nil, fmt.Errorf("manifest.json: bad layer path %q", name)
		}
		layers = append(layers, layer{rel: rel})
	}
	return layers, nil
}

func readJSONFile(t *tree, rel string) ([]byte, error) {
	f, err := t.open(rel)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxJSON+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", rel, err)
	}
	if len(data) > maxJSON {
		return nil, fmt.Errorf("%s is larger than %d bytes", rel, maxJSON)
	}
	return data, nil
}

func blobPath(digest string) (string, error) {
	if !digestPattern.MatchString(digest) {
		return "", fmt.Errorf("bad digest %q", digest)
	}
	alg, hexPart, _ := strings.Cut(digest, ":")
	return path.Join("blobs", alg, hexPart), nil
}

func readBlob(t *tree, digest string) ([]byte, error) {
	rel, err := blobPath(digest)
	if err != nil {
		return nil, err
	}
	data, err := readJSONFile(t, rel)
	if err != nil {
		return nil, err
	}
	if got := digestOf(digest, data); got != digest {
		return nil, fmt.Errorf("blob %s has digest %s", digest, got)
	}
	return data, nil
}

// ociLayers follows index.json, through nested indexes, to one manifest.
func ociLayers(t *tree, indexData []byte) ([]layer, error) {
	data := indexData
	for depth := 0; ; depth++ {
		if depth > 4 {
			return nil, errors.New("indexes nested too deeply")
		}
		var idx ociIndex
		if err := json.Unmarshal(data, &idx); err != nil {
			return nil, fmt.Errorf("parsing index: %w", err)
		}
		desc, err := pickManifest(idx.Manifests)
		if err != nil {
			return nil, err
		}
		blob, err := readBlob(t, desc.Digest)
		if err != nil {
			return nil, err
		}
		if indexMediaTypes[desc.MediaType] {
			data = blob
			continue
		}
		var m ociManifest
		if err := json.Unmarshal(blob, &m); err != nil {
			return nil, fmt.Errorf("parsing manifest %s: %w", desc.Digest, err)
		}
		if indexMediaTypes[m.MediaType] {
			data = blob
			continue
		}
		var layers []layer
		for _, l := range m.Layers {
			rel, err := blobPath(l.Digest)
			if err != nil {
				return nil, fmt.Errorf("manifest %s: %w", desc.Digest, err)
			}
			layers = append(layers, layer{rel: rel, digest: l.Digest})
		}
		return layers, nil
	}
}

// pickManifest prefers the guest's platform, then a manifest with no
// platform, then the first.
func pickManifest(manifests []descriptor) (descriptor, error) {
	if len(manifests) == 0 {
		return descriptor{}, errors.New("index lists no manifest")
	}
	for _, d := range manifests {
		if d.Platform != nil && d.Platform.OS == wantOS && d.Platform.Architecture == wantArch {
			return d, nil
		}
	}
	for _, d := range manifests {
		if d.Platform == nil {
			return d, nil
		}
	}
	return manifests[0], nil
}

func newHash(digest string) hash.Hash {
	if strings.HasPrefix(digest, "sha512:") {
		return sha512.New()
	}
	return sha256.New()
}

func digestOf(digest string, data []byte) string {
	h := newHash(digest)
	h.Write(data)
	alg, _, _ := strings.Cut(digest, ":")
	return alg + ":" + hex.EncodeToString(h.Sum(nil))
}

// verifier hashes a blob as it is read and fails at its end if the digest
// differs, so a corrupt layer is an error rather than a silently wrong
// image.
type verifier struct {
	f      *os.File
	h      hash.Hash
	digest string
}

func newVerifier(f *os.File, digest string) *verifier {
	return &verifier{f: f, h: newHash(digest), digest: digest}
}

func (v *verifier) Read(p []byte) (int, error) {
	n, err := v.f.Read(p)
	v.h.Write(p[:n])
	if errors.Is(err, io.EOF) {
		alg, _, _ := strings.Cut(v.digest, ":")
		if got := alg + ":" + hex.EncodeToString(v.h.Sum(nil)); got != v.digest {
			return n, fmt.Errorf("layer digest is %s, manifest says %s", got, v.digest)
		}
	}
	return n, err
}

func (v *verifier) Close() error { return v.f.Close() }
