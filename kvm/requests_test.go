package kvm

import (
	"go/ast"
	"go/constant"
	"go/parser"
	"go/token"
	"go/types"
	"path/filepath"
	"strings"
	"testing"
)

// TestIoctlRequestsComplete checks that IoctlRequests lists every ioctl*
// constant declared in this package, so the seccomp allow-list cannot
// miss a request the package issues.
func TestIoctlRequestsComplete(t *testing.T) {
	listed := map[uint32]bool{}
	for _, r := range IoctlRequests() {
		listed[r] = true
	}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	found := 0
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			gd, ok := d.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			for _, s := range gd.Specs {
				vs := s.(*ast.ValueSpec)
				for i, id := range vs.Names {
					if !strings.HasPrefix(id.Name, "ioctl") || i >= len(vs.Values) {
						continue
					}
					tv, err := types.Eval(fset, nil, token.NoPos, types.ExprString(vs.Values[i]))
					if err != nil {
						t.Fatalf("%s: %v", id.Name, err)
					}
					v, ok := constant.Uint64Val(tv.Value)
					if !ok {
						t.Fatalf("%s is not an integer constant", id.Name)
					}
					found++
					if !listed[uint32(v)] {
						t.Errorf("%s (%#x) is missing from IoctlRequests", id.Name, v)
					}
				}
			}
		}
	}
	if found != len(IoctlRequests()) {
		t.Errorf("%d ioctl constants declared, IoctlRequests lists %d", found, len(IoctlRequests()))
	}
}
