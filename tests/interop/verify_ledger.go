// Verifies a Palisade ledger directory with Go's reference packages,
// golang.org/x/mod/sumdb/note and golang.org/x/mod/sumdb/tlog, which nobody
// at Palisade wrote: the checkpoint's signature, every tile against the
// signed root, and an inclusion proof for every entry.
//
//	go run verify_ledger.go <ledger-dir> <verifier-key>
//	go run verify_ledger.go -proof <file.tlog-proof> <verifier-key>
//
// Prints "OK <size> <root>" (or "OK index <n>" for a proof) and exits 0
// when everything holds. A proof is a C2SP tlog-proof whose extra line
// carries the entry itself.
package main

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// c2spPath is the C2SP tlog-tiles path of a tile (height 8).
func c2spPath(level string, n int64, w int) string {
	digits := fmt.Sprintf("%03d", n%1000)
	for rest := n / 1000; rest > 0; rest /= 1000 {
		digits = fmt.Sprintf("x%03d/%s", rest%1000, digits)
	}
	p := "tile/" + level + "/" + digits
	if w < 256 {
		p += fmt.Sprintf(".p/%d", w)
	}
	return p
}

func readTile(dir, level string, n int64, w int, itemLen int) ([]byte, error) {
	data, err := os.ReadFile(filepath.Join(dir, c2spPath(level, n, 256)))
	if err == nil {
		if itemLen > 0 {
			data = data[:w*itemLen]
		}
		return data, nil
	}
	return os.ReadFile(filepath.Join(dir, c2spPath(level, n, w)))
}

type tileReader struct {
	dir   string
	cache map[string][]byte
}

func (r tileReader) Height() int { return 8 }

func (r tileReader) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(tiles))
	for i, t := range tiles {
		key := t.Path()
		data, ok := r.cache[key]
		if !ok {
			var err error
			data, err = readTile(r.dir, strconv.Itoa(t.L), t.N, t.W, tlog.HashSize)
			if err != nil {
				return nil, err
			}
			r.cache[key] = data
		}
		out[i] = data
	}
	return out, nil
}

func (r tileReader) SaveTiles(tiles []tlog.Tile, data [][]byte) {}

func entries(dir string, size int64) ([][]byte, error) {
	var all [][]byte
	for b := int64(0); b*256 < size; b++ {
		w := int(size - b*256)
		if w > 256 {
			w = 256
		}
		data, err := readTile(dir, "entries", b, w, 0)
		if err != nil {
			return nil, err
		}
		for len(data) > 0 && len(all) < int(b*256)+w {
			n := int(binary.BigEndian.Uint16(data))
			all = append(all, data[2:2+n])
			data = data[2+n:]
		}
	}
	return all, nil
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}

// checkProof verifies a C2SP tlog-proof: its checkpoint's signature and the
// RFC 6962 inclusion of the entry carried in its extra line.
func checkProof(path, vkey string) {
	verifier, err := note.NewVerifier(vkey)
	if err != nil {
		fail("verifier key: %v", err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		fail("proof: %v", err)
	}
	head, checkpoint, ok := strings.Cut(string(data), "\n\n")
	if !ok {
		fail("proof: no blank line")
	}
	lines := strings.Split(head, "\n")
	if len(lines) < 3 || lines[0] != "c2sp.org/tlog-proof@v1" || !strings.HasPrefix(lines[1], "extra ") || !strings.HasPrefix(lines[2], "index ") {
		fail("proof: bad header")
	}
	entry, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(lines[1], "extra "))
	if err != nil {
		fail("proof: extra: %v", err)
	}
	index, err := strconv.ParseInt(strings.TrimPrefix(lines[2], "index "), 10, 64)
	if err != nil {
		fail("proof: index: %v", err)
	}
	var audit tlog.RecordProof
	for _, l := range lines[3:] {
		b, err := base64.StdEncoding.DecodeString(l)
		if err != nil || len(b) != tlog.HashSize {
			fail("proof: bad hash line")
		}
		var h tlog.Hash
		copy(h[:], b)
		audit = append(audit, h)
	}
	n, err := note.Open([]byte(checkpoint), note.VerifierList(verifier))
	if err != nil {
		fail("proof checkpoint signature: %v", err)
	}
	cp := strings.Split(n.Text, "\n")
	size, err := strconv.ParseInt(cp[1], 10, 64)
	if err != nil {
		fail("proof checkpoint size: %v", err)
	}
	rootBytes, err := base64.StdEncoding.DecodeString(cp[2])
	if err != nil || len(rootBytes) != tlog.HashSize {
		fail("proof checkpoint root")
	}
	var root tlog.Hash
	copy(root[:], rootBytes)
	if err := tlog.CheckRecord(audit, size, root, index, tlog.RecordHash(entry)); err != nil {
		fail("inclusion: %v", err)
	}
	fmt.Printf("OK index %d\n", index)
}

func main() {
	if len(os.Args) == 4 && os.Args[1] == "-proof" {
		checkProof(os.Args[2], os.Args[3])
		return
	}
	if len(os.Args) != 3 {
		fail("usage: verify_ledger <ledger-dir> <verifier-key> | -proof <file> <verifier-key>")
	}
	dir, vkey := os.Args[1], os.Args[2]
	verifier, err := note.NewVerifier(vkey)
	if err != nil {
		fail("verifier key: %v", err)
	}
	msg, err := os.ReadFile(filepath.Join(dir, "checkpoint"))
	if err != nil {
		fail("checkpoint: %v", err)
	}
	n, err := note.Open(msg, note.VerifierList(verifier))
	if err != nil {
		fail("checkpoint signature: %v", err)
	}
	lines := strings.Split(n.Text, "\n")
	if len(lines) < 4 || lines[0] != verifier.Name() {
		fail("checkpoint origin %q does not match the key name %q", lines[0], verifier.Name())
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil {
		fail("checkpoint size: %v", err)
	}
	rootBytes, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(rootBytes) != tlog.HashSize {
		fail("checkpoint root: %v", err)
	}
	var root tlog.Hash
	copy(root[:], rootBytes)

	tree := tlog.Tree{N: size, Hash: root}
	hr := tlog.TileHashReader(tree, tileReader{dir, map[string][]byte{}})
	got, err := tlog.TreeHash(size, hr)
	if err != nil {
		fail("tree hash from tiles: %v", err)
	}
	if got != root {
		fail("tree hash %v does not match the checkpoint %v", got, root)
	}
	all, err := entries(dir, size)
	if err != nil || int64(len(all)) != size {
		fail("entry bundles: %v (%d of %d entries)", err, len(all), size)
	}
	// Every entry's record hash is the level-0 hash that the tiles,
	// authenticated against the signed root, hold for it.
	indexes := make([]int64, size)
	for i := range indexes {
		indexes[i] = tlog.StoredHashIndex(0, int64(i))
	}
	leaves, err := hr.ReadHashes(indexes)
	if err != nil {
		fail("reading level-0 hashes: %v", err)
	}
	for i, e := range all {
		if tlog.RecordHash(e) != leaves[i] {
			fail("entry %d does not match its hash in the tree", i)
		}
		if !bytes.HasPrefix(e, []byte("{")) {
			fail("entry %d is not a JSON object", i)
		}
	}
	// Inclusion proofs (RFC 6962 audit paths) for a spread of entries:
	// the first and last tiles' worth, and every 97th in between.
	for i := int64(0); i < size; i++ {
		if i >= 300 && i < size-300 && i%97 != 0 {
			continue
		}
		proof, err := tlog.ProveRecord(size, i, hr)
		if err != nil {
			fail("proof for entry %d: %v", i, err)
		}
		if err := tlog.CheckRecord(proof, size, root, i, tlog.RecordHash(all[i])); err != nil {
			fail("entry %d: %v", i, err)
		}
	}
	fmt.Printf("OK %d %v\n", size, root)
}
